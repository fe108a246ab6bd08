"""The reference model server: downloads a signed artifact, verifies it, serves KServe predictions.

It exists so that rollouts can be shown and tested end to end with a server whose
behaviour (errors, latency, a quality gauge) can be steered at run time. Start it
with `aegis model-server` or `modelserver.server.start_model_server`.
"""
