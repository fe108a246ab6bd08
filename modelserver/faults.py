"""Injected faults (error rate, added latency, reported quality) and the decisions they drive (pure).

Faults exist so a demo or a test can make one arm of a rollout bad on purpose and
watch the control plane react. The random draw is passed in, so every decision is
a table test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

# Milliseconds; a minute is far past any sane Envoy route timeout, so more is a typo.
MAX_LATENCY_MS = 60_000.0


class FaultValueError(ValueError):
    """A fault setting is out of range or of the wrong type; the message names the field."""


@dataclass(frozen=True)
class Faults:
    # Fraction 0..1 of predict/infer requests answered 500.
    error_rate: float = 0.0
    # Milliseconds added before every predict/infer answer, failed or not.
    latency_ms: float = 0.0
    # The value of aegis_model_quality{metric="top_k_recall"}; 0.95 passes the default policy's 0.9.
    quality: float = 0.95

    def as_document(self) -> dict[str, float]:
        return {"error_rate": self.error_rate, "latency_ms": self.latency_ms, "quality": self.quality}


_RANGES: dict[str, tuple[float, float]] = {
    "error_rate": (0.0, 1.0),
    "latency_ms": (0.0, MAX_LATENCY_MS),
    "quality": (0.0, 1.0),
}


def checked_faults(error_rate: float, latency_ms: float, quality: float) -> Faults:
    """Faults with every value checked against its range (flags at start go through here too)."""
    return updated_faults(Faults(), {"error_rate": error_rate, "latency_ms": latency_ms, "quality": quality})


def updated_faults(current: Faults, changes: Mapping[str, Any]) -> Faults:
    """`current` with the given fields replaced; unknown fields and bad values are refused whole."""
    unknown = sorted(set(changes) - set(_RANGES))
    if unknown:
        raise FaultValueError(f"unknown fault fields {unknown}: use error_rate, latency_ms, quality")
    values: dict[str, float] = {}
    for name, value in changes.items():
        low, high = _RANGES[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise FaultValueError(f"{name} must be a number from {low:g} to {high:g}")
        if not low <= value <= high:
            raise FaultValueError(f"{name} is {value:g}; it must be from {low:g} to {high:g}")
        values[name] = float(value)
    return replace(current, **values)


def injects_error(faults: Faults, draw: float) -> bool:
    """Whether this request fails, for a uniform draw in [0, 1): rate 0 never, rate 1 always."""
    return draw < faults.error_rate
