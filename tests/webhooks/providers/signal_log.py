"""Fixtures of the provider tests (also imported by tests/webhooks/test_*.py modules of H1)."""

from __future__ import annotations

from typing import Any

import pytest

from webhooks.signals import (
    webhook_duplicate,
    webhook_received,
    webhook_rejected,
)


class SignalLog:
    """Records the sends of some signals (real receivers, disconnected after the test)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any]]] = []

    def record(self, signal: Any, kwargs: dict[str, Any]) -> None:
        kwargs.pop("signal", None)
        self.calls.append((signal, kwargs))

    def of(self, signal: Any) -> list[dict[str, Any]]:
        return [kwargs for sent, kwargs in self.calls if sent is signal]


@pytest.fixture
def signals():
    log = SignalLog()
    receivers = {}
    for signal in (webhook_received, webhook_rejected, webhook_duplicate):

        def receiver(sender, _signal=signal, **kwargs):
            log.record(_signal, kwargs)

        receivers[signal] = receiver
        signal.connect(receiver, weak=False)
    yield log
    for signal, receiver in receivers.items():
        signal.disconnect(receiver)
