"""System checks of the integrations app (stub)."""
