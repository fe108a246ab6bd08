"""Notifications out: rollout events to webhooks (JSON or Slack-compatible), signed, retried."""
