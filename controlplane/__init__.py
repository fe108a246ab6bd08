"""Aegis control plane: xDS, rollouts, process wiring."""
