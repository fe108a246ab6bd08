"""The model server's Prometheus series, in a CollectorRegistry of its own (one per server, per test).

Names and labels are what the rollout policies query: requests and latency per
(model, version) as the canary analysis sees them from the server's side, and the
quality gauge that a `top-k-recall` metric reads.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds: from 1 ms (an in-memory model) to 5 s (past any sane route timeout).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
QUALITY_METRIC = "top_k_recall"


class ModelMetrics:
    def __init__(self, model_name: str, version: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.model_name = model_name
        self.version = version
        self._requests = Counter(
            "aegis_model_requests_total", "Predict and infer requests answered, by HTTP status code",
            ["model", "version", "code"], registry=self.registry,
        )
        self._duration = Histogram(
            "aegis_model_request_duration_seconds", "Time to answer a predict or infer request",
            ["model", "version"], buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self._quality = Gauge(
            "aegis_model_quality", "Model quality as reported by the server (set through its faults)",
            ["model", "version", "metric"], registry=self.registry,
        )

    def observe_request(self, status: int, seconds: float) -> None:
        self._requests.labels(self.model_name, self.version, str(status)).inc()
        self._duration.labels(self.model_name, self.version).observe(seconds)

    def set_quality(self, value: float) -> None:
        self._quality.labels(self.model_name, self.version, QUALITY_METRIC).set(value)
