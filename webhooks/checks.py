"""System checks of the webhooks app (stub)."""
