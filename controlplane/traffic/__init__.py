"""Traffic: model-server endpoints, weights per model, and publishing them to Envoy."""
