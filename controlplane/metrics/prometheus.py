"""The canary-analysis metric source: PromQL instant queries to Prometheus, answered as observations.

Providers return observations, not exceptions (DESIGN.md section 2): every answer becomes a
value, "no data" (empty vector, NaN, infinity) or an error (unreachable, bad PromQL, an
answer of the wrong shape), each with a message an operator can act on.

prometheus-api-client is synchronous (requests), so each query runs in a worker thread.
Its own retries are off: by default it retries 3 times with backoff, which turns a down
Prometheus into a 6 s stall per query; the rollout loop retries at its own interval and
counts consecutive errors itself.
"""

from __future__ import annotations

import ast
import asyncio
import json
import math
import re
import urllib.parse
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from controlplane.rollout.analysis import Observation, ObservationKind, SeriesObservation

__all__ = ["Observation", "ObservationKind", "PrometheusSource", "SeriesObservation"]

# The query Flagger uses as a health check: cheap, always exactly one sample when Prometheus answers.
ONLINE_QUERY = "vector(1)"

# PrometheusApiClientException's text is f"HTTP Status Code {code} ({content!r})" with content as bytes.
_API_ERROR = re.compile(r"^HTTP Status Code (?P<code>\d+) \((?P<content>b(?:'.*'|\".*\"))\)$", re.DOTALL)
# urllib3 prefixes its reasons with the connection: "HTTPConnection(host=.., port=..): " (2.x) or
# "<urllib3.connection.HTTPConnection object at 0x..>: " (1.x).
_CONNECTION_REPR = re.compile(r"^(?:<[^>]*>|\w+\([^)]*\)):\s*")
_MAX_MESSAGE = 300


class PrometheusSource:
    """Instant PromQL queries against one Prometheus; `query` never raises."""

    def __init__(self, url: str, *, timeout_seconds: float = 3.0) -> None:
        self._password = urllib.parse.urlsplit(url).password
        self.url = redact_url(url.rstrip("/"))  # for messages and logs; the client keeps the credentials
        self.timeout_seconds = timeout_seconds
        # read=False re-raises a read timeout as itself (requests' own default) rather than
        # wrapped in "max retries exceeded", so that it is reported as a timeout.
        retry = Retry(total=0, read=False)
        self._client = PrometheusConnect(url=url.rstrip("/"), retry=retry, timeout=timeout_seconds)

    async def query(self, promql: str, *, at: float | None = None) -> Observation:
        """The value of an instant query that must yield one sample (a one-series vector or a scalar).

        `at`: the evaluation time in Unix seconds (history, for a replay); None: now.
        """
        result = await self._ask(promql, at)
        return result if isinstance(result, Observation) else observation_from_result(result)

    async def series(self, promql: str, *, at: float | None = None) -> SeriesObservation:
        """Every series of an instant vector query with its labels (counters per Envoy instance)."""
        result = await self._ask(promql, at)
        if isinstance(result, Observation):
            return SeriesObservation.failed(result.message)
        return series_from_result(result)

    async def _ask(self, promql: str, at: float | None) -> Any:
        """`data.result` of an instant query, or an error observation that says why there is none."""
        params = None if at is None else {"time": f"{at:.3f}"}
        try:
            return await asyncio.to_thread(self._client.custom_query, promql, params)
        except PrometheusApiClientException as exc:
            return Observation.error(self._api_error_message(exc))
        except requests.exceptions.Timeout:
            return Observation.error(
                f"prometheus at {self.url} unreachable: no answer within {self.timeout_seconds:g} s"
            )
        except (requests.exceptions.InvalidJSONError, KeyError, TypeError) as exc:
            # A 200 that is not the query API's JSON: a proxy's or a login page, or the wrong URL.
            message = f"{self.url} does not answer like Prometheus's query API: {exc!r}"
            return Observation.error(self._scrub(message))
        except requests.exceptions.RequestException as exc:
            return Observation.error(f"prometheus at {self.url} unreachable: {self._short_reason(exc)}")

    async def is_online(self) -> bool:
        """Whether Prometheus answers queries at all (a trivial query, as Flagger's IsOnline does)."""
        observation = await self.query(ONLINE_QUERY)
        return observation.kind is ObservationKind.VALUE and observation.value == 1.0

    def close(self) -> None:
        """Release the HTTP connection pool."""
        self._client.close()

    def _api_error_message(self, exc: PrometheusApiClientException) -> str:
        """Prometheus's own error text for 4xx (bad PromQL, execution errors); 5xx means it is unwell."""
        match = _API_ERROR.match(str(exc))
        if match is None:
            return self._scrub(f"prometheus at {self.url} failed: {exc}")
        code = int(match["code"])
        try:
            detail = _error_text(ast.literal_eval(match["content"]))
        except (ValueError, SyntaxError):
            detail = match["content"]
        if code >= 500:
            return self._scrub(f"prometheus at {self.url} unreachable: HTTP {code}: {detail}")
        return self._scrub(f"prometheus rejected the query (HTTP {code}): {detail}")

    def _short_reason(self, exc: requests.exceptions.RequestException) -> str:
        """The root cause ("Connection refused"), not urllib3's pool and retry wrapping."""
        reason: Any = exc.args[0] if exc.args else exc
        reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the real error
        text = _CONNECTION_REPR.sub("", str(reason)) or type(exc).__name__
        return self._scrub(text)

    def _scrub(self, text: str) -> str:
        """No credentials from the URL in a message, and no message longer than a log line."""
        if self._password:
            text = text.replace(self._password, "***")
        return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def observation_from_result(result: Any) -> Observation:
    """Map the `data.result` of an instant query to an observation. Pure.

    prometheus-api-client returns only `data.result`, so the result type is read from its
    shape: a vector is a list of `{"metric", "value"}` objects, a scalar is `[time, "value"]`.
    """
    if isinstance(result, list) and len(result) == 2 and not isinstance(result[0], dict):
        return _observation_from_text(result[1])
    if not isinstance(result, list):
        return Observation.error(f"unexpected query result: {str(result)[:100]}")
    if not result:
        return Observation.no_data("query returned no series")
    if len(result) > 1:
        return Observation.error(f"query returned {len(result)} series; aggregate it with sum(...)")
    sample = result[0]
    if "value" not in sample:
        return Observation.error("query returned a range vector; use an instant vector, e.g. rate(x[1m])")
    return _observation_from_text(sample["value"][1])


def series_from_result(result: Any) -> SeriesObservation:
    """Map the `data.result` of an instant vector query to labelled values. Pure.

    NaN samples are left out (no value); anything but a vector is an error that says so.
    """
    if not isinstance(result, list) or any(not isinstance(s, dict) or "value" not in s for s in result):
        return SeriesObservation.failed(f"expected an instant vector, got {str(result)[:100]}")
    found = []
    for sample in result:
        try:
            value = float(sample["value"][1])
        except (TypeError, ValueError, IndexError):
            return SeriesObservation.failed(f"query returned a non-numeric value: {str(sample)[:100]}")
        if not math.isnan(value):
            found.append((dict(sample.get("metric", {})), value))
    return SeriesObservation(tuple(found))


def _observation_from_text(text: Any) -> Observation:
    """Prometheus sends sample values as strings: "0.93", "NaN", "+Inf"."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return Observation.error(f"query returned a non-numeric value: {str(text)[:100]}")
    if math.isnan(value):
        return Observation.no_data("value is NaN: no traffic in the window?")
    if math.isinf(value):
        return Observation.no_data(f"value is {text}: a division by zero (no traffic in the window?)")
    return Observation.of(value)


def _error_text(content: bytes) -> str:
    """The `error` field of Prometheus's JSON error body, prefixed with its errorType; else the raw body."""
    try:
        body = json.loads(content)
    except ValueError:
        return content.decode(errors="replace").strip() or "(empty body)"
    if isinstance(body, dict) and "error" in body:
        return f"{body.get('errorType', 'error')}: {body['error']}"
    return content.decode(errors="replace").strip()


def redact_url(url: str) -> str:
    """The URL without its userinfo, for messages and logs. Pure."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
