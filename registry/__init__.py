"""Aegis model registry: signed, immutable model versions moved through stages."""
