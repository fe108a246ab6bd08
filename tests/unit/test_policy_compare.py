"""`compare: baseline` checks in policy files: what they become, and where each mistake is reported."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from controlplane.rollout.analysis import Observation, VerdictKind, judge
from controlplane.rollout.policy import (
    AnalysisSpec,
    BaselineComparison,
    BaselineUnhealthy,
    ComparisonMethod,
    MetricCheck,
    ThresholdRange,
    Tolerance,
    ToleranceKind,
)
from controlplane.rollout.policy_loader import parse_policy_text, policy_document
from tests.unit.test_policy_parser_properties import BIG_INT, check_answer, dumped, values

COMPARED = """\
policies:
  - name: compared
    models: ["*"]
    steps: [{setWeight: 10}, {pause: {duration: 5m}}]
    analysis:
      baselineUnhealthy: pause
      metrics:
        - name: error-rate
          template: request-error-rate
          compare: baseline
          method: sequential
          alpha: 0.005
          tolerance: 1.25x
          thresholdRange: {max: 0.04}
        - name: latency
          template: request-duration-p99
          compare: baseline
          tolerance: "+0.5pp"
          slowerThan: 250ms
        - name: fraud-flags
          compare: baseline
          events: 'sum(flags_total{model="{{ model }}", version="{{ version }}"})'
          requests: 'sum(scored_total{model="{{ model }}", version="{{ version }}"})'
"""


def test_compared_checks_parse_to_typed_comparisons_with_defaults_filled_in() -> None:
    policies, errors = parse_policy_text(COMPARED, source="c.yaml")

    assert errors == []
    analysis = policies[0].analysis
    assert analysis.baseline_unhealthy is BaselineUnhealthy.PAUSE
    assert analysis.metrics == (
        MetricCheck(
            "error-rate", ThresholdRange(max=0.04), template="request-error-rate",
            compare=BaselineComparison(
                ComparisonMethod.SEQUENTIAL, 0.005, Tolerance(ToleranceKind.RATIO, 1.25)
            ),
        ),
        MetricCheck(
            "latency", ThresholdRange(), template="request-duration-p99",
            compare=BaselineComparison(tolerance=Tolerance(ToleranceKind.POINTS, 0.5), slower_than_ms=250.0),
        ),
        MetricCheck(
            "fraud-flags", ThresholdRange(),
            compare=BaselineComparison(
                events_query='sum(flags_total{model="{{ model }}", version="{{ version }}"})',
                requests_query='sum(scored_total{model="{{ model }}", version="{{ version }}"})',
            ),
        ),
    )
    assert analysis.metrics[1].compare is not None
    assert analysis.metrics[1].compare.alpha == 0.01  # the default


def test_a_policy_without_comparisons_holds_on_an_unhealthy_baseline_by_default() -> None:
    assert AnalysisSpec().baseline_unhealthy is BaselineUnhealthy.HOLD


def test_policy_document_of_a_comparison_parses_back_to_the_same_policy() -> None:
    (policy,) = parse_policy_text(COMPARED, source="c.yaml")[0]

    document = policy_document(policy)
    again = {key: value for key, value in document.items() if key != "source"}
    (reparsed,), errors = parse_policy_text(yaml.safe_dump({"policies": [again]}), source="c.yaml")

    assert errors == []
    assert reparsed.analysis == policy.analysis
    assert document["analysis"]["metrics"][1] == {
        "name": "latency", "template": "request-duration-p99", "compare": "baseline", "method": "sequential",
        "alpha": 0.01, "tolerance": "+0.5pp", "slowerThan": "250ms",
    }
    assert document["analysis"]["baselineUnhealthy"] == "pause"


@pytest.mark.parametrize(
    ("tolerance", "baseline_rate", "ratio"),
    [
        (Tolerance(ToleranceKind.RATIO, 1.5), 0.01, 1.5),
        (Tolerance(ToleranceKind.POINTS, 0.5), 0.01, 1.5),  # 1 % + 0.5 points = 1.5x
        (Tolerance(ToleranceKind.POINTS, 1.0), 0.002, 6.0),
        (Tolerance(ToleranceKind.POINTS, 0.5), 0.0001, 20.0),  # capped: the test's grid ends at 20x
        (Tolerance(ToleranceKind.POINTS, 0.5), 0.0, 20.0),
    ],
)
def test_a_tolerance_is_a_rate_ratio_at_the_baseline_rate(
    tolerance: Tolerance, baseline_rate: float, ratio: float
) -> None:
    assert tolerance.ratio_at(baseline_rate) == pytest.approx(ratio)


def _check(body: str) -> str:
    """A policy file with one metric check whose keys are `body` (from line 8)."""
    head = 'policies:\n  - name: p\n    models: ["*"]\n    steps: [{setWeight: 10}]\n    analysis:\n' \
        "      metrics:\n        - name: m\n"
    return head + textwrap.indent(textwrap.dedent(body), "          ")


FIELD = "policies[0].analysis.metrics[0]"
ERRORS = [
    pytest.param(_check("template: request-error-rate\ncompare: prod\n"), 9, f"{FIELD}.compare",
                 "must be baseline, got 'prod'", id="compare not baseline"),
    pytest.param(_check("template: request-error-rate\ncompare: baseline\nmethod: sequentail\n"), 10,
                 f"{FIELD}.method", "did you mean 'sequential'?", id="method typo"),
    pytest.param(_check("template: request-error-rate\ncompare: baseline\nalpha: 5\n"), 10, f"{FIELD}.alpha",
                 "must be between 0 and 1 (the false-rollback probability, e.g. 0.01), got 5", id="alpha 5"),
    pytest.param(_check("template: request-error-rate\ncompare: baseline\nalpha: often\n"), 10,
                 f"{FIELD}.alpha", "must be a number", id="alpha a word"),
    pytest.param(_check("template: request-error-rate\ncompare: baseline\ntolerance: 1.5\n"), 10,
                 f"{FIELD}.tolerance", 'such as "1.5x"', id="tolerance without unit"),
    pytest.param(_check("template: request-error-rate\ncompare: baseline\ntolerance: 0.9x\n"), 10,
                 f"{FIELD}.tolerance", "a ratio above 1", id="tolerance below 1x"),
    pytest.param(_check("template: request-error-rate\ncompare: baseline\ntolerance: '+0pp'\n"), 10,
                 f"{FIELD}.tolerance", 'percentage points such as "+0.5pp"', id="tolerance 0 points"),
    pytest.param(_check("template: request-error-rate\ncompare: baseline\ntolerance: 50x\n"), 10,
                 f"{FIELD}.tolerance", "at most 20x, got '50x'", id="tolerance beyond the grid"),
    pytest.param(_check("template: request-error-rate\ncompare: baseline\nslowerThan: 250ms\n"), 10,
                 f"{FIELD}.slowerThan", "only for latency", id="slowerThan on errors"),
    pytest.param(_check("template: request-duration-p99\ncompare: baseline\nslowerThan: 75ms\n"), 10,
                 f"{FIELD}.slowerThan", "Envoy's latency histogram in ms (0.5, 1, 5, 10, 25, 50, 100, 250",
                 id="not a bucket"),
    pytest.param(_check("query: up\ncompare: baseline\n"), 8, f"{FIELD}.query",
                 "counts per arm, a query's value cannot be", id="query compared"),
    pytest.param(_check("template: request-rate\ncompare: baseline\n"), 8, f"{FIELD}.template",
                 "'request-rate' has no counts to compare per arm", id="template without counts"),
    pytest.param(_check("compare: baseline\n"), 7, FIELD, "needs exactly one of template",
                 id="nothing to count"),
    pytest.param(_check("compare: baseline\nevents: 'sum(e{v=\"{{ version }}\"})'\n"), 7, f"{FIELD}.requests",
                 "required with the other", id="events without requests"),
    pytest.param(_check("compare: baseline\nevents: sum(e)\nrequests: 'sum(r{c=\"{{ cluster }}\"})'\n"), 9,
                 f"{FIELD}.events", "must name the arm with {{ cluster }} or {{ version }}", id="no arm"),
    pytest.param(_check("compare: baseline\nevents: 'e{v=\"{{ verison }}\"}'\n"
                        "requests: 'r{v=\"{{ version }}\"}'\n"), 9, f"{FIELD}.events",
                 "{{ verison }} (did you mean 'version'?)", id="arm variable typo"),
    pytest.param(_check("template: request-error-rate\nthresholdRange: {max: 1}\nalpha: 0.01\n"), 10,
                 f"{FIELD}.alpha", "only in a check with `compare: baseline`", id="alpha without compare"),
    pytest.param(_check("template: request-error-rate\n"), 7, f"{FIELD}.thresholdRange",
                 "required (or `compare: baseline`)", id="neither threshold nor comparison"),
    pytest.param('policies:\n  - name: p\n    models: ["*"]\n    steps: [{setWeight: 10}]\n    analysis:\n'
                 "      baselineUnhealthy: rollback\n", 6, "policies[0].analysis.baselineUnhealthy",
                 "must be hold or pause, got 'rollback'", id="baselineUnhealthy rollback"),
]


@pytest.mark.parametrize(("text", "line", "field", "message"), ERRORS)
def test_each_comparison_mistake_is_reported_with_its_line_and_field(
    text: str, line: int, field: str, message: str
) -> None:
    policies, errors = parse_policy_text(text, source="f.yaml")

    assert policies == ()
    assert [(e.file, e.line, e.field) for e in errors] == [("f.yaml", line, field)], errors
    assert message in errors[0].message


def test_a_threshold_judge_given_a_comparison_holds_instead_of_passing() -> None:
    check = MetricCheck(
        "latency", ThresholdRange(), template="request-duration-p99", compare=BaselineComparison()
    )

    verdict = judge(check, Observation.of(5000.0), canary_requests=Observation.of(1000), min_requests=20)

    assert verdict.kind is VerdictKind.ERROR
    assert "judged per arm by the sequential test" in verdict.message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["compare", "method", "alpha", "tolerance", "slowerThan", "events", "requests",
                        "baselineUnhealthy"]), values)
@example("alpha", BIG_INT)
@example("alpha", float("nan"))
@example("tolerance", "9" * 400 + "x")
@example("slowerThan", "9" * 400 + "h")
def test_a_compared_check_with_any_value_in_any_field_is_answered(field: str, value: Any) -> None:
    check: dict[str, Any] = {"name": "latency", "template": "request-duration-p99", "compare": "baseline"}
    analysis: dict[str, Any] = {"metrics": [check]}
    if field == "baselineUnhealthy":
        analysis[field] = value
    else:
        check[field] = value
    policy = {"name": "p", "models": ["*"], "steps": [{"setWeight": 10}], "analysis": analysis}

    check_answer(dumped({"policies": [policy]}))
