"""Fixtures of the provider tests."""

from .signal_log import signals  # noqa: F401  (fixture)
