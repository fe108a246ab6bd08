"""Metric sources for canary analysis: PromQL templates and the Prometheus provider."""
