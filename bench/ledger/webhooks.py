"""The soak's handler, found by the webhooks app's autodiscovery (``bench.ledger`` is installed
only by ``bench.chaos_settings``)."""

from __future__ import annotations

import time
import zlib

from django.db import IntegrityError, transaction

from webhooks import on

from . import ENDPOINT, journal
from .models import Effect

#: Share of events (in %) whose handler fails on its first ``PLANNED_FAILURES`` attempts.
PLANNED_FAILURE_PERCENT = 10
PLANNED_FAILURES = 2
#: The handler's own work, so that a SIGKILL of a worker often lands in the middle of one.
HANDLER_SECONDS = 0.002


class PlannedFailure(Exception):
    """A failure the soak plans (the vendor's data is fine; a dependency was down)."""


def planned_failures(event_id: str) -> int:
    """How many first attempts of this event fail on purpose: decided by the id alone."""
    if zlib.crc32(event_id.encode()) % 100 < PLANNED_FAILURE_PERCENT:
        return PLANNED_FAILURES
    return 0


@on(ENDPOINT, "*")
def record_effect(event) -> None:
    """Journal the invocation, fail if planned, then record the effect once.

    The effect's insert runs in a savepoint of the attempt's transaction: it commits with the
    ``processed`` mark or not at all. If the event already has an effect (a second attempt ran
    after one committed: a double effect), the unique constraint refuses it; that refusal is
    journalled and the handler returns, as an idempotent handler in a real app would.
    """
    journal.record(journal.INVOKED, event.event_id, event.attempts)
    time.sleep(HANDLER_SECONDS)
    planned = planned_failures(event.event_id)
    if event.attempts <= planned:
        raise PlannedFailure(f"planned failure {event.attempts} of {planned}")
    try:
        with transaction.atomic():
            Effect.objects.create(event_id=event.event_id, attempt=event.attempts)
    except IntegrityError:
        journal.record(journal.DOUBLE, event.event_id, event.attempts)
