"""Envoy xDS: pure config builders and snapshots, the REST discovery server, config validation."""
