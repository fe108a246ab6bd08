"""Rollout policy YAML: what a good file becomes, and where each mistake is reported."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from controlplane.rollout.policy import (
    AnalysisSpec,
    BaselineComparison,
    BaselineUnhealthy,
    HeaderMatchSpec,
    MetricCheck,
    Pause,
    Policy,
    SetWeight,
    ThresholdRange,
    first_matching,
)
from controlplane.rollout.policy_loader import parse_duration, parse_policy_text, policy_document

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
policies:
  - name: fraud
    models: ["fraud-*", "risk"]
    steps:
      - setWeight: 5
      - pause: {duration: 1m}
      - setWeight: 100
      - pause: {}
    analysis:
      interval: 5s
      window: 1h30m
      failureLimit: 0
      minRequests: 100
      metrics:
        - name: errors
          template: request-error-rate
          thresholdRange: {max: 0.02}
        - name: recall
          query: 'avg(quality{model="{{model}}", cluster="{{ canary_cluster }}"}[{{ window }}])'
          thresholdRange: {min: 0.5, max: 1}
    match:
      - headers: {x-canary: always, x-team: "42"}
    mirror: {percent: 20}
    alerts: {rollback: false}
  - name: default
    models: ["*"]
    steps:
      - setWeight: 50
"""


def test_good_policy_file_parses_to_the_typed_policies() -> None:
    policies, errors = parse_policy_text(GOOD, source="p.yaml")

    assert errors == []
    assert policies == (
        Policy(
            name="fraud",
            models=("fraud-*", "risk"),
            steps=(SetWeight(5), Pause(60.0), SetWeight(100), Pause(None)),
            analysis=AnalysisSpec(
                interval_seconds=5.0,
                window_seconds=5400.0,
                failure_limit=0,
                inconclusive_limit=3,
                consecutive_error_limit=4,
                min_requests=100,
                metrics=(
                    MetricCheck("errors", ThresholdRange(max=0.02), template="request-error-rate"),
                    MetricCheck(
                        "recall",
                        ThresholdRange(min=0.5, max=1.0),
                        query='avg(quality{model="{{model}}", cluster="{{ canary_cluster }}"}[{{ window }}])',
                    ),
                ),
            ),
            match=(HeaderMatchSpec((("x-canary", "always"), ("x-team", "42"))),),
            mirror_percent=20,
            rollback_on_alert=False,
            source="p.yaml:2",
        ),
        Policy(name="default", models=("*",), steps=(SetWeight(50),), source="p.yaml:25"),
    )


def test_omitted_analysis_settings_take_the_design_defaults() -> None:
    policies, _ = parse_policy_text(GOOD, source="p.yaml")

    analysis = policies[1].analysis
    assert (analysis.interval_seconds, analysis.window_seconds) == (10.0, 30.0)
    assert (analysis.failure_limit, analysis.inconclusive_limit) == (1, 3)
    assert (analysis.consecutive_error_limit, analysis.min_requests) == (4, 20)
    assert (policies[1].mirror_percent, policies[1].rollback_on_alert) == (0, True)


def test_shipped_default_policy_judges_errors_and_latency_against_prod_with_the_sequential_test() -> None:
    path = ROOT / "deploy" / "policies" / "default.yaml"

    policies, errors = parse_policy_text(path.read_text(), source=str(path))

    assert errors == []
    (policy,) = policies
    assert policy.steps == (SetWeight(10), Pause(30.0), SetWeight(50), Pause(30.0))
    # No check on a gauge only the reference model server exports: a real server has none, and
    # "no data" would pause every rollout.
    assert [(m.name, m.template, m.threshold, m.compare) for m in policy.analysis.metrics] == [
        ("error-rate", "request-error-rate", ThresholdRange(max=0.05), BaselineComparison(alpha=0.01)),
        ("latency", "request-duration-p99", ThresholdRange(max=1000), BaselineComparison(alpha=0.01)),
    ]
    assert policy.analysis.baseline_unhealthy is BaselineUnhealthy.HOLD
    assert policy.match == (HeaderMatchSpec((("x-canary", "always"),)),)


def test_policy_document_uses_the_yaml_vocabulary() -> None:
    policies, _ = parse_policy_text(GOOD, source="p.yaml")

    document = policy_document(policies[0])

    assert document["source"] == "p.yaml:2"
    assert document["steps"] == [{"setWeight": 5}, {"pause": {"duration": "60s"}}, {"setWeight": 100},
                                 {"pause": {}}]
    assert document["analysis"]["window"] == "5400s"
    assert document["analysis"]["failureLimit"] == 0
    assert document["analysis"]["metrics"][0] == {
        "name": "errors", "template": "request-error-rate", "thresholdRange": {"max": 0.02}
    }
    assert document["match"] == [{"headers": {"x-canary": "always", "x-team": "42"}}]
    assert (document["mirror"], document["alerts"]) == ({"percent": 20}, {"rollback": False})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("1m", 60.0), ("500ms", 0.5), ("1h30m", 5400.0), ("1m30s", 90.0), ("1.5s", 1.5),
     ("2h", 7200.0)],
)
def test_durations_in_prometheus_notation(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "s", "30 s", "1x", "30s30s", "-5s", "1d"])
def test_malformed_durations_are_refused(text: str) -> None:
    assert parse_duration(text) is None


def _policy(body: str) -> str:
    """A one-policy file whose policy body is `body` (indented under the list item), from line 2."""
    return "policies:\n  - " + textwrap.indent(textwrap.dedent(body), "    ")[4:]


BASE = """\
name: p
models: ["*"]
steps:
  - setWeight: 10
"""

# (file text, line, field, a piece of the message)
ERRORS = [
    pytest.param("polices: []\n", 1, "polices", "did you mean 'policies'?", id="top-level typo"),
    pytest.param("policies: {}\n", 1, "policies", "must be a list of policies", id="policies not a list"),
    pytest.param("policies:\n  - name: p\n    models: [a]\n    steps: [{setWeight: 10}]\n  - name: p\n"
                 "    models: [b]\n    steps: [{setWeight: 20}]\n",
                 5, "policies[1].name", "'p' is already defined at f.yaml:2", id="duplicate name"),
    pytest.param(_policy("name: p\nsteps: [{setWeight: 1}]\n"), 2, "policies[0].models", "required",
                 id="models missing"),
    pytest.param(_policy("name: p\nmodels: []\nsteps: [{setWeight: 1}]\n"), 3, "policies[0].models",
                 "at least one", id="models empty"),
    pytest.param(_policy("name: p\nmodels: '*'\nsteps: [{setWeight: 1}]\n"), 3, "policies[0].models",
                 "must be a list of glob patterns", id="models a string"),
    pytest.param(_policy("name: p\nmodels: [a]\n"), 2, "policies[0].steps", "required", id="steps missing"),
    pytest.param(_policy("name: p\nmodels: [a]\nsteps: []\n"), 4, "policies[0].steps", "at least one step",
                 id="steps empty"),
    pytest.param(_policy("name: p\nmodels: [a]\nsteps:\n  - setweight: 10\n"), 5,
                 "policies[0].steps[0].setweight", "did you mean 'setWeight'?", id="setWeight typo"),
    pytest.param(_policy("name: p\nmodels: [a]\nsteps:\n  - setWeight: 10\n  - setWeight: 101\n"), 6,
                 "policies[0].steps[1].setWeight", "from 0 to 100, got 101", id="weight above 100"),
    pytest.param(_policy("name: p\nmodels: [a]\nsteps:\n  - setWeight: ten\n"), 5,
                 "policies[0].steps[0].setWeight", "got 'ten'", id="weight not a number"),
    pytest.param(_policy("name: p\nmodels: [a]\nsteps:\n  - {setWeight: 10, pause: {}}\n"), 5,
                 "policies[0].steps[0]", "exactly one of setWeight, pause", id="two kinds in one step"),
    pytest.param(_policy("name: p\nmodels: [a]\nsteps:\n  - pause: {duration: 30}\n"), 5,
                 "policies[0].steps[0].pause.duration", "must be a duration", id="duration without unit"),
    pytest.param(_policy("name: p\nmodels: [a]\nsteps:\n  - pause:\n"), 5,
                 "policies[0].steps[0].pause", "write `pause: {}`", id="bare pause"),
    pytest.param(_policy("name: p\nmodels: [a]\nsteps:\n  - pause: {duraton: 1m}\n"), 5,
                 "policies[0].steps[0].pause.duraton", "did you mean 'duration'?", id="pause key typo"),
    pytest.param(_policy(BASE + "analysis:\n  window: soon\n"), 7, "policies[0].analysis.window",
                 "got 'soon'", id="window not a duration"),
    pytest.param(_policy(BASE + "analysis:\n  failureLimit: -1\n"), 7, "policies[0].analysis.failureLimit",
                 "integer of at least 0", id="negative limit"),
    pytest.param(_policy(BASE + "analysis:\n  minrequests: 5\n"), 7, "policies[0].analysis.minrequests",
                 "did you mean 'minRequests'?", id="limit typo"),
    pytest.param(_policy(BASE + "analysis:\n  metrics:\n    - name: e\n      template: error-rate\n"
                         "      thresholdRange: {max: 1}\n"),
                 9, "policies[0].analysis.metrics[0].template", "built in: request-error-rate",
                 id="unknown template"),
    pytest.param(_policy(BASE + "analysis:\n  metrics:\n    - name: e\n      thresholdRange: {max: 1}\n"),
                 8, "policies[0].analysis.metrics[0]", "exactly one of template",
                 id="neither template nor query"),
    pytest.param(_policy(BASE + "analysis:\n  metrics:\n    - name: e\n      query: up\n"), 8,
                 "policies[0].analysis.metrics[0].thresholdRange", "required", id="threshold missing"),
    pytest.param(_policy(BASE + "analysis:\n  metrics:\n    - name: e\n      query: up\n"
                         "      thresholdRange: {}\n"),
                 10, "policies[0].analysis.metrics[0].thresholdRange", "needs min, max or both",
                 id="threshold without bounds"),
    pytest.param(_policy(BASE + "analysis:\n  metrics:\n    - name: e\n      query: up\n"
                         "      thresholdRange: {min: 5, max: 1}\n"),
                 10, "policies[0].analysis.metrics[0].thresholdRange", "min (5) is above max (1)",
                 id="min above max"),
    pytest.param(_policy(BASE + "analysis:\n  metrics:\n    - name: e\n      query: up\n"
                         "      thresholdRange: {max: low}\n"),
                 10, "policies[0].analysis.metrics[0].thresholdRange.max", "must be a number",
                 id="bound not a number"),
    pytest.param(_policy(BASE + "analysis:\n  metrics:\n    - name: e\n      query: up\n"
                         "      thresholdRange: {max: 1}\n    - name: e\n      query: up\n"
                         "      thresholdRange: {max: 2}\n"),
                 11, "policies[0].analysis.metrics[1].name", "'e' is checked twice", id="metric twice"),
    pytest.param(_policy(BASE + "match:\n  - header: {x-canary: always}\n"), 7, "policies[0].match[0].header",
                 "did you mean 'headers'?", id="match typo"),
    pytest.param(_policy(BASE + "match:\n  - headers: {x-canary: 1}\n"), 7,
                 "policies[0].match[0].headers.x-canary", "quote it", id="header value not a string"),
    pytest.param(_policy(BASE + "mirror: {percent: 150}\n"), 6, "policies[0].mirror.percent", "from 0 to 100",
                 id="mirror above 100"),
    pytest.param(_policy(BASE + "alerts: {rollback: maybe}\n"), 6, "policies[0].alerts.rollback",
                 "true or false", id="rollback not a bool"),
    pytest.param(_policy(BASE + "name: q\n"), 6, "policies[0].name", "given twice", id="key given twice"),
    pytest.param("policies:\n  - name: [p\n", 3, "", "not valid YAML", id="broken YAML"),
    pytest.param("", 1, "policies", "the file is empty", id="empty file"),
]


@pytest.mark.parametrize(("text", "line", "field", "message"), ERRORS)
def test_each_mistake_is_reported_with_its_line_and_field(
    text: str, line: int, field: str, message: str
) -> None:
    policies, errors = parse_policy_text(text, source="f.yaml")

    assert policies == ()
    assert [(e.file, e.line, e.field) for e in errors] == [("f.yaml", line, field)], errors
    assert message in errors[0].message
    assert str(errors[0]).startswith(f"f.yaml:{line}: {field}: " if field else f"f.yaml:{line}: ")


def test_unknown_template_variable_names_it_and_the_allowed_ones() -> None:
    text = _policy(BASE + "analysis:\n  metrics:\n    - name: q\n"
                   "      query: 'up{model=\"{{ modle }}\", v=\"{{canary_version}}\"}'\n"
                   "      thresholdRange: {min: 1}\n")

    _, errors = parse_policy_text(text, source="f.yaml")

    (error,) = errors
    assert (error.line, error.field) == (9, "policies[0].analysis.metrics[0].query")
    assert "unknown template variable {{ modle }} (did you mean 'model'?)" in error.message
    assert "allowed: {{ model }}, {{ stable_version }}, {{ canary_version }}, {{ stable_cluster }}, " \
        "{{ canary_cluster }}, {{ window }}, {{ interval }}" in error.message


def test_a_file_with_two_mistakes_reports_both_in_line_order() -> None:
    text = """\
policies:
  - name: a
    models: ["*"]
    steps:
      - setWeight: 10
    mirror: {percent: 200}
  - name: b
    models: ["*"]
    steps:
      - pause: {duration: forever}
"""
    policies, errors = parse_policy_text(text, source="two.yaml")

    assert policies == ()
    assert [str(e) for e in errors] == [
        "two.yaml:6: policies[0].mirror.percent: must be an integer from 0 to 100, got 200",
        'two.yaml:10: policies[1].steps[0].pause.duration: must be a duration above 0 such as "30s", "1m", '
        "\"500ms\" or \"1h30m\", got 'forever'",
    ]


def test_a_policy_with_an_error_does_not_hide_the_errors_of_the_others() -> None:
    text = "policies:\n  - nme: a\n  - name: b\n    models: []\n    steps: [{setWeight: 1}]\n"

    _, errors = parse_policy_text(text, source="f.yaml")

    assert [(e.line, e.field) for e in errors] == [
        (2, "policies[0].nme"), (2, "policies[0].models"), (2, "policies[0].steps"),
        (4, "policies[1].models"),
    ]


POLICIES = (
    Policy(name="fraud", models=("fraud-*",), steps=(SetWeight(10),)),
    Policy(name="exact", models=("ranker", "reco-v?"), steps=(SetWeight(20),)),
    Policy(name="default", models=("*",), steps=(SetWeight(30),)),
)


@pytest.mark.parametrize(
    ("model", "expected"),
    [("fraud-eu", "fraud"), ("fraud", "default"), ("ranker", "exact"), ("reco-v2", "exact"),
     ("reco-v10", "default"), ("Fraud-eu", "default"), ("anything", "default")],
)
def test_first_matching_policy_applies_by_glob_in_file_order(model: str, expected: str) -> None:
    policy = first_matching(POLICIES, model)

    assert policy is not None and policy.name == expected


def test_no_policy_matches_when_no_glob_does() -> None:
    assert first_matching(POLICIES[:2], "ranker-v2") is None
