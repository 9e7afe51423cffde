"""Publishing processing tasks off the request path: one dispatcher per process.

The stored row is the outbox: once the receive INSERT has committed, the event is safe, and the
message that starts its processing is only a wake-up call. Publishing one Celery message per
event from the request costs more CPU than the rest of the request (kombu builds a Redis client
per publish), so ``webhooks.queueing.enqueue_on_commit`` hands the event's primary key to this
process's ``Dispatcher`` instead. A daemon thread gathers the keys for ``DISPATCH_INTERVAL``
seconds and hands them to its publisher: for the process's ``dispatcher``,
``webhooks.queueing.publish_process_batch`` (given by ``WebhooksConfig.ready()``), which sends
``webhooks.process_events`` tasks of at most ``DISPATCH_BATCH_SIZE`` keys each, all in one
connection checkout. The worker processes every event of such a message with the same
per-event semantics as ``webhooks.process_event``. This module knows nothing of Celery or of
processing.

What can be lost is the wake-up call, never the event:

- the broker refuses or times out: the keys are logged (pk and exception type only) and
  dropped; their rows stay ``received`` and the sweeper (``requeue_stuck``) enqueues them once
  they are ``REQUEUE_RECEIVED_AFTER`` seconds old;
- the process dies with keys in memory (SIGKILL, OOM): the same, through the sweeper. A normal
  exit (gunicorn's graceful stop or a worker recycled by ``max_requests``) flushes first
  (``atexit``, bounded by ``DISPATCH_SHUTDOWN_TIMEOUT``).

The thread starts with the first key submitted in a process, so a forked child (gunicorn and
Celery prefork workers) never inherits the parent's thread, lock or pending keys: ``fork()``
resets the dispatcher in the child (``tether.fork.after_fork``), and ``submit`` also checks the
pid.

Tests and scripts that need the messages published *now* call ``flush()`` (it waits for
everything submitted before the call, and returns False on timeout). Eager Celery
(``task_always_eager``) and ``DISPATCH_INTERVAL = None`` bypass the dispatcher: the task is
published (or run) in the committing thread, one message per event.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable, Sequence

from django.db import close_old_connections

from tether.fork import after_fork

from .conf import processing_setting

logger = logging.getLogger(__name__)

Publisher = Callable[[Sequence[int]], object]


class Dispatcher:
    """Collects event primary keys and hands them to ``publish`` from a background thread.

    ``publish`` may be given later (``publish_with``); until it is, what the thread takes is
    logged and dropped (the rows are safe: the sweeper enqueues them)."""

    def __init__(self, publish: Publisher | None = None) -> None:
        self._publish = publish
        self._reset()

    def publish_with(self, publish: Publisher) -> None:
        """Hand gathered keys to ``publish`` from now on."""
        self._publish = publish

    def _reset(self) -> None:
        """A fresh, idle state for this process (also run in a forked child)."""
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: list[int] = []
        self._submitted = 0  # keys handed in so far
        self._done = 0  # keys whose publication was attempted (sent, or logged and dropped)
        self._hurry = False  # a flush is waiting: publish without waiting for the interval
        self._thread: threading.Thread | None = None

    # -- the request side ----------------------------------------------------------------------

    def submit(self, event_pk: int) -> None:
        """Queue one event for publication; returns at once (no I/O)."""
        if self._pid != os.getpid():
            self._reset()
        with self._lock:
            self._pending.append(event_pk)
            self._submitted += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="webhooks-dispatcher", daemon=True
                )
                self._thread.start()
            elif len(self._pending) == 1:
                self._changed.notify_all()

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every key submitted before this call has been published (or refused by
        the broker, which is logged). False if ``timeout`` passed first."""
        if self._pid != os.getpid():
            self._reset()
            return True
        with self._lock:
            target = self._submitted
            if self._done >= target:
                return True
            self._hurry = True
            self._changed.notify_all()
            return self._changed.wait_for(lambda: self._done >= target, timeout)

    @property
    def pending(self) -> int:
        """Keys submitted and not yet published (for tests and diagnostics)."""
        with self._lock:
            return self._submitted - self._done

    # -- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                self._changed.wait_for(lambda: bool(self._pending))
            interval = _interval()
            with self._lock:
                if interval and not self._hurry:
                    # Gather what arrives meanwhile; a flush() cuts the wait short.
                    self._changed.wait_for(lambda: self._hurry, interval)
                batch, self._pending = self._pending, []
            try:
                self._publish_batch(batch)
            finally:
                with self._lock:
                    self._done += len(batch)
                    if self._done >= self._submitted:
                        self._hurry = False
                    self._changed.notify_all()

    def _publish_batch(self, batch: list[int]) -> None:
        try:
            if self._publish is None:
                raise RuntimeError("the dispatcher has no publisher")
            self._publish(batch)
        except Exception:  # never let the thread die: the rows are safe, the sweeper has them
            logger.exception("webhooks: the dispatcher failed to publish %s event(s)", len(batch))
        finally:
            # A publisher may use this thread's own database connection (Django Tasks' database
            # backend inserts its tasks): each batch is treated like a request, so a broken or
            # obsolete connection (CONN_MAX_AGE, CONN_HEALTH_CHECKS) is not kept.
            close_old_connections()


def _interval() -> float:
    try:
        return float(processing_setting("DISPATCH_INTERVAL") or 0)
    except Exception:  # a bad setting is reported by the system check; publish at once
        return 0.0


#: This process's dispatcher; ``WebhooksConfig.ready()`` gives it its publisher.
dispatcher = Dispatcher()
after_fork(dispatcher._reset)


def flush(timeout: float | None = 10.0) -> bool:
    """Publish everything this process has queued; see ``Dispatcher.flush``."""
    return dispatcher.flush(timeout)


def _flush_at_exit() -> None:
    if dispatcher.pending:
        try:
            timeout = float(processing_setting("DISPATCH_SHUTDOWN_TIMEOUT"))
        except Exception:
            timeout = 5.0
        dispatcher.flush(timeout)


atexit.register(_flush_at_exit)
