"""pytest plugin: each test starts and ends with a clean process-local state.

Installed with django-tether (the ``pytest11`` entry point ``tether``), so a project's suite gets
it without a line of configuration. Its autouse fixture forgets, before and after each test,
what this process keeps between calls and what a test's rolled-back database would leave
stale: with ``integrations`` installed, ``integrations.testing.reset_local_state()`` (circuit
breaker snapshots and successes not yet written, pooled HTTP connections); with ``webhooks``,
the health view's last broker probe and the databases on which a prepared statement vanished
(``webhooks.storage.prepare_again()``). Settings-derived caches need nothing here: they are
emptied by the settings objects' reload (``override_settings``, pytest-django's ``settings``).

It does nothing in a session without Django, or before Django is set up, and touches only the
apps that are installed (``django.apps.apps``, read at each test). Turn it off with
``-p no:tether``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest


def local_state_resets() -> list[Callable[[], None]]:
    """What to call around a test: one reset per installed app that keeps local state."""
    if "django" not in sys.modules:  # a session that never imported Django
        return []
    from django.apps import apps

    if not apps.ready:
        return []
    resets: list[Callable[[], None]] = []
    if apps.is_installed("integrations"):
        from integrations.testing import reset_local_state

        resets.append(reset_local_state)
    if apps.is_installed("webhooks"):
        from webhooks.health import broker_probe
        from webhooks.storage import prepare_again

        resets.extend([broker_probe.reset, prepare_again])
    return resets


@pytest.fixture(autouse=True)
def _tether_local_state() -> Iterator[None]:
    """Forget django-tether's process-local state before and after each test."""
    for reset in local_state_resets():
        reset()
    yield
    for reset in local_state_resets():
        reset()
