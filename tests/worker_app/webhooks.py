"""Handlers the worker tests drive, on the ``stripe`` endpoint under the ``test.`` types.

Each run writes a row to the plain table ``tether_handler_runs`` (see ``tests.handler_runs``)
inside the processing transaction, so a committed row is a side effect that really happened.
"""

import os
import signal
import time
from pathlib import Path

from django.core.cache import cache

from tests import ordered_objects
from tests.handler_runs import record_run, record_run_as
from webhooks import PermanentFailure, on


@on("stripe", "test.record")
def record(event):
    record_run(event)


@on("stripe", "test.flaky")
def flaky(event):
    """Fails its first ``payload["fail_times"]`` attempts, then succeeds."""
    record_run(event)
    if event.attempts <= event.payload.get("fail_times", 1):
        raise RuntimeError(f"flaky failure on attempt {event.attempts}")


@on("stripe", "test.always_fails")
def always_fails(event):
    record_run(event)
    raise RuntimeError("this handler always fails")


@on("stripe", "test.permanent")
def permanent(event):
    raise PermanentFailure("not recoverable")


@on("stripe", "test.block")
def block(event):
    """On its first attempt: records, touches ``payload["marker"]`` and sleeps (to be killed)."""
    record_run(event)
    if event.attempts == 1:
        Path(event.payload["marker"]).write_text(str(event.attempts))
        time.sleep(event.payload.get("sleep", 120))


@on("stripe", "test.slow")
def slow(event):
    record_run(event)
    time.sleep(event.payload.get("sleep", 1))


@on("stripe", "test.fail_until_fixed")
def fail_until_fixed(event):
    """Fails until the test sets the cache key ``fixed:<event id>`` (a bug fixed, then replay)."""
    record_run(event)
    if not cache.get(f"fixed:{event.event_id}"):
        raise RuntimeError("bug not fixed yet")


@on("stripe", "test.crash")
def crash(event):
    """Kills its own worker process mid-handler, every time (a poison event)."""
    record_run(event)
    os.kill(os.getpid(), signal.SIGKILL)


# Two handlers of one type, each counting its runs under its own label (``record_run_as``).
@on("stripe", "test.pair")
def pair_steady(event):
    record_run_as(event, "steady")


@on("stripe", "test.pair")
def pair_flaky(event):
    """Fails its first ``payload["fail_times"]`` attempts, then succeeds."""
    record_run_as(event, "flaky")
    if event.attempts <= event.payload.get("fail_times", 1):
        raise RuntimeError(f"flaky failure on attempt {event.attempts}")


@on("stripe", "test.pair")
def pair_added_later(event):
    """Stands for a handler deployed after the events were processed: it runs only when an
    operator backfills it (``replay_webhooks --handler``), or when the event's runs say so."""
    record_run_as(event, "later")


@on("stripe", "test.ordered.*", ordering_key="data.object.id")
def ordered(event):
    """Ordered by object id, by the event's occurred time (Stripe's ``created``): sets the
    object's state to ``data.object.version`` and records the run's span in the file
    ``data.object.spans``. Sleeps ``data.object.sleep`` seconds (0.03) so that runs last; fails
    its first attempt when ``data.object.fail_first``."""
    obj = event.payload["data"]["object"]
    started = ordered_objects.now_ns()
    failed = bool(obj.get("fail_first")) and event.attempts == 1
    try:
        time.sleep(obj.get("sleep", 0.03))
        if failed:
            raise RuntimeError(f"first attempt of {event.event_id} fails")
        ordered_objects.apply(obj["id"], obj["version"], event.event_id)
    finally:
        span = ordered_objects.Span(
            obj["id"], obj["version"], event.event_id, started, ordered_objects.now_ns(),
            os.getpid(), failed,
        )  # fmt: skip
        ordered_objects.record_span(obj["spans"], span)
