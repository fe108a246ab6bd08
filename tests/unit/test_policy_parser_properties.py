"""Property tests of the policy parser: any text gets policies or located errors, never a crash.

A crash here killed the reload task (issue 9, finding 5): every input must come back as
policies or as `PolicyError`s that name the file and a line.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from controlplane.rollout.policy_loader import parse_policy_text, policy_document

SOURCE = "fuzz/policies.yaml"
# Written as a word, swapped for 5,000 digits after dumping: past Python's int-from-text limit,
# which neither yaml.safe_dump nor hypothesis's reporting can print.
HUGE_INT = "HUGEINTEGER"
BIG_INT = "BIGINTEGER"  # 400 digits: an int Python holds, but no float can

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([HUGE_INT, BIG_INT]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["30s", "1h30m", "500ms", "0s", "9" * 400 + "h", "request-error-rate", "{{ model }}",
                     "*"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["name", "models", "steps", "setWeight", "pause", "duration", "analysis",
                             "metrics", "thresholdRange", "min", "max", "interval", "window", "query",
                             "template", "match", "headers", "mirror", "percent", "alerts", "rollback",
                             "failureLimit", "minRequests"]) | st.text(max_size=8),
            inner,
            max_size=5,
        ),
    ),
    max_leaves=25,
)


def policy_with(field: str, value: Any) -> dict[str, Any]:
    """A valid policy with one field replaced by an arbitrary value."""
    policy: dict[str, Any] = {
        "name": "p",
        "models": ["*"],
        "steps": [{"setWeight": 10}, {"pause": {"duration": "1s"}}],
        "analysis": {"interval": "1s", "metrics": [
            {"name": "e", "template": "request-error-rate", "thresholdRange": {"max": 0.01}}]},
    }
    if field == "step":
        policy["steps"].append(value)
    elif field == "setWeight":
        policy["steps"].append({"setWeight": value})
    elif field == "duration":
        policy["steps"].append({"pause": {"duration": value}})
    elif field == "threshold":
        policy["analysis"]["metrics"][0]["thresholdRange"] = value
    elif field == "max":
        policy["analysis"]["metrics"][0]["thresholdRange"] = {"max": value}
    elif field in ("failureLimit", "window"):
        policy["analysis"][field] = value
    elif field == "percent":
        policy["mirror"] = {"percent": value}
    else:
        policy[field] = value
    return {"policies": [policy]}


def dumped(document: Any) -> str:
    return yaml.safe_dump(document).replace(HUGE_INT, "9" * 5000).replace(BIG_INT, "9" * 400)


def check_answer(text: str) -> None:
    policies, errors = parse_policy_text(text, source=SOURCE)
    assert not (policies and errors)
    for error in errors:
        assert error.file == SOURCE
        assert error.line >= 1, error
        assert str(error).startswith(f"{SOURCE}:{error.line}: ")
    for policy in policies:
        json.dumps(policy_document(policy), allow_nan=False)  # what GET /v1/policies serves


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_any_text_is_answered_with_policies_or_located_errors(text: str) -> None:
    check_answer(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_any_yaml_document_is_answered_with_policies_or_located_errors(document: Any) -> None:
    check_answer(dumped(document))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["name", "models", "steps", "step", "setWeight", "duration", "analysis", "threshold",
                        "max", "failureLimit", "window", "match", "mirror", "percent", "alerts"]), values)
@example("setWeight", HUGE_INT)  # issue 9: `setWeight: <5,000 digits>` killed the reload task
@example("percent", HUGE_INT)
@example("duration", "9" * 400 + "h")
@example("max", float("inf"))
@example("max", BIG_INT)
def test_a_policy_with_any_value_in_any_field_is_answered(field: str, value: Any) -> None:
    check_answer(dumped(policy_with(field, value)))


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=6000), st.sampled_from(["[", "{a: ", "- ", "{"]),
       st.sampled_from(["policies: ", "policies:\n  - name: p\n    steps: ", ""]))
@example(5000, "[", "policies: ")  # issue 9: 5,000 nested `[` killed the reload task
def test_deep_nesting_is_a_located_error_not_a_recursion_error(depth: int, opener: str, prefix: str) -> None:
    if opener == "- ":
        text = prefix + "".join("\n" + "  " * level + "- " for level in range(depth)) + "x\n"
    else:
        text = prefix + opener * depth + "\n"
    check_answer(text)
