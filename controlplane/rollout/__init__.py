"""Rollouts: policies, the pure state machine, analysis verdicts, and the runner that applies them."""
