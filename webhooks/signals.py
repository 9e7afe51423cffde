"""Signals of the webhooks app. Receivers get these keyword arguments.

Public contract (sender is ``WebhookEvent``):
- ``webhook_received(event)``: a new event was stored (not sent for duplicates).
- ``webhook_processed(event)``: an event ended ``processed``.
- ``webhook_failed(event, error)``: an event ended ``failed``; ``error`` is the exception.

Operational (used by metrics; sender is ``None``):
- ``webhook_rejected(endpoint, reason)``: a request was refused; ``reason`` is the error code of
  the response (``invalid_signature``, ``malformed_payload``, ``payload_too_large``,
  ``unknown_endpoint``, ``unavailable``).
- ``webhook_duplicate(endpoint, event_id, replay_of)``: a delivery of an already stored event.
  ``event_id`` is the id the delivery gave. ``replay_of`` is None for a delivery of a stored id;
  for a replay, the same signed content as a stored event under another id (schemes whose id is
  not signed: GitHub, ``hmac`` with an id from a header), it is the stored event's id.
- ``webhook_ignored(event)`` (sender ``WebhookEvent``): an event ended ``ignored``.

Per handler run (sender is ``HandlerRun``), sent when the run's transaction commits:
- ``webhook_run_finished(run, event, error)``: a handler's run recorded an outcome.
  ``run.status`` is ``processed``, ``ignored`` (the handler raised ``Ignore``), ``skipped``,
  ``failed`` (for good), or ``processing`` (it failed and a retry is due at
  ``run.next_attempt_at``); ``error`` is the handler's exception, or None. ``run.duration`` is
  how long the handler took. The event's own signal follows when the event reaches an end.

``webhook_received`` (sent once per new event, on the receive path) keeps its receivers per
sender (Django's ``use_caching``, as its model signals do): its sender is always a class.
"""

import logging
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger("webhooks")

webhook_received = Signal(use_caching=True)
webhook_processed = Signal()
webhook_failed = Signal()
webhook_ignored = Signal()
webhook_rejected = Signal()
webhook_duplicate = Signal()
webhook_run_finished = Signal()


def send_logged(signal: Signal, sender: object, **kwargs: object) -> None:
    """Send ``signal`` robustly: a receiver that raises is logged (with its traceback) and never
    changes what the app does (the event is stored, the refusal stands, the outcome is kept).
    Nothing is sent when no receiver listens to ``sender`` (``send_robust`` costs several times
    that check even then)."""
    if not signal.has_listeners(sender):
        return
    _log_failures(signal.send_robust(sender=sender, **kwargs))


async def asend_logged(signal: Signal, sender: object, **kwargs: object) -> None:
    """``send_logged`` from async code (the async receive view): Django's ``asend_robust``
    awaits async receivers and runs sync ones in a thread, never on the event loop."""
    if not signal.has_listeners(sender):
        return
    _log_failures(await signal.asend_robust(sender=sender, **kwargs))


def _log_failures(results: list[tuple[Any, Any]]) -> None:
    for receiver, result in results:
        if isinstance(result, Exception):
            logger.error(
                "webhooks: signal receiver %r raised %s",
                receiver,
                type(result).__name__,
                exc_info=result,
            )
