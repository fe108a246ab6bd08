"""PromQL templates: the `{{ variable }}` language and the exact queries of the built-in checks."""

from __future__ import annotations

import pytest

from controlplane.metrics.templates import (
    BUILTIN_TEMPLATES,
    CANARY_REQUESTS_QUERY,
    VARIABLES,
    TemplateContext,
    TemplateError,
    arm_queries,
    prometheus_duration,
    query_for,
    render,
    rendered_query,
    unknown_variables,
    variables_in,
)
from controlplane.rollout.policy import BaselineComparison, MetricCheck, ThresholdRange

CONTEXT = TemplateContext(
    model="ranker",
    stable_version="1.0",
    canary_version="2.0",
    stable_cluster="ranker-1_0-aaaaaaaa",
    canary_cluster="ranker-2_0-bbbbbbbb",
    window_seconds=30,
    interval_seconds=10,
)


def test_variables_are_found_with_or_without_spaces_inside_the_braces() -> None:
    text = 'x{a="{{model}}",b="{{ canary_version }}",c="{{   window   }}"} {{ model }}'

    assert variables_in(text) == {"model", "canary_version", "window"}
    assert unknown_variables(text) == set()


def test_unknown_variables_are_the_ones_outside_the_design_list() -> None:
    text = "{{ modle }} {{ model }} {{ variables.x }} {{ canary_cluster }}"

    assert unknown_variables(text) == {"modle", "variables.x"}
    assert VARIABLES == ("model", "stable_version", "canary_version", "stable_cluster", "canary_cluster",
                         "window", "interval")


def test_context_values_give_every_variable_with_durations_in_prometheus_notation() -> None:
    assert CONTEXT.values() == {
        "model": "ranker",
        "stable_version": "1.0",
        "canary_version": "2.0",
        "stable_cluster": "ranker-1_0-aaaaaaaa",
        "canary_cluster": "ranker-2_0-bbbbbbbb",
        "window": "30s",
        "interval": "10s",
    }


@pytest.mark.parametrize(("seconds", "text"), [(30, "30s"), (90.0, "90s"), (0.5, "500ms"), (1.25, "1250ms"),
                                               (3600, "3600s")])
def test_prometheus_duration(seconds: float, text: str) -> None:
    assert prometheus_duration(seconds) == text


def test_render_replaces_every_occurrence() -> None:
    text = 'avg(q{model="{{ model }}",version="{{canary_version}}"}[{{ window }}]) by ({{ model }})'

    assert render(text, CONTEXT.values()) == 'avg(q{model="ranker",version="2.0"}[30s]) by (ranker)'


def test_render_refuses_an_unknown_variable_instead_of_sending_braces_to_prometheus() -> None:
    with pytest.raises(TemplateError, match=r"\{\{ modle \}\}") as caught:
        render('q{model="{{ modle }}"}', CONTEXT.values())

    assert caught.value.variables == {"modle"}


def test_render_refuses_a_known_variable_without_a_value() -> None:
    with pytest.raises(TemplateError, match="no value") as caught:
        render("q[{{ window }}]", {"model": "m"})

    assert caught.value.variables == {"window"}


def test_text_without_variables_renders_unchanged() -> None:
    assert render("sum(up)", {}) == "sum(up)"


# The exact PromQL each built-in sends for CONTEXT. Requests are counted as upstream_rq_xx over all
# classes because Envoy leaves refused connections out of upstream_rq_total (see the module notes).
EXPECTED = {
    "request-error-rate": (
        '(sum(rate(envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",'
        'envoy_cluster_name="ranker-2_0-bbbbbbbb"}[30s])) or vector(0))'
        ' / sum(rate(envoy_cluster_upstream_rq_xx{envoy_cluster_name="ranker-2_0-bbbbbbbb"}[30s]))'
    ),
    "request-duration-p99": (
        "histogram_quantile(0.99, sum by (le) (rate(envoy_cluster_upstream_rq_time_bucket"
        '{envoy_cluster_name="ranker-2_0-bbbbbbbb"}[30s])))'
    ),
    "request-rate": 'sum(rate(envoy_cluster_upstream_rq_xx{envoy_cluster_name="ranker-2_0-bbbbbbbb"}[30s]))',
}


@pytest.mark.parametrize("template", sorted(EXPECTED))
def test_builtin_templates_render_to_the_exact_promql(template: str) -> None:
    check = MetricCheck(name="m", threshold=ThresholdRange(max=1), template=template)

    assert rendered_query(check, CONTEXT) == EXPECTED[template]


def test_the_builtins_are_exactly_the_documented_three() -> None:
    assert set(BUILTIN_TEMPLATES) == set(EXPECTED)
    assert all(unknown_variables(text) == set() for text in BUILTIN_TEMPLATES.values())


def test_canary_request_count_query_renders_for_min_requests() -> None:
    assert render(CANARY_REQUESTS_QUERY, CONTEXT.values()) == (
        'sum(increase(envoy_cluster_upstream_rq_xx{envoy_cluster_name="ranker-2_0-bbbbbbbb"}[30s]))'
    )


def test_query_for_a_custom_check_is_its_own_query() -> None:
    query = 'avg(aegis_model_quality{model="{{ model }}",version="{{ canary_version }}"})'
    check = MetricCheck(name="recall", threshold=ThresholdRange(min=0.9), query=query)

    assert query_for(check) == query
    assert rendered_query(check, CONTEXT) == 'avg(aegis_model_quality{model="ranker",version="2.0"})'


def test_query_for_an_unknown_template_is_an_error() -> None:
    check = MetricCheck(name="x", threshold=ThresholdRange(max=1), template="request-errors")

    with pytest.raises(TemplateError, match="request-error-rate"):
        query_for(check)


def test_a_compared_check_reads_each_arms_raw_counters() -> None:
    errors = MetricCheck("errors", ThresholdRange(), template="request-error-rate",
                         compare=BaselineComparison())
    latency = MetricCheck("latency", ThresholdRange(), template="request-duration-p99",
                          compare=BaselineComparison())

    canary = arm_queries(errors, CONTEXT, canary=True)
    baseline = arm_queries(latency, CONTEXT, canary=False)

    assert canary == {
        "requests": "sum by (instance) "
                    '(envoy_cluster_upstream_rq_xx{envoy_cluster_name="ranker-2_0-bbbbbbbb"})',
        "events": 'sum by (instance) (envoy_cluster_upstream_rq_xx{envoy_response_code_class="5",'
                  'envoy_cluster_name="ranker-2_0-bbbbbbbb"})',
    }
    assert baseline == {
        "buckets": "sum by (instance, le) (envoy_cluster_upstream_rq_time_bucket"
                   '{envoy_cluster_name="ranker-1_0-aaaaaaaa"})'
    }


def test_a_compared_checks_own_counters_get_the_arms_version_and_cluster() -> None:
    check = MetricCheck("flags", ThresholdRange(), compare=BaselineComparison(
        events_query='sum(flags_total{model="{{ model }}",version="{{ version }}"})',
        requests_query='sum(scored_total{cluster="{{ cluster }}"})',
    ))

    assert arm_queries(check, CONTEXT, canary=False) == {
        "requests": 'sum(scored_total{cluster="ranker-1_0-aaaaaaaa"})',
        "events": 'sum(flags_total{model="ranker",version="1.0"})',
    }


def test_per_arm_variables_stay_unknown_to_ordinary_queries() -> None:
    with pytest.raises(TemplateError, match=r"unknown template variable\(s\) \{\{ version \}\}"):
        render('x{v="{{ version }}"}', {"version": "1"})


@pytest.mark.parametrize(
    ("check", "error"),
    [
        (MetricCheck("e", ThresholdRange(max=1), template="request-error-rate"), "does not compare"),
        (MetricCheck("r", ThresholdRange(), template="request-rate", compare=BaselineComparison()),
         "no counters to compare per arm"),
    ],
)
def test_arm_queries_need_a_comparison_with_counters(check: MetricCheck, error: str) -> None:
    with pytest.raises(TemplateError, match=error):
        arm_queries(check, CONTEXT, canary=True)
