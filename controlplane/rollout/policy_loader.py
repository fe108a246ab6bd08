"""Rollout policy files: YAML to `Policy` values, with file, line and field in every error.

Parsing (`parse_policy_text`, `policy_document`) is pure; reading the files and
keeping the policies in force across edits is `policy_files`'.

The YAML is composed into nodes, not loaded into dicts, so that every value keeps
the line it came from. A file is all or nothing: a file with an error contributes
no policy of its new version; the registry keeps its previous version in force.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from controlplane.metrics.templates import (
    ARM_COUNTERS,
    ARM_VARIABLES,
    BUILTIN_TEMPLATES,
    VARIABLES,
    prometheus_duration,
    unknown_variables,
    variables_in,
)
from controlplane.rollout.policy import (
    MAX_TOLERANCE_RATIO,
    AnalysisSpec,
    BaselineComparison,
    BaselineUnhealthy,
    ComparisonMethod,
    HeaderMatchSpec,
    MetricCheck,
    Pause,
    Policy,
    PolicyError,
    SetWeight,
    Step,
    ThresholdRange,
    Tolerance,
    ToleranceKind,
)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_TAG_INT = "tag:yaml.org,2002:int"
_TAG_FLOAT = "tag:yaml.org,2002:float"
_TAG_BOOL = "tag:yaml.org,2002:bool"
_TAG_STR = "tag:yaml.org,2002:str"
# A policy is nested a handful of levels; PyYAML's composer recurses once per level and
# would die of a RecursionError past ~1,000, so deeper text is refused before composing.
MAX_NESTING = 64
# Longer than any pause or analysis window, and finite: PromQL and the clock need a number.
MAX_DURATION_SECONDS = 365 * 24 * 3600.0
_NESTING_STARTS = (
    yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken,
    yaml.FlowMappingStartToken, yaml.FlowSequenceStartToken,
)
_NESTING_ENDS = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)


def parse_duration(text: str) -> float | None:
    """Seconds in a duration such as "30s", "1m", "500ms", "1h30m"; None if it is not one (pure)."""
    if not text or _DURATION.sub("", text):
        return None
    parts = _DURATION.findall(text)
    units = [unit for _, unit in parts]
    if len(set(units)) != len(units):
        return None
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


class _Reader:
    """Walks one file's YAML nodes, collecting every error with its line and field."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[PolicyError] = []
        self._constructor = SafeConstructor()

    def error(self, node: Node, field: str, message: str) -> None:
        self.errors.append(PolicyError(self.source, node.start_mark.line + 1, field, message))

    def mapping(
        self, node: Node, field: str, *, allowed: Sequence[str], required: Sequence[str] = ()
    ) -> dict[str, Node] | None:
        """The mapping's values by key; unknown, duplicate and missing keys are errors."""
        if not isinstance(node, MappingNode):
            self.error(node, field, f"must be a mapping with keys {', '.join(allowed)}")
            return None
        values: dict[str, Node] = {}
        misspelt: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            if not isinstance(key, str) or not key:
                self.error(key_node, field, "a key must be a plain name")
            elif key in values:
                self.error(key_node, _join(field, key), "given twice")
            elif key not in allowed:
                meant = _closest(key, allowed)
                misspelt.add(meant or "")
                suggestion = f" (did you mean {meant!r}?)" if meant else ""
                self.error(key_node, _join(field, key),
                           f"unknown key{suggestion}; allowed: {', '.join(allowed)}")
            else:
                values[key] = value_node
        for key in required:
            if key not in values and key not in misspelt:  # "did you mean" has said it already
                self.error(node, _join(field, key), "required")
        return values

    def sequence(self, node: Node, field: str, *, what: str) -> list[Node] | None:
        if not isinstance(node, SequenceNode):
            self.error(node, field, f"must be a list of {what}")
            return None
        return list(node.value)

    def scalar(self, node: Node) -> Any:
        """The scalar's value, or None when it has none Python can hold (an int of 5,000 digits)."""
        if not isinstance(node, ScalarNode):
            return None
        try:
            return self._constructor.construct_object(node)
        except (ValueError, OverflowError):
            return None

    def string(self, node: Node, field: str) -> str | None:
        if not (isinstance(node, ScalarNode) and node.tag == _TAG_STR) or not node.value.strip():
            self.error(node, field, "must be a non-empty string (quote it if it looks like a number)")
            return None
        return str(node.value)

    def integer(self, node: Node, field: str, *, low: int, high: int | None = None) -> int | None:
        value = self.scalar(node) if isinstance(node, ScalarNode) and node.tag == _TAG_INT else None
        if not isinstance(value, int) or value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
            self.error(node, field, f"must be an integer {bounds}, got {_shown(node)}")
            return None
        return value

    def number(self, node: Node, field: str) -> float | None:
        is_number = isinstance(node, ScalarNode) and node.tag in (_TAG_INT, _TAG_FLOAT)
        scalar = self.scalar(node) if is_number else None
        try:
            value = math.nan if scalar is None else float(scalar)
        except OverflowError:  # an integer of hundreds of digits
            value = math.inf
        if math.isnan(value):
            self.error(node, field, f"must be a number, got {_shown(node)}")
            return None
        if math.isinf(value):  # an infinite bound is no bound: leave it out
            self.error(node, field, f"must be a finite number, got {_shown(node)}")
            return None
        return value

    def boolean(self, node: Node, field: str) -> bool | None:
        if not (isinstance(node, ScalarNode) and node.tag == _TAG_BOOL):
            self.error(node, field, f"must be true or false, got {_shown(node)}")
            return None
        return bool(self.scalar(node))

    def duration(self, node: Node, field: str) -> float | None:
        text = node.value if isinstance(node, ScalarNode) and node.tag == _TAG_STR else None
        seconds = parse_duration(text) if text is not None else None
        if seconds is None or seconds <= 0:
            self.error(node, field, f'must be a duration above 0 such as "30s", "1m", "500ms" or "1h30m", '
                       f"got {_shown(node)}")
            return None
        if seconds > MAX_DURATION_SECONDS:
            self.error(node, field, f"must be at most a year (8760h), got {_shown(node)}")
            return None
        return seconds


def _join(field: str, key: str) -> str:
    return f"{field}.{key}" if field else key


def _closest(word: str, choices: Sequence[str]) -> str | None:
    """The choice that `word` is most likely a typo of (case does not count), if any."""
    by_lower = {choice.lower(): choice for choice in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return by_lower[close[0]] if close else None


def _suggestion(word: str, choices: Sequence[str]) -> str:
    meant = _closest(word, choices)
    return f" (did you mean {meant!r}?)" if meant else ""


def _shown(node: Node) -> str:
    if isinstance(node, ScalarNode):
        if node.tag == "tag:yaml.org,2002:null":
            return "nothing"
        value = str(node.value)
        if len(value) > 40:
            value = f"{value[:20]}… ({len(value)} characters)"
        return repr(value) if node.tag == _TAG_STR else value
    return "a list" if isinstance(node, SequenceNode) else "a mapping"


def _too_deep(text: str) -> int | None:
    """The line at which the YAML nests deeper than MAX_NESTING, if it does (pure).

    PyYAML's scanner is a loop, not a recursion, so it can measure what the composer
    could not survive; YAML errors it meets on the way are raised as usual.
    """
    depth = 0
    for token in yaml.scan(text, Loader=yaml.SafeLoader):
        if isinstance(token, _NESTING_STARTS):
            depth += 1
            if depth > MAX_NESTING:
                return int(token.start_mark.line) + 1
        elif isinstance(token, _NESTING_ENDS):
            depth -= 1
    return None


def parse_policy_text(text: str, *, source: str) -> tuple[tuple[Policy, ...], list[PolicyError]]:
    """The policies of one YAML file, or every error in it in line order (pure).

    A file is all or nothing: with any error, no policy of it is returned.
    `source` names the file in errors and in each policy's `source`.
    """
    reader = _Reader(source)
    try:
        deep_at = _too_deep(text)
        if deep_at is not None:
            return (), [PolicyError(source, deep_at, "", f"nested more than {MAX_NESTING} levels deep "
                                    "(a policy needs fewer than 10): check the brackets and indentation")]
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark is not None else 0
        problem = ", ".join(part for part in (exc.context, exc.problem) if part) or str(exc)
        return (), [PolicyError(source, line, "", f"not valid YAML: {problem}")]
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow; it has a position, no mark
        line = text.count("\n", 0, exc.position) + 1
        message = f"not valid YAML: character {exc.character!r} is not allowed"
        return (), [PolicyError(source, line, "", message)]
    except yaml.YAMLError as exc:
        return (), [PolicyError(source, 0, "", f"not valid YAML: {exc}")]
    if root is None:
        return (), [PolicyError(source, 1, "policies", "the file is empty: expected a `policies:` list")]
    top = reader.mapping(root, "", allowed=("policies",), required=("policies",))
    if top is None or "policies" not in top:
        return (), reader.errors
    items = reader.sequence(top["policies"], "policies", what="policies")
    policies: list[Policy] = []
    first_line_of: dict[str, int] = {}
    for index, item in enumerate(items or []):
        field = f"policies[{index}]"
        policy = _policy(reader, item, field)
        if policy is None:
            continue
        if policy.name in first_line_of:
            reader.error(item, f"{field}.name",
                         f"{policy.name!r} is already defined at {source}:{first_line_of[policy.name]}")
            continue
        first_line_of[policy.name] = item.start_mark.line + 1
        policies.append(policy)
    if reader.errors:
        return (), sorted(reader.errors, key=lambda error: error.line)
    return tuple(policies), []


_POLICY_KEYS = ("name", "models", "steps", "analysis", "match", "mirror", "alerts")


def _policy(reader: _Reader, node: Node, field: str) -> Policy | None:
    errors_before = len(reader.errors)
    keys = reader.mapping(node, field, allowed=_POLICY_KEYS, required=("name", "models", "steps"))
    if keys is None:
        return None
    name = reader.string(keys["name"], f"{field}.name") if "name" in keys else None
    models = _models(reader, keys["models"], f"{field}.models") if "models" in keys else ()
    steps = _steps(reader, keys["steps"], f"{field}.steps") if "steps" in keys else ()
    analysis = _analysis(reader, keys["analysis"], f"{field}.analysis") if "analysis" in keys else None
    match = _match(reader, keys["match"], f"{field}.match") if "match" in keys else ()
    mirror = _single(reader, keys.get("mirror"), f"{field}.mirror", "percent",
                     lambda value, where: reader.integer(value, where, low=0, high=100))
    rollback = _single(reader, keys.get("alerts"), f"{field}.alerts", "rollback", reader.boolean)
    if len(reader.errors) > errors_before or name is None:
        return None
    return Policy(
        name=name,
        models=models,
        steps=steps,
        analysis=analysis or AnalysisSpec(),
        match=match,
        mirror_percent=0 if mirror is None else mirror,
        rollback_on_alert=True if rollback is None else rollback,
        source=f"{reader.source}:{node.start_mark.line + 1}",
    )


def _single(
    reader: _Reader, node: Node | None, field: str, key: str, read: Callable[[Node, str], Any]
) -> Any:
    """The one optional key of a small mapping such as `mirror: {percent: 10}`."""
    if node is None:
        return None
    keys = reader.mapping(node, field, allowed=(key,))
    return read(keys[key], f"{field}.{key}") if keys and key in keys else None


def _models(reader: _Reader, node: Node, field: str) -> tuple[str, ...]:
    items = reader.sequence(node, field, what='glob patterns, e.g. ["*"]')
    if items is None:
        return ()
    if not items:
        reader.error(node, field, "needs at least one glob pattern")
    patterns = (reader.string(item, f"{field}[{index}]") for index, item in enumerate(items))
    return tuple(pattern for pattern in patterns if pattern is not None)


def _steps(reader: _Reader, node: Node, field: str) -> tuple[Step, ...]:
    items = reader.sequence(node, field, what="steps (setWeight or pause)")
    if items is None:
        return ()
    if not items:
        reader.error(node, field, "needs at least one step")
    steps = (_step(reader, item, f"{field}[{index}]") for index, item in enumerate(items))
    return tuple(step for step in steps if step is not None)


def _step(reader: _Reader, node: Node, field: str) -> Step | None:
    keys = reader.mapping(node, field, allowed=("setWeight", "pause"))
    if keys is None:
        return None
    if len(keys) != 1:
        if isinstance(node, MappingNode) and len(node.value) == len(keys):
            reader.error(node, field, "a step has exactly one of setWeight, pause")
        return None
    if "setWeight" in keys:
        weight = reader.integer(keys["setWeight"], f"{field}.setWeight", low=0, high=100)
        return None if weight is None else SetWeight(weight)
    pause = keys["pause"]
    if isinstance(pause, ScalarNode) and pause.tag == "tag:yaml.org,2002:null":
        reader.error(pause, f"{field}.pause", "write `pause: {}` to wait for a promote, "
                     "or `pause: {duration: 30s}`")
        return None
    spec = reader.mapping(pause, f"{field}.pause", allowed=("duration",))
    if spec is None:
        return None
    if "duration" not in spec:
        return Pause(None)
    seconds = reader.duration(spec["duration"], f"{field}.pause.duration")
    return None if seconds is None else Pause(seconds)


_ANALYSIS_LIMITS = {
    "failureLimit": "failure_limit",
    "inconclusiveLimit": "inconclusive_limit",
    "consecutiveErrorLimit": "consecutive_error_limit",
    "minRequests": "min_requests",
}
_ANALYSIS_KEYS = ("interval", "window", *_ANALYSIS_LIMITS, "metrics", "baselineUnhealthy")


def _analysis(reader: _Reader, node: Node, field: str) -> AnalysisSpec | None:
    keys = reader.mapping(node, field, allowed=_ANALYSIS_KEYS)
    if keys is None:
        return None
    settings: dict[str, Any] = {}
    for key, attribute in (("interval", "interval_seconds"), ("window", "window_seconds")):
        if key in keys:
            settings[attribute] = reader.duration(keys[key], f"{field}.{key}")
    for key, attribute in _ANALYSIS_LIMITS.items():
        if key in keys:
            settings[attribute] = reader.integer(keys[key], f"{field}.{key}", low=0)
    if "metrics" in keys:
        settings["metrics"] = _metrics(reader, keys["metrics"], f"{field}.metrics")
    if "baselineUnhealthy" in keys:
        where = f"{field}.baselineUnhealthy"
        action = reader.string(keys["baselineUnhealthy"], where)
        actions = tuple(a.value for a in BaselineUnhealthy)
        if action is not None and action not in actions:
            reader.error(keys["baselineUnhealthy"], where,
                         f"must be {' or '.join(actions)}{_suggestion(action, actions)}, got {action!r}")
            action = None
        settings["baseline_unhealthy"] = None if action is None else BaselineUnhealthy(action)
    if any(value is None for value in settings.values()):
        return None
    return AnalysisSpec(**settings)


def _metrics(reader: _Reader, node: Node, field: str) -> tuple[MetricCheck, ...]:
    items = reader.sequence(node, field, what="metric checks")
    checks: list[MetricCheck] = []
    for index, item in enumerate(items or []):
        check = _metric(reader, item, f"{field}[{index}]")
        if check is None:
            continue
        if any(other.name == check.name for other in checks):
            reader.error(item, f"{field}[{index}].name", f"metric {check.name!r} is checked twice")
            continue
        checks.append(check)
    return tuple(checks)


_METRIC_KEYS = ("name", "template", "query", "thresholdRange")
# Keys of a check that compares the canary with the baseline (`compare: baseline`).
_COMPARE_KEYS = ("compare", "method", "alpha", "tolerance", "slowerThan", "events", "requests")
# Built-in templates a comparison can count per arm: errors against requests, and requests
# slower than a latency bucket.
COMPARABLE_TEMPLATES = tuple(ARM_COUNTERS)
# Envoy's default histogram bucket boundaries (ms): `slowerThan` must be one of them.
ENVOY_BUCKETS_MS = (0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
                    30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0)
_TOLERANCE = re.compile(r"(?:(?P<ratio>\d+(?:\.\d+)?)x|\+(?P<points>\d+(?:\.\d+)?)pp)")


def _metric(reader: _Reader, node: Node, field: str) -> MetricCheck | None:
    keys = reader.mapping(node, field, allowed=_METRIC_KEYS + _COMPARE_KEYS, required=("name",))
    if keys is None:
        return None
    errors_before = len(reader.errors)
    name = reader.string(keys["name"], f"{field}.name") if "name" in keys else None
    compare = "compare" in keys
    template = query = None
    if compare:
        template = _compared_source(reader, node, keys, field)
    elif ("template" in keys) == ("query" in keys):
        reader.error(node, field, f"exactly one of template ({', '.join(BUILTIN_TEMPLATES)}) or query")
    elif "template" in keys:
        template = _template(reader, keys["template"], f"{field}.template")
    else:
        query = _query(reader, keys["query"], f"{field}.query")
    if not compare:
        for key in _COMPARE_KEYS[1:]:
            if key in keys:
                reader.error(keys[key], f"{field}.{key}", "only in a check with `compare: baseline`")
        if "thresholdRange" not in keys:
            reader.error(node, f"{field}.thresholdRange", "required (or `compare: baseline`)")
    threshold = _threshold(reader, keys["thresholdRange"], f"{field}.thresholdRange") \
        if "thresholdRange" in keys else ThresholdRange()
    comparison = _comparison(reader, keys, field, template=template) if compare else None
    if len(reader.errors) > errors_before or name is None or threshold is None:
        return None
    return MetricCheck(name=name, threshold=threshold, template=template, query=query, compare=comparison)


def _template(reader: _Reader, node: Node, field: str) -> str | None:
    template = reader.string(node, field)
    if template is not None and template not in BUILTIN_TEMPLATES:
        reader.error(node, field,
                     f"unknown template {template!r}{_suggestion(template, tuple(BUILTIN_TEMPLATES))}; "
                     f"built in: {', '.join(BUILTIN_TEMPLATES)}")
        return None
    return template


def _compared_source(reader: _Reader, node: Node, keys: dict[str, Node], field: str) -> str | None:
    """A comparison counts per arm: a countable built-in template, or `events` and `requests` PromQL."""
    counters = "events" in keys or "requests" in keys
    what = (f"template ({', '.join(COMPARABLE_TEMPLATES)}) or events and requests "
            "(PromQL counters with {{ cluster }} or {{ version }})")
    if "query" in keys:
        reader.error(keys["query"], f"{field}.query",
                     f"`compare: baseline` counts per arm, a query's value cannot be: use {what}")
        return None
    if ("template" in keys) == counters:
        reader.error(node, field, f"`compare: baseline` needs exactly one of {what}")
        return None
    if counters:
        for key in ("events", "requests"):
            if key not in keys:
                reader.error(node, f"{field}.{key}", "required with the other of events, requests")
        return None
    template = _template(reader, keys["template"], f"{field}.template")
    if template is not None and template not in COMPARABLE_TEMPLATES:
        reader.error(keys["template"], f"{field}.template",
                     f"{template!r} has no counts to compare per arm; "
                     f"comparable: {', '.join(COMPARABLE_TEMPLATES)}")
        return None
    return template


def _comparison(
    reader: _Reader, keys: dict[str, Node], field: str, *, template: str | None
) -> BaselineComparison | None:
    errors_before = len(reader.errors)
    against = reader.string(keys["compare"], f"{field}.compare")
    if against is not None and against != "baseline":
        reader.error(keys["compare"], f"{field}.compare", f"must be baseline, got {against!r}")
    method = ComparisonMethod.SEQUENTIAL
    if "method" in keys:
        given = reader.string(keys["method"], f"{field}.method")
        methods = tuple(m.value for m in ComparisonMethod)
        if given is not None and given not in methods:
            reader.error(keys["method"], f"{field}.method", f"unknown method {given!r}"
                         f"{_suggestion(given, methods)}; known: {', '.join(methods)}")
        elif given is not None:
            method = ComparisonMethod(given)
    alpha = reader.number(keys["alpha"], f"{field}.alpha") if "alpha" in keys else 0.01
    if alpha is not None and not 0 < alpha < 1:
        reader.error(keys["alpha"], f"{field}.alpha",
                     f"must be between 0 and 1 (the false-rollback probability, e.g. 0.01), got {alpha:g}")
    tolerance = _tolerance(reader, keys["tolerance"], f"{field}.tolerance") if "tolerance" in keys \
        else Tolerance(ToleranceKind.RATIO, 1.5)
    slower_than = None
    if "slowerThan" in keys:
        slower_than = _slower_than(reader, keys["slowerThan"], f"{field}.slowerThan", template=template)
    events = requests = None
    if "events" in keys and "requests" in keys:
        events = _counter_query(reader, keys["events"], f"{field}.events")
        requests = _counter_query(reader, keys["requests"], f"{field}.requests")
    if len(reader.errors) > errors_before or alpha is None or tolerance is None:
        return None
    return BaselineComparison(method=method, alpha=alpha, tolerance=tolerance, slower_than_ms=slower_than,
                              events_query=events, requests_query=requests)


def _tolerance(reader: _Reader, node: Node, field: str) -> Tolerance | None:
    text = node.value.strip() if isinstance(node, ScalarNode) and node.tag == _TAG_STR else ""
    match = _TOLERANCE.fullmatch(text)
    value = float(match["ratio"] or match["points"]) if match else math.nan
    if match and match["ratio"] and value > 1:
        if value > MAX_TOLERANCE_RATIO:
            reader.error(node, field, f"must be at most {MAX_TOLERANCE_RATIO:g}x, got {_shown(node)}")
            return None
        return Tolerance(ToleranceKind.RATIO, value)
    if match and match["points"] and 0 < value < 100:
        return Tolerance(ToleranceKind.POINTS, value)
    reader.error(node, field, 'must be a ratio above 1 such as "1.5x" (no more than 1.5 times the baseline) '
                 f'or percentage points such as "+0.5pp" (the baseline plus 0.5 points), got {_shown(node)}')
    return None


def _slower_than(reader: _Reader, node: Node, field: str, *, template: str | None) -> float | None:
    if template != "request-duration-p99":
        reader.error(node, field, "only for latency: `template: request-duration-p99`")
        return None
    seconds = reader.duration(node, field)
    if seconds is None:
        return None
    milliseconds = round(seconds * 1000, 3)
    if milliseconds not in ENVOY_BUCKETS_MS:
        buckets = ", ".join(f"{ms:g}" for ms in ENVOY_BUCKETS_MS[:12])
        reader.error(node, field, "must be a bucket boundary of Envoy's latency histogram in ms "
                     f"({buckets}, …), got {_shown(node)}")
        return None
    return milliseconds


def _counter_query(reader: _Reader, node: Node, field: str) -> str | None:
    query = reader.string(node, field)
    if query is None:
        return None
    allowed_names = (*VARIABLES, *ARM_VARIABLES)
    unknown = sorted(variables_in(query) - set(allowed_names))
    allowed = ", ".join(f"{{{{ {name} }}}}" for name in allowed_names)
    for name in unknown:
        reader.error(node, field, f"unknown template variable {{{{ {name} }}}}"
                     f"{_suggestion(name, allowed_names)}; allowed: {allowed}")
    if not unknown and not set(ARM_VARIABLES) & variables_in(query):
        reader.error(node, field, "must name the arm with {{ cluster }} or {{ version }}: "
                     "the same query runs for the canary and for the baseline")
        return None
    return None if unknown else query


def _query(reader: _Reader, node: Node, field: str) -> str | None:
    query = reader.string(node, field)
    if query is None:
        return None
    unknown = sorted(unknown_variables(query))
    allowed = ", ".join(f"{{{{ {name} }}}}" for name in VARIABLES)
    for name in unknown:
        reader.error(node, field, f"unknown template variable {{{{ {name} }}}}"
                     f"{_suggestion(name, VARIABLES)}; allowed: {allowed}")
    return None if unknown else query


def _threshold(reader: _Reader, node: Node, field: str) -> ThresholdRange | None:
    keys = reader.mapping(node, field, allowed=("min", "max"))
    if keys is None:
        return None
    low = reader.number(keys["min"], f"{field}.min") if "min" in keys else None
    high = reader.number(keys["max"], f"{field}.max") if "max" in keys else None
    if not keys:
        reader.error(node, field, "needs min, max or both")
        return None
    if ("min" in keys and low is None) or ("max" in keys and high is None):
        return None
    if low is not None and high is not None and low > high:
        reader.error(node, field, f"min ({low:g}) is above max ({high:g})")
        return None
    return ThresholdRange(min=low, max=high)


def _match(reader: _Reader, node: Node, field: str) -> tuple[HeaderMatchSpec, ...]:
    items = reader.sequence(node, field, what="header matches, e.g. [{headers: {x-canary: always}}]")
    matches: list[HeaderMatchSpec] = []
    for index, item in enumerate(items or []):
        where = f"{field}[{index}]"
        keys = reader.mapping(item, where, allowed=("headers",), required=("headers",))
        if not keys or "headers" not in keys:
            continue
        headers = keys["headers"]
        if not isinstance(headers, MappingNode) or not headers.value:
            reader.error(headers, f"{where}.headers",
                         "must map header names to values, e.g. {x-canary: always}")
            continue
        pairs = []
        for name_node, value_node in headers.value:
            name = reader.string(name_node, f"{where}.headers")
            value = reader.string(value_node, f"{where}.headers.{name or '?'}")
            if name is not None and value is not None:
                pairs.append((name, value))
        if len(pairs) == len(headers.value):
            matches.append(HeaderMatchSpec(tuple(pairs)))
    return tuple(matches)


def policy_document(policy: Policy) -> dict[str, Any]:
    """The policy as JSON, in the vocabulary of the YAML it came from, plus its source (pure)."""
    analysis = policy.analysis
    return {
        "name": policy.name,
        "source": policy.source,
        "models": list(policy.models),
        "steps": [_step_document(step) for step in policy.steps],
        "analysis": {
            "interval": prometheus_duration(analysis.interval_seconds),
            "window": prometheus_duration(analysis.window_seconds),
            **{key: getattr(analysis, attribute) for key, attribute in _ANALYSIS_LIMITS.items()},
            "metrics": [_check_document(check) for check in analysis.metrics],
            "baselineUnhealthy": analysis.baseline_unhealthy.value,
        },
        "match": [{"headers": dict(spec.headers)} for spec in policy.match],
        "mirror": {"percent": policy.mirror_percent},
        "alerts": {"rollback": policy.rollback_on_alert},
    }


def _check_document(check: MetricCheck) -> dict[str, Any]:
    document: dict[str, Any] = {"name": check.name}
    if check.template is not None:
        document["template"] = check.template
    if check.query is not None:
        document["query"] = check.query
    if check.threshold != ThresholdRange():  # a comparison's SLO is optional
        document["thresholdRange"] = _threshold_document(check.threshold)
    comparison = check.compare
    if comparison is not None:
        document |= {
            "compare": "baseline",
            "method": comparison.method.value,
            "alpha": comparison.alpha,
            "tolerance": comparison.tolerance.describe(),
        }
        if comparison.slower_than_ms is not None:
            document["slowerThan"] = f"{comparison.slower_than_ms:g}ms"
        if comparison.events_query is not None and comparison.requests_query is not None:
            document |= {"events": comparison.events_query, "requests": comparison.requests_query}
    return document


def _threshold_document(threshold: ThresholdRange) -> dict[str, float]:
    bounds = (("min", threshold.min), ("max", threshold.max))
    return {key: bound for key, bound in bounds if bound is not None}


def _step_document(step: Step) -> dict[str, Any]:
    if isinstance(step, SetWeight):
        return {"setWeight": step.weight}
    if step.duration_seconds is None:
        return {"pause": {}}
    return {"pause": {"duration": prometheus_duration(step.duration_seconds)}}
