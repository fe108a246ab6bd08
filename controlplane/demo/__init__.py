"""`aegis demo`: a real rollout on this machine, end to end, in a few minutes."""
