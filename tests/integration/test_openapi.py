"""GET /v1/openapi.json: it documents exactly the app's routes, its examples fit its schemas and work.

The scenario sends the documented examples, in order, to a real app with the token of
the documented role, and checks each answer against the documented status and schema:
the document is then a description a client can rely on, not a wish.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp.test_utils import TestClient

from controlplane.app import CONSOLE_PREFIX, create_app
from controlplane.openapi import CANARY, MODEL, ROLES, STABLE, all_operations, openapi_document
from controlplane.settings import Settings
from tests.conftest import auth
from tests.integration.conftest import Register, StartClient, upload_form

JSON = "application/json"
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
ROLE_BELOW = {"operator": "viewer", "admin": "operator"}
PATH_VALUES = {"model": MODEL, "version": CANARY, "command": "pause", "type": "clusters", "rollout_id": "1"}
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

# A policy that matches no model: promoting to canary starts nothing, so the traffic example
# (an operator's weights) works, and POST /v1/rollouts can start this policy by hand.
HAND_STARTED_POLICY = """
policies:
  - name: default
    models: ["only-started-by-hand"]
    steps:
      - setWeight: 10
      - pause: {}
"""


def operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


def validator(document: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A 2020-12 validator (OpenAPI 3.1's dialect) whose `#/components/...` refs resolve in the document."""
    root = {**schema, "components": document["components"]}
    dialect = draft_2020_12()
    return dialect(root, format_checker=dialect.FORMAT_CHECKER)


def draft_2020_12() -> Any:
    """jsonschema's validator for OpenAPI 3.1's dialect (a dev dependency)."""
    return jsonschema.Draft202012Validator


def request_examples(operation: dict[str, Any]) -> list[tuple[str, dict[str, Any], Any]]:
    body = operation.get("requestBody", {"content": {}})
    return [
        (name, media["schema"], example["value"])
        for media in body["content"].values()
        for name, example in media.get("examples", {}).items()
    ]


def example_value(document: dict[str, Any], method: str, path: str, name: str) -> Any:
    content = document["paths"][path][method]["requestBody"]["content"]
    media = content.get(JSON) or content["multipart/form-data"]
    return media["examples"][name]["value"]


def role_headers(role: str) -> dict[str, str]:
    return {} if role == "none" else auth(role)


# -- the document against the routes -------------------------------------------------------------------


def test_every_route_of_the_app_is_documented_and_nothing_else(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings())
    registered = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None  # add_get adds HEAD too
        # The console's HTML pages (/ui/...) are for browsers, not part of the API.
        and not route.resource.canonical.startswith(CONSOLE_PREFIX.rstrip("/"))
    }

    documented = set(operations(openapi_document()))

    assert registered - documented == set(), "routes without documentation"
    assert documented - registered == set(), "documented operations the app does not serve"
    assert ("post", "/v3/discovery:{type}") in documented


def test_each_operation_states_its_role_errors_and_examples() -> None:
    document = openapi_document()

    for (method, path), operation in operations(document).items():
        where = f"{method.upper()} {path}"
        role = operation["x-aegis-role"]
        responses = operation["responses"]
        assert role in ROLES, where
        assert operation["summary"], where
        assert any(status.startswith("2") for status in responses), where
        assert ("401" in responses) == (role != "none"), where
        if role in ROLE_BELOW:
            assert "403" in responses, where
        for status, response in responses.items():
            if int(status) >= 400:
                assert response["content"][JSON]["schema"] == {"$ref": "#/components/schemas/Error"}, where
        if "requestBody" in operation:
            assert request_examples(operation), f"{where} has a body without an example"
        for parameter in operation.get("parameters", []):
            if parameter.get("in") == "query":
                assert parameter["schema"], where
                continue
            name = parameter["$ref"].rsplit("/", 1)[1]
            assert name in document["components"]["parameters"], where
            if document["components"]["parameters"][name]["in"] == "path":
                assert "{" + document["components"]["parameters"][name]["name"] + "}" in path, where


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_every_schema_is_valid_json_schema_and_every_ref_resolves() -> None:
    document = openapi_document()

    for schema in document["components"]["schemas"].values():
        draft_2020_12().check_schema(schema)
    found = set(refs(document))
    for ref in found:
        section, kind, name = ref.removeprefix("#/").split("/")
        assert name in document[section][kind], f"{ref} leads nowhere"
    assert "#/components/schemas/Error" in found


def test_every_request_example_matches_its_schema() -> None:
    document = openapi_document()
    checked = 0

    for (method, path), operation in operations(document).items():
        for name, schema, value in request_examples(operation):
            errors = [error.message for error in validator(document, schema).iter_errors(value)]
            assert errors == [], f"{method.upper()} {path} example {name!r}: {errors}"
            checked += 1
    for parameter in document["components"]["parameters"].values():
        if "example" in parameter:
            validator(document, parameter["schema"]).validate(parameter["example"])

    assert checked >= 12


def test_every_request_example_passes_the_model_the_server_parses_it_with() -> None:
    checked = 0

    for operation in all_operations():
        for _summary, value in operation.examples.values():
            assert operation.body is not None, f"{operation.operation_id} has examples but no body"
            operation.body.model_validate_json(json.dumps(value))
            checked += 1

    assert checked >= 12


def test_every_json_answer_is_a_named_model() -> None:
    document = openapi_document()

    for (method, path), operation in operations(document).items():
        for status, response in operation["responses"].items():
            schema = response.get("content", {}).get(JSON, {}).get("schema")
            if schema is not None and path != "/v1/openapi.json":
                assert schema["$ref"].startswith("#/components/schemas/"), f"{method} {path} {status}"


@pytest.mark.parametrize(
    ("schema", "value"),
    [
        ("PromoteRequest", {"stage": "staging"}),
        ("TrafficBody", {"weights": {}}),
        ("TrafficBody", {"weights": {"1": 50}, "match": [{"path": "/x"}]}),
        ("EndpointBody", {"model_name": "m", "version": "1", "address": "10.0.0.1", "port": 0}),
        ("RegistrationMetadata", {"model_name": "register", "version": "1"}),
        ("RegistrationMetadata", {"model_name": "a..b", "version": "1"}),
        ("RegistrationMetadata", {"model_name": "m", "version": "1", "metadata": {"_registry": {}}}),
        ("AlertmanagerWebhook", {"version": "3", "alerts": []}),
    ],
)
def test_the_schemas_refuse_what_the_server_refuses(schema: str, value: Any) -> None:
    document = openapi_document()

    assert not validator(document, {"$ref": f"#/components/schemas/{schema}"}).is_valid(value)


# -- the document against a running app ---------------------------------------------------------------


@pytest.fixture
async def client(
    make_settings: Callable[..., Settings], database_url: str, start_client: StartClient, tmp_path: Path
) -> TestClient[Any, Any]:
    policies = tmp_path / "policies.yaml"
    policies.write_text(HAND_STARTED_POLICY)
    return await start_client(
        make_settings(
            database_url,
            AEGIS_XDS_VALIDATE="false",
            AEGIS_XDS_HOLD_SECONDS=0,
            AEGIS_POLICIES=policies,
            AEGIS_PROMETHEUS_URL="http://127.0.0.1:9",  # nothing listens: analysis reports "error"
        )
    )


class Documented:
    """Calls the app as the document says, and checks each answer against the document."""

    def __init__(self, client: TestClient[Any, Any], document: dict[str, Any]) -> None:
        self.client = client
        self.document = document

    def operation(self, method: str, path: str) -> dict[str, Any]:
        return dict(self.document["paths"][path][method])

    async def send(
        self, method: str, path: str, example: str | None = None, **values: str
    ) -> aiohttp.ClientResponse:
        """Send the named example with the documented role's token; the answer must be a documented 2xx."""
        operation = self.operation(method, path)
        body = example_value(self.document, method, path, example) if example else None
        response = await self.client.request(
            method.upper(),
            path.format(**{**PATH_VALUES, **values}),
            json=body,
            headers=role_headers(operation["x-aegis-role"]),
        )
        await self.check(method, path, response, success=True)
        return response

    async def check(
        self, method: str, path: str, response: aiohttp.ClientResponse, *, success: bool = False
    ) -> None:
        responses = self.operation(method, path)["responses"]
        documented = responses.get(str(response.status))
        where = f"{method.upper()} {path} answered {response.status}"
        assert documented is not None, f"{where}, which is not documented: {await response.text()}"
        if success:
            assert 200 <= response.status < 300, f"{where}: {await response.text()}"
        content = documented.get("content", {})
        if JSON in content:
            body = await response.json()
            errors = [e.message for e in validator(self.document, content[JSON]["schema"]).iter_errors(body)]
            assert errors == [], f"{where} with a body that does not match its schema: {errors}"
        elif content:
            (media_type,) = content
            assert response.content_type == media_type.split(";")[0], where
        for header in documented.get("headers", {}):
            assert header in response.headers, f"{where} without the header {header}"


@sqlite_only
async def test_the_examples_work_against_a_running_app_in_the_documented_order(
    client: TestClient[Any, Any], register: Register
) -> None:
    served = await client.get("/v1/openapi.json")  # no token: it describes, it reveals nothing
    assert served.status == 200
    document = await served.json()
    assert document == openapi_document()
    api = Documented(client, document)
    assert (await register(MODEL, STABLE, b"stable model bytes")).status == 201

    example = example_value(document, "post", "/v1/registry/register", "server-signed")
    registered = await client.post(
        "/v1/registry/register",
        data=upload_form(example["metadata"], b"canary model bytes"),
        headers=role_headers(api.operation("post", "/v1/registry/register")["x-aegis-role"]),
    )
    await api.check("post", "/v1/registry/register", registered, success=True)
    assert registered.status == 201
    await api.send("post", "/v1/registry/{model}/{version}/promote", "prod", version=STABLE)
    promoted = await api.send("post", "/v1/registry/{model}/{version}/promote", "canary", version=CANARY)
    assert (await promoted.json())["stage"] == "canary"
    announced = await api.send("post", "/v1/endpoints", "canary-server")
    assert announced.status == 201
    traffic = await api.send("put", "/v1/traffic/{model}", "ten-percent")
    assert (await traffic.json())["weights"] == {STABLE: 90, CANARY: 10}
    alerted = await api.send("post", "/v1/alerts/alertmanager", "canary-errors")
    assert (await alerted.json())["outcomes"][0]["action"] == "recorded_no_active_rollout"
    started = await api.send("post", "/v1/rollouts", "default-policy")
    assert started.status == 201
    paused = await api.send("post", "/v1/rollouts/{model}/{command}", "with-reason", command="pause")
    assert (await paused.json())["phase"] == "paused"
    await api.send("post", "/v1/registry/{model}/{version}/artifact-url", "one-hour")
    polled = await api.send("post", "/v3/discovery:{type}", "first-cds-poll", type="clusters")
    assert (await polled.json())["resources"], "CDS carries the model's clusters"

    # Every read, with the state the examples made: documented status and schema.
    for (method, path), operation in operations(document).items():
        if method == "get" and "requestBody" not in operation:
            await api.send(method, path)

    rolled_back = await api.send("post", "/v1/registry/{model}/rollback", "with-reason")
    assert (await rolled_back.json())["changes"][0]["to_stage"] == "staging"
    ended = await client.get(f"/v1/rollouts/{MODEL}", headers=auth("viewer"))
    assert (await ended.json())["phase"] == "rolled_back"
    await api.send("delete", "/v1/endpoints", "canary-server")


@sqlite_only
async def test_each_operation_needs_exactly_its_documented_role(client: TestClient[Any, Any]) -> None:
    document = openapi_document()
    api = Documented(client, document)

    for (method, path), operation in operations(document).items():
        role = operation["x-aegis-role"]
        url = path.format(**PATH_VALUES)
        anonymous = await client.request(method.upper(), url)
        await api.check(method, path, anonymous)
        if role == "none":
            assert anonymous.status not in (401, 403), f"{method.upper()} {path}"
            continue
        assert anonymous.status == 401, f"{method.upper()} {path} without a token"
        if role in ROLE_BELOW:
            too_small = await client.request(method.upper(), url, headers=auth(ROLE_BELOW[role]))
            assert too_small.status == 403, f"{method.upper()} {path} as {ROLE_BELOW[role]}"
            await api.check(method, path, too_small)
        enough = await client.request(method.upper(), url, headers=auth(role))
        assert enough.status not in (401, 403), f"{method.upper()} {path} as {role}"
        await api.check(method, path, enough)
