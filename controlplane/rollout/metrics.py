"""Rollout series for dashboards: canary weight and phase per model, verdicts, alerts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from controlplane.rollout.machine import Phase, RolloutState


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.canary_weight = Gauge(
            "aegis_rollout_canary_weight",
            "Canary weight (percent) a rollout has set, per model.",
            ["model"],
            registry=registry,
        )
        self.phase = Gauge(
            "aegis_rollout_phase",
            "1 for the phase each model's latest rollout is in.",
            ["model", "phase"],
            registry=registry,
        )
        self.step = Gauge(
            "aegis_rollout_step", "Current step (1-based) per model.", ["model"], registry=registry
        )
        self.verdicts = Counter(
            "aegis_analysis_verdicts",
            "Analysis verdicts per model and metric (pass, fail, no_data, error).",
            ["model", "metric", "verdict"],
            registry=registry,
        )
        self.policy_errors = Gauge(
            "aegis_policy_errors",
            "Errors in the policy files as they are now (their last good version stays).",
            registry=registry,
        )
        self.policies_loaded = Gauge("aegis_policies_loaded", "Policies in force.", registry=registry)
        self.alerts = Counter(
            "aegis_alerts_received",
            "Alertmanager alerts received, by status and what Aegis did.",
            ["status", "action"],
            registry=registry,
        )

    def observe_state(self, state: RolloutState) -> None:
        self.canary_weight.labels(state.model_name).set(state.canary_weight)
        self.step.labels(state.model_name).set(state.step_index + 1)
        for phase in Phase:
            self.phase.labels(state.model_name, phase.value).set(1 if state.phase is phase else 0)
