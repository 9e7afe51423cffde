"""The dispatcher (``webhooks.dispatch``): new events' processing tasks published off the request
path, batched, fork-safe, flushed on demand and at exit; the batch task's per-event semantics;
the crash window (a web process killed with keys in memory) closed by the sweeper.

Messages are read back from the real Redis broker; the worker tests use a real Celery worker and
the crash tests a real gunicorn.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from tests import postgres
from tests.celery_worker import purge_broker, queued_messages
from tests.forking import in_a_child
from tests.servers import GunicornServer, wait_until
from tests.webhooks.factories import WebhookEventFactory
from tests.webhooks.through_workers import reaches
from webhooks import conf, dispatch, on, processing, queueing, services
from webhooks.dispatch import Dispatcher
from webhooks.models import WebhookEvent
from webhooks.testing import build_request, send_request

Status = WebhookEvent.Status


def enqueue_batch(count: int) -> list[int]:
    with transaction.atomic():
        events = WebhookEventFactory.create_batch(count)
        for event in events:
            queueing.enqueue_on_commit(event)
    return [event.pk for event in events]


# -- batching and flush ----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@override_settings(WEBHOOKS={"DISPATCH_INTERVAL": 30})
def test_new_events_are_published_together_in_one_message():
    purge_broker()
    pks = enqueue_batch(3)
    assert dispatch.dispatcher.pending == 3  # nothing published by the committing thread
    assert queued_messages() == []
    assert dispatch.flush()  # cuts the 30 s interval short
    assert queued_messages() == [("webhooks.process_events", [pks])]
    assert dispatch.dispatcher.pending == 0


@pytest.mark.django_db(transaction=True)
@override_settings(WEBHOOKS={"DISPATCH_INTERVAL": 30, "DISPATCH_BATCH_SIZE": 2})
def test_a_batch_is_split_into_messages_of_at_most_batch_size_events():
    purge_broker()
    pks = enqueue_batch(5)
    assert dispatch.flush()
    assert queued_messages() == [
        ("webhooks.process_events", [pks[0:2]]),
        ("webhooks.process_events", [pks[2:4]]),
        ("webhooks.process_events", [pks[4:5]]),
    ]


@pytest.mark.django_db(transaction=True)
@override_settings(WEBHOOKS={"DISPATCH_INTERVAL": 0.01})
def test_without_a_flush_the_thread_publishes_after_the_interval():
    purge_broker()
    [pk] = enqueue_batch(1)
    wait_until(lambda: queued_messages(), timeout=10, interval=0.01, message="the publication")
    assert queued_messages() == [("webhooks.process_events", [[pk]])]


@pytest.mark.django_db(transaction=True)
@override_settings(WEBHOOKS={"DISPATCH_INTERVAL": None})
def test_interval_none_publishes_one_message_per_event_from_the_committing_thread():
    purge_broker()
    pks = enqueue_batch(2)
    assert dispatch.dispatcher.pending == 0
    assert queued_messages() == [("webhooks.process_event", [pk]) for pk in pks]


@pytest.mark.django_db(transaction=True)
def test_eager_celery_bypasses_the_dispatcher(handlers):
    """A user's tests with CELERY_TASK_ALWAYS_EAGER see the event processed at commit, on the
    test's own connection (a thread would use another one)."""
    from sandbox_project.celery import app

    on("stripe", "test.eager")(lambda event: None)
    app.conf.task_always_eager = True
    try:
        with transaction.atomic():
            event = WebhookEventFactory(event_type="test.eager")
            queueing.enqueue_on_commit(event)
    finally:
        app.conf.task_always_eager = False
    event.refresh_from_db()
    assert (event.status, event.attempts) == (Status.PROCESSED, 1)
    assert dispatch.dispatcher.pending == 0


@override_settings(WEBHOOKS={"DISPATCH_INTERVAL": 30})
def test_the_process_dispatcher_publishes_with_queueing_s_publisher():
    """``WebhooksConfig.ready()`` hands it ``publish_process_batch`` (``webhooks.process_events``
    tasks); the dispatcher module itself imports nothing of queueing or processing."""
    purge_broker()
    dispatch.dispatcher.submit(987_654)
    assert dispatch.flush()
    assert queued_messages() == [("webhooks.process_events", [[987_654]])]


def test_a_dispatcher_without_a_publisher_logs_and_drops_what_it_takes(caplog):
    published: list[list[int]] = []
    local = Dispatcher()
    with (
        override_settings(WEBHOOKS={"DISPATCH_INTERVAL": 0}),
        caplog.at_level(logging.ERROR, logger="webhooks.dispatch"),
    ):
        local.submit(1)
        assert local.flush(timeout=10) is True
        assert "failed to publish 1 event(s)" in caplog.text
        local.publish_with(published.append)
        local.submit(2)
        assert local.flush(timeout=10) is True
    assert published == [[2]]
    assert local.pending == 0


def test_flush_times_out_while_the_broker_hangs_and_the_keys_are_kept_until_done():
    release = threading.Event()
    published: list[list[int]] = []

    def slow_publish(batch):
        release.wait(10)
        published.append(list(batch))

    local = Dispatcher(publish=slow_publish)
    with override_settings(WEBHOOKS={"DISPATCH_INTERVAL": 0}):
        local.submit(1)
        local.submit(2)
        started = time.monotonic()
        assert local.flush(timeout=0.2) is False
        assert 0.2 <= time.monotonic() - started < 2
        assert local.pending == 2
        release.set()
        assert local.flush(timeout=10) is True
    assert sorted(pk for batch in published for pk in batch) == [1, 2]
    assert local.pending == 0


def test_a_publisher_that_raises_does_not_kill_the_thread(caplog):
    calls: list[list[int]] = []

    def broken_then_fine(batch):
        calls.append(list(batch))
        if len(calls) == 1:
            raise RuntimeError("unexpected")

    local = Dispatcher(publish=broken_then_fine)
    with override_settings(WEBHOOKS={"DISPATCH_INTERVAL": 0}), caplog.at_level("ERROR"):
        local.submit(1)
        assert local.flush()
        local.submit(2)
        assert local.flush()
    assert calls == [[1], [2]]
    assert "the dispatcher failed to publish 1 event(s)" in caplog.text


@pytest.mark.django_db(transaction=True)
@override_settings(WEBHOOKS={"DISPATCH_INTERVAL": 30})
def test_broker_down_the_keys_are_dropped_and_logged_and_the_rows_stay_received(
    broker_down, caplog
):
    pks = enqueue_batch(2)
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="webhooks"):
        assert dispatch.flush()
    assert time.monotonic() - started < 5
    [record] = [r for r in caplog.records if "could not enqueue" in r.getMessage()]
    assert f"2 event(s) (pk={pks[0]},{pks[1]})" in record.getMessage()
    assert "redis://" not in record.getMessage() and record.exc_info is None
    assert set(WebhookEvent.objects.values_list("status", "attempts")) == {(Status.RECEIVED, 0)}
    assert dispatch.dispatcher.pending == 0  # not retried from memory: the sweeper's job


# -- fork safety ----------------------------------------------------------------------------------


@override_settings(WEBHOOKS={"DISPATCH_INTERVAL": 30})
def test_a_forked_child_starts_with_an_idle_dispatcher_of_its_own(tmp_path):
    published: list[list[int]] = []
    parent = dispatch.dispatcher
    parent.publish_with(published.append)
    try:
        parent.submit(101)
        parent.submit(102)
        assert parent.pending == 2

        def child():  # it must not see (nor publish) the parent's keys
            state = {"pending": parent.pending}  # before any call that checks the pid
            parent.submit(201)  # its own thread, started lazily
            state["flushed"] = parent.flush(timeout=5)
            state["published"] = published
            return state

        assert in_a_child(child) == {"pending": 0, "flushed": True, "published": [[201]]}
        assert parent.pending == 2  # the parent's keys are still the parent's to publish
        assert parent.flush()
        assert published == [[101, 102]]
    finally:
        parent.publish_with(queueing.publish_process_batch)


@override_settings(WEBHOOKS={"DISPATCH_INTERVAL": 30})
def test_a_dispatcher_used_in_another_process_resets_itself():
    """The pid check, for a dispatcher no fork hook resets (the keys belong to the parent)."""
    published: list[list[int]] = []
    local = Dispatcher(publish=published.append)  # not registered with tether.fork
    local.submit(7)

    def child():
        state = {"flushed": local.flush(timeout=5), "pending": local.pending}
        local.submit(8)
        state["flushed_own"] = local.flush(timeout=5)
        state["published"] = published
        return state

    assert in_a_child(child) == {
        "flushed": True,  # nothing of its own to wait for: the parent's key is not its
        "pending": 0,
        "flushed_own": True,
        "published": [[8]],
    }
    assert local.pending == 1
    assert local.flush()
    assert published == [[7]]


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [("DISPATCH_INTERVAL", -0.1), ("DISPATCH_INTERVAL", "fast"), ("DISPATCH_BATCH_SIZE", 0),
     ("DISPATCH_BATCH_SIZE", 1.5), ("DISPATCH_SHUTDOWN_TIMEOUT", None),
     ("REQUEUE_RECEIVED_AFTER", -1)],
)  # fmt: skip
def test_bad_dispatch_settings_are_system_check_errors(key, value):
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    with override_settings(WEBHOOKS={key: value}), pytest.raises(SystemCheckError) as excinfo:
        call_command("check")
    assert f'webhooks.E008) WEBHOOKS["{key}"]' in str(excinfo.value)


@override_settings(
    WEBHOOKS={"DISPATCH_INTERVAL": None, "DISPATCH_BATCH_SIZE": 1,
              "DISPATCH_SHUTDOWN_TIMEOUT": 0, "REQUEUE_RECEIVED_AFTER": 0}
)  # fmt: skip
def test_good_dispatch_settings_pass_the_check():
    assert conf.processing_config_problems() == []


# -- the sweeper's window for received events -----------------------------------------------------


@pytest.mark.django_db
@override_settings(WEBHOOKS={"STUCK_AFTER": 600, "REQUEUE_RECEIVED_AFTER": 60})
def test_received_events_are_swept_after_requeue_received_after_processing_after_stuck_after():
    now = timezone.now()
    received_old = WebhookEventFactory(received_at=now - timedelta(seconds=90))
    WebhookEventFactory(received_at=now - timedelta(seconds=30))
    WebhookEventFactory(  # a replay 30 s ago (next_attempt_at = replay time): its task is out
        received_at=now - timedelta(seconds=900), next_attempt_at=now - timedelta(seconds=30)
    )
    WebhookEventFactory(
        status=Status.PROCESSING, received_at=now - timedelta(seconds=900),
        last_attempt_at=now - timedelta(seconds=90),
    )  # fmt: skip
    processing_old = WebhookEventFactory(
        status=Status.PROCESSING, received_at=now - timedelta(seconds=900),
        last_attempt_at=now - timedelta(seconds=700),
    )  # fmt: skip
    stuck = set(services.stuck_events().values_list("pk", flat=True))
    assert stuck == {received_old.pk, processing_old.pk}
    # An explicit threshold applies to both, as the command's --older-than always did.
    assert services.stuck_events(older_than=20).count() == 5


# -- the batch task -----------------------------------------------------------------------------


@pytest.mark.django_db
@override_settings(WEBHOOKS={"MAX_ATTEMPTS": 2, "RETRY_BASE_DELAY": 0, "RETRY_MAX_DELAY": 0})
def test_the_batch_task_gives_each_event_its_own_attempt_and_outcome(handlers):
    """In-process (eager): per-event outcomes and attempts, as process_event gives them."""
    from webhooks.exceptions import PermanentFailure
    from webhooks.tasks import process_events

    calls: list[str] = []

    @on("stripe", "test.ok")
    def ok(event):
        calls.append(event.event_id)

    @on("stripe", "test.permanent")
    def permanent(event):
        raise PermanentFailure("no")

    @on("stripe", "test.boom")
    def boom(event):
        raise RuntimeError("boom")

    ok_event = WebhookEventFactory(event_type="test.ok")
    permanent_event = WebhookEventFactory(event_type="test.permanent")
    boom_event = WebhookEventFactory(event_type="test.boom")
    ignored_event = WebhookEventFactory(event_type="test.nobody")
    finished = WebhookEventFactory(event_type="test.ok", status=Status.PROCESSED)
    pks = [ok_event.pk, permanent_event.pk, boom_event.pk, ignored_event.pk, finished.pk, 10**12]
    purge_broker()
    statuses = process_events.apply(args=(pks,)).get()
    assert statuses == [Status.PROCESSED, Status.FAILED, Status.PROCESSING, Status.IGNORED,
                        None, None]  # fmt: skip
    assert calls == [ok_event.event_id]
    # boom's attempt 1 failed: its own retry is published, as webhooks.process_event.
    boom_event.refresh_from_db()
    assert (boom_event.status, boom_event.attempts) == (Status.PROCESSING, 1)
    assert boom_event.last_error.splitlines()[0] == "RuntimeError: boom"
    assert boom_event.next_attempt_at
    assert queued_messages() == [("webhooks.process_event", [boom_event.pk])]
    finished.refresh_from_db()
    assert finished.attempts == 0  # a finished event is skipped, not counted


@postgres.DURABILITY
@pytest.mark.django_db(transaction=True)
def test_the_claim_relaxes_only_its_own_commit(handlers):
    on("stripe", "test.ok")(lambda event: None)
    event = WebhookEventFactory(event_type="test.ok")
    assert not connection.in_atomic_block
    assert processing.process_event(event.pk) == Status.PROCESSED
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"  # set_config(..., is_local) ended with the claim
    event.refresh_from_db()
    assert (event.status, event.attempts) == (Status.PROCESSED, 1)


# -- with a real worker and a real web server --------------------------------------------------


@pytest.mark.worker
@pytest.mark.slow
def test_a_batch_through_the_worker_each_event_with_its_own_retries(celery_worker, runs):
    with transaction.atomic():
        events = [
            WebhookEventFactory(event_type="test.record"),
            WebhookEventFactory(event_type="test.flaky", payload={"fail_times": 1}),
            WebhookEventFactory(event_type="test.permanent"),
        ]
        for event in events:
            queueing.enqueue_on_commit(event)
    assert dispatch.flush()
    record, flaky, permanent = (reaches(e, Status.PROCESSED, Status.FAILED) for e in events)
    assert (record.status, record.attempts) == (Status.PROCESSED, 1)
    assert (flaky.status, flaky.attempts) == (Status.PROCESSED, 2)  # retried on its own
    assert flaky.last_error.splitlines()[0] == "RuntimeError: flaky failure on attempt 1"
    assert (permanent.status, permanent.attempts) == (Status.FAILED, 1)
    assert [a for _, a, _ in runs.runs(flaky.event_id)] == [2]


@pytest.mark.worker
@pytest.mark.slow
def test_a_pool_process_killed_mid_batch_loses_nothing(worker_factory, runs, tmp_path):
    worker = worker_factory(pool="prefork", concurrency=1)
    marker = tmp_path / "started"
    with transaction.atomic():
        blocked = WebhookEventFactory(
            event_type="test.block", payload={"marker": str(marker), "sleep": 120}
        )
        after = WebhookEventFactory(event_type="test.record")
        queueing.enqueue_on_commit(blocked)
        queueing.enqueue_on_commit(after)
    assert dispatch.flush()
    wait_until(marker.exists, timeout=30, message="the handler to start")
    worker.kill_child()
    # The batch message is redelivered: the killed attempt was counted, the next event runs once.
    assert reaches(blocked, Status.PROCESSED).attempts == 2
    assert reaches(after, Status.PROCESSED).attempts == 1
    assert [a for _, a, _ in runs.runs(blocked.event_id)] == [2]
    assert len(runs.runs(after.event_id)) == 1


def _gunicorn_worker_pid(server: GunicornServer) -> int:
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_web_process_killed_before_publishing_loses_nothing_the_sweeper_enqueues_it(
    celery_worker, runs
):
    """The crash window: a 200 was answered (the row committed), then the web process died with
    the key still in its dispatcher's memory. The row is ``received``; the sweeper enqueues it."""
    webhooks = {"DISPATCH_INTERVAL": 3600}  # the dispatcher would wait an hour
    with GunicornServer(webhooks=webhooks) as server:
        request = build_request("stripe", event_type="test.record")
        import httpx

        with httpx.Client(base_url=server.url, timeout=30) as http:
            response = send_request(http, request)
        assert response.json() == {"status": "accepted", "event_id": request.event_id}
        os.kill(_gunicorn_worker_pid(server), signal.SIGKILL)
    event = WebhookEvent.objects.get(event_id=request.event_id)
    time.sleep(0.5)  # the worker is idle: nothing was published for it
    event.refresh_from_db()
    assert (event.status, event.attempts) == (Status.RECEIVED, 0)

    with override_settings(WEBHOOKS={"REQUEUE_RECEIVED_AFTER": 0}):
        out = StringIO()
        call_command("requeue_stuck_webhooks", stdout=out)
    assert out.getvalue().strip() == "Requeued 1 stuck event(s)."
    done = reaches(event, Status.PROCESSED)
    assert done.attempts == 1 and len(runs.runs(event.event_id)) == 1


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_web_process_stopped_gracefully_publishes_what_it_holds(celery_worker, runs):
    with GunicornServer(webhooks={"DISPATCH_INTERVAL": 3600}) as server:
        request = build_request("stripe", event_type="test.record")
        import httpx

        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert send_request(http, request).json()["status"] == "accepted"
        event = WebhookEvent.objects.get(event_id=request.event_id)
        assert event.status == Status.RECEIVED
    # Leaving the block stops gunicorn (SIGTERM): the worker's exit flushes its dispatcher.
    assert reaches(event, Status.PROCESSED).attempts == 1


def _statements(captured) -> list[str]:
    return [" ".join(q["sql"].split()[:2]) for q in captured.captured_queries]


@postgres.STATEMENTS
@pytest.mark.django_db(transaction=True)
def test_a_successful_attempt_is_three_statements_besides_begin_and_commit(handlers):
    """The hot path: the one-statement claim, the row lock, the outcome (no savepoint); a failing
    handler's outcome costs one more short transaction, after its writes were rolled back."""
    from django.test.utils import CaptureQueriesContext

    on("stripe", "test.ok")(lambda event: None)
    event = WebhookEventFactory(event_type="test.ok")
    with CaptureQueriesContext(connection) as captured:
        assert processing.process_event(event.pk) == Status.PROCESSED
    # The outcome's UPDATE carries the attempt's INSERT as a CTE: still one statement.
    assert _statements(captured) == [
        "WITH relax", "BEGIN", 'SELECT "id",', "WITH attempt", "COMMIT"
    ]  # fmt: skip
    assert event.processing_attempts.get().outcome == "processed"

    @on("stripe", "test.boom")
    def boom(event):
        WebhookEvent.objects.filter(pk=event.pk).update(event_type="changed by the handler")
        raise RuntimeError("boom")

    failing = WebhookEventFactory(event_type="test.boom")
    with CaptureQueriesContext(connection) as captured:
        assert processing.process_event(failing.pk) == Status.PROCESSING
    assert not [sql for sql in _statements(captured) if "SAVEPOINT" in sql]
    failing.refresh_from_db()
    assert failing.event_type == "test.boom"  # the handler's write was rolled back
    assert (failing.status, failing.attempts) == (Status.PROCESSING, 1)
    assert failing.last_error.splitlines()[0] == "RuntimeError: boom"
    assert failing.next_attempt_at is not None
