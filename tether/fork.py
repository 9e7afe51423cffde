"""What a forked child must reset, in one place: the only ``os.register_at_fork`` of the library.

A process forked from one that already ran (gunicorn workers with ``--preload``, Celery prefork
children) inherits its parent's memory: threads that do not exist in the child, locks another
thread held, sockets the parent still uses. Each module that keeps such state registers a
callback with ``after_fork`` (the webhooks dispatcher, the integrations HTTP pools and Stripe
clients); the child runs them all, in registration order, before it does anything else. One
failing is logged and the others still run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

__all__ = ["after_fork", "cancel_after_fork"]

logger = logging.getLogger("tether.fork")

_callbacks: list[Callable[[], None]] = []


def after_fork(callback: Callable[[], None]) -> None:
    """Run ``callback`` in every child forked from now on (once, however often registered)."""
    if callback not in _callbacks:
        _callbacks.append(callback)


def cancel_after_fork(callback: Callable[[], None]) -> None:
    """Stop running ``callback`` in children forked from now on (nothing if it is not
    registered): for state that no longer needs resetting, and for tests that register their
    own."""
    if callback in _callbacks:
        _callbacks.remove(callback)


def _run_in_child() -> None:
    for callback in list(_callbacks):
        try:
            callback()
        except Exception:
            logger.exception("tether: resetting %r after fork failed", callback)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_run_in_child)
