"""Processing in this process: outcomes, retries, the transaction, signals, operator services.

Behaviour that depends on a real worker (redelivery, countdown retries, a dying worker) is in
``test_worker.py``.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone

from tests import postgres
from tests.celery_worker import purge_broker, queue_length
from tests.webhooks.factories import WebhookEventFactory
from webhooks import Ignore, PermanentFailure, conf, dispatch, on, processing, queueing, services
from webhooks.exceptions import BrokerUnavailable
from webhooks.models import HandlerRun, WebhookEvent
from webhooks.signals import (
    webhook_failed,
    webhook_ignored,
    webhook_processed,
    webhook_run_finished,
)

Status = WebhookEvent.Status


@pytest.fixture
def received_signals():
    got: list[tuple[str, WebhookEvent, dict]] = []

    def receiver(name):
        def receive(sender, event, **kwargs):
            kwargs.pop("signal", None)
            got.append((name, event, kwargs))

        return receive

    receivers = {
        webhook_processed: receiver("processed"),
        webhook_failed: receiver("failed"),
        webhook_ignored: receiver("ignored"),
    }
    for signal, fn in receivers.items():
        signal.connect(fn, weak=False)
    yield got
    for signal, fn in receivers.items():
        signal.disconnect(fn)


# -- outcomes -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_handled_event_ends_processed_with_one_attempt(handlers, on_commit, received_signals):
    seen = []
    on("stripe", "test.ok")(lambda event: seen.append(event.pk))
    event = WebhookEventFactory(event_type="test.ok")

    with on_commit(execute=True):
        assert processing.process_event(event.pk) == Status.PROCESSED

    event.refresh_from_db()
    assert seen == [event.pk]
    assert event.status == Status.PROCESSED
    assert event.attempts == 1
    assert event.last_attempt_at is not None and event.processed_at >= event.last_attempt_at
    assert event.next_attempt_at is None
    assert [(name, e.pk) for name, e, _ in received_signals] == [("processed", event.pk)]


@pytest.mark.django_db
def test_an_event_without_handler_ends_ignored(handlers, on_commit, received_signals):
    event = WebhookEventFactory(endpoint="acme", event_type="nobody.listens")
    with on_commit(execute=True):
        assert processing.process_event(event.pk) == Status.IGNORED
    event.refresh_from_db()
    assert (event.status, event.attempts) == (Status.IGNORED, 1)
    assert [name for name, _, _ in received_signals] == ["ignored"]


@pytest.mark.django_db
def test_ignore_ends_the_event_ignored_with_its_reason(handlers, on_commit, received_signals):
    @on("stripe", "test.ignore")
    def handler(event):
        raise Ignore("not for us")

    event = WebhookEventFactory(event_type="test.ignore")
    with on_commit(execute=True):
        assert processing.process_event(event.pk) == Status.IGNORED
    event.refresh_from_db()
    assert event.status == Status.IGNORED
    assert "not for us" in event.last_error
    assert event.next_attempt_at is None
    assert [name for name, _, _ in received_signals] == ["ignored"]


@pytest.mark.django_db
def test_permanent_failure_ends_failed_without_retry(handlers, on_commit, received_signals):
    @on("stripe", "test.permanent")
    def handler(event):
        raise PermanentFailure("amount mismatch")

    event = WebhookEventFactory(event_type="test.permanent")
    with on_commit(execute=True):
        assert processing.process_event(event.pk) == Status.FAILED
    event.refresh_from_db()
    assert (event.status, event.attempts) == (Status.FAILED, 1)
    first_line = event.last_error.splitlines()[0]
    assert first_line == "webhooks.exceptions.PermanentFailure: amount mismatch"
    assert event.next_attempt_at is None
    [(name, signalled, kwargs)] = received_signals
    assert name == "failed" and signalled.pk == event.pk
    assert isinstance(kwargs["error"], PermanentFailure)
    # Finished: a later delivery of the task does nothing.
    assert processing.process_event(event.pk) is None


@pytest.mark.django_db
@override_settings(WEBHOOKS={"MAX_ATTEMPTS": 3, "RETRY_BASE_DELAY": 10, "RETRY_MAX_DELAY": 15})
def test_a_failing_handler_is_retried_on_schedule_then_ends_failed(
    handlers, on_commit, received_signals
):
    calls = []

    @on("stripe", "test.boom")
    def handler(event):
        calls.append(event.attempts)
        raise RuntimeError("boom")

    event = WebhookEventFactory(event_type="test.boom")
    caps = {1: 10, 2: 15}  # min(MAX_DELAY, BASE * 2 ** (attempt - 1))
    for attempt in (1, 2):
        before = timezone.now()
        assert processing.process_event(event.pk) == Status.PROCESSING
        event.refresh_from_db()
        assert (event.status, event.attempts) == (Status.PROCESSING, attempt)
        assert event.last_error.splitlines()[0] == "RuntimeError: boom"
        assert before <= event.next_attempt_at <= timezone.now() + timedelta(seconds=caps[attempt])
        # Not due yet: an early delivery leaves it alone.
        if event.next_attempt_at > timezone.now() + timedelta(milliseconds=50):
            assert processing.process_event(event.pk) is None
        WebhookEvent.objects.filter(pk=event.pk).update(next_attempt_at=timezone.now())

    with on_commit(execute=True):
        assert processing.process_event(event.pk) == Status.FAILED
    event.refresh_from_db()
    assert (event.status, event.attempts, event.next_attempt_at) == (Status.FAILED, 3, None)
    assert event.last_error.splitlines()[0] == "RuntimeError: boom"
    assert calls == [1, 2, 3]
    assert [name for name, _, _ in received_signals] == ["failed"]
    assert isinstance(received_signals[0][2]["error"], RuntimeError)
    assert processing.process_event(event.pk) is None
    assert calls == [1, 2, 3]


@override_settings(WEBHOOKS={"RETRY_BASE_DELAY": 2, "RETRY_MAX_DELAY": 100})
def test_retry_delay_is_full_jitter_under_a_doubling_cap():
    for attempts, cap in [(1, 2), (2, 4), (3, 8), (6, 64), (7, 100), (30, 100), (500, 100)]:
        delays = [processing.retry_delay(attempts) for _ in range(400)]
        assert all(0 <= d <= cap for d in delays)
        # Full jitter: spread over the whole range, not clustered at the cap.
        assert min(delays) < cap * 0.1 and max(delays) > cap * 0.9


# -- a transaction per handler ------------------------------------------------------------------


@pytest.mark.django_db
def test_each_handler_commits_with_its_run_and_a_retry_runs_only_the_failed_one(handlers, runs):
    from tests.handler_runs import record_run_as, runs_as

    @on("stripe", "test.pair")
    def first(event):
        record_run_as(event, "first")

    @on("stripe", "test.pair")
    def second(event):
        record_run_as(event, "second")
        if event.attempts == 1:
            raise RuntimeError("second handler fails")

    event = WebhookEventFactory(event_type="test.pair")
    assert processing.process_event(event.pk) == Status.PROCESSING
    assert runs_as(event.event_id, "first") == [1]  # committed with its run
    assert runs_as(event.event_id, "second") == []  # rolled back with its failure
    states = {r.handler.rsplit(".", 1)[-1]: r for r in HandlerRun.objects.filter(event=event)}
    assert {n: (r.status, r.attempts) for n, r in states.items()} == {
        "first": ("processed", 1), "second": ("processing", 1)}  # fmt: skip
    assert states["second"].last_error.startswith("RuntimeError: second handler fails")
    event.refresh_from_db()
    assert states["second"].next_attempt_at == event.next_attempt_at is not None
    assert event.last_error.startswith("RuntimeError: second handler fails")

    WebhookEvent.objects.filter(pk=event.pk).update(next_attempt_at=timezone.now())
    assert processing.process_event(event.pk) == Status.PROCESSED
    assert runs_as(event.event_id, "first") == [1]  # not run again by the retry
    assert runs_as(event.event_id, "second") == [2]
    assert sorted(HandlerRun.objects.filter(event=event).values_list("status", "attempts")) == [
        ("processed", 1), ("processed", 2)]  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_a_later_handler_failing_for_good_leaves_the_earlier_ones_committed(handlers, runs):
    """Seen from another connection: the first handler's write and its run committed; the
    event ends failed because one of its runs did."""
    from tests.handler_runs import record_run_as, runs_as

    @on("stripe", "test.pair")
    def first(event):
        record_run_as(event, "first")

    @on("stripe", "test.pair")
    def second(event):
        raise PermanentFailure("second handler refuses")

    event = WebhookEventFactory(event_type="test.pair")
    assert processing.process_event(event.pk) == Status.FAILED
    assert runs_as(event.event_id, "first") == [1]
    event.refresh_from_db()
    assert event.status == Status.FAILED and event.processed_at is None
    assert event.last_error.startswith("webhooks.exceptions.PermanentFailure: second handler")
    assert sorted(HandlerRun.objects.filter(event=event).values_list("status", flat=True)) == [
        "failed", "processed"]  # fmt: skip


@pytest.mark.django_db
def test_the_events_status_is_derived_from_its_runs():
    R = HandlerRun.Status
    assert processing.event_status([]) == Status.IGNORED
    assert processing.event_status([R.IGNORED, R.IGNORED]) == Status.IGNORED
    assert processing.event_status([R.PROCESSED, R.IGNORED, R.SKIPPED]) == Status.PROCESSED
    assert processing.event_status([R.SKIPPED]) == Status.PROCESSED
    assert processing.event_status([R.FAILED, R.PROCESSED]) == Status.FAILED
    assert processing.event_status([R.FAILED, R.PROCESSING]) == Status.PROCESSING
    assert processing.event_status([R.PENDING, R.PROCESSED]) == Status.PROCESSING


@pytest.mark.django_db
def test_an_ignoring_handler_beside_a_processing_one_ends_the_event_processed(handlers):
    on("stripe", "test.mixed")(lambda event: None)

    @on("stripe", "test.mixed")
    def not_for_me(event):
        raise Ignore("not my kind of event")

    event = WebhookEventFactory(event_type="test.mixed")
    assert processing.process_event(event.pk) == Status.PROCESSED
    runs = HandlerRun.objects.filter(event=event).values_list("status", "last_error")
    assert sorted(runs) == [
        ("ignored", "webhooks.exceptions.Ignore: not my kind of event"),
        ("processed", ""),
    ]


@pytest.mark.django_db
def test_run_signals_are_sent_per_run_on_commit(handlers, on_commit):
    got = []

    def receive(sender, run, event, error, **kwargs):
        got.append((run.handler.rsplit(".", 1)[-1], run.status, run.attempts, type(error).__name__,
                    run.duration is not None, run.pk is not None))  # fmt: skip

    @on("stripe", "test.signals")
    def good(event):
        pass

    @on("stripe", "test.signals")
    def bad(event):
        raise RuntimeError("bad")

    webhook_run_finished.connect(receive, sender=HandlerRun, weak=False)
    try:
        event = WebhookEventFactory(event_type="test.signals")
        with on_commit(execute=True):
            processing.process_event(event.pk)
    finally:
        webhook_run_finished.disconnect(receive, sender=HandlerRun)
    assert got == [("good", "processed", 1, "NoneType", True, True),
                   ("bad", "processing", 1, "RuntimeError", True, True)]  # fmt: skip


# -- a worker that died mid-handler -------------------------------------------------------------


@pytest.mark.django_db
@override_settings(WEBHOOKS={"MAX_ATTEMPTS": 3})
def test_an_attempt_interrupted_mid_handler_still_counts(handlers, on_commit, received_signals):
    calls = []
    on("stripe", "test.poison")(lambda event: calls.append(event.attempts))
    # What a worker killed during attempt 2 leaves behind: counted, never finished.
    event = WebhookEventFactory(
        event_type="test.poison", status=Status.PROCESSING, attempts=2,
        last_attempt_at=timezone.now(),
    )  # fmt: skip
    assert processing.process_event(event.pk) == Status.PROCESSED
    assert calls == [3]

    poison = WebhookEventFactory(
        event_type="test.poison", status=Status.PROCESSING, attempts=3,
        last_attempt_at=timezone.now(), last_error="RuntimeError: earlier",
    )  # fmt: skip
    with on_commit(execute=True):
        assert processing.process_event(poison.pk) == Status.FAILED
    poison.refresh_from_db()
    assert calls == [3]  # the handlers did not run again
    assert poison.status == Status.FAILED
    assert poison.last_error.startswith("WorkerLost: attempt 3 of 3 did not finish")
    assert "RuntimeError: earlier" in poison.last_error
    assert [name for name, _, _ in received_signals] == ["failed"]


# -- concurrency ------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_concurrent_attempts_on_one_event_run_the_handlers_once(handlers, runs):
    from tests.handler_runs import record_run

    @on("stripe", "test.slow")
    def slow(event):
        record_run(event)
        time.sleep(0.5)

    event = WebhookEventFactory(event_type="test.slow")
    results: list[str | None] = []
    barrier = threading.Barrier(8)

    def attempt():
        try:
            barrier.wait()
            results.append(processing.process_event(event.pk))
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(results, key=str) == [None] * 7 + [Status.PROCESSED]
    assert len(runs.runs(event.event_id)) == 1
    event.refresh_from_db()
    assert event.status == Status.PROCESSED
    assert event.attempts >= 1


@postgres.ROW_LOCKS
@pytest.mark.django_db(transaction=True)
def test_an_event_locked_by_a_running_attempt_is_skipped(handlers):
    calls = []
    on("stripe", "test.locked")(lambda event: calls.append(1))
    event = WebhookEventFactory(event_type="test.locked")
    locked = threading.Event()
    release = threading.Event()

    def hold_lock():
        with transaction.atomic():
            WebhookEvent.objects.select_for_update().get(pk=event.pk)
            locked.set()
            release.wait(10)
        connection.close()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        started = time.monotonic()
        assert processing.process_event(event.pk) is None
        assert time.monotonic() - started < 2  # skipped, not waiting for the lock
    finally:
        release.set()
        holder.join(10)
    assert calls == []
    assert processing.process_event(event.pk) == Status.PROCESSED


# -- signals ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_failing_signal_receiver_does_not_undo_processing(handlers, on_commit):
    on("stripe", "test.ok")(lambda event: None)

    def broken(sender, event, **kwargs):
        raise RuntimeError("receiver bug")

    webhook_processed.connect(broken, weak=False)
    try:
        event = WebhookEventFactory(event_type="test.ok")
        with on_commit(execute=True):
            assert processing.process_event(event.pk) == Status.PROCESSED
    finally:
        webhook_processed.disconnect(broken)
    event.refresh_from_db()
    assert event.status == Status.PROCESSED


@pytest.mark.django_db
def test_process_event_of_a_missing_event_is_a_no_op():
    assert processing.process_event(987654321) is None


# -- enqueueing ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_enqueue_on_commit_publishes_only_after_commit():
    purge_broker()
    with transaction.atomic():
        event = WebhookEventFactory()
        queueing.enqueue_on_commit(event)
        assert dispatch.flush() and queue_length() == 0
    assert dispatch.flush()
    assert queue_length() == 1


@pytest.mark.django_db(transaction=True)
def test_enqueue_on_commit_rolled_back_publishes_nothing():
    purge_broker()
    with pytest.raises(RuntimeError), transaction.atomic():
        queueing.enqueue_on_commit(WebhookEventFactory())
        raise RuntimeError("the request failed after storing the event")
    assert dispatch.flush()
    assert queue_length() == 0


@pytest.mark.django_db(transaction=True)
def test_enqueue_with_the_broker_down_neither_raises_nor_hangs(broker_down, caplog):
    event = WebhookEventFactory()
    started = time.monotonic()
    with caplog.at_level("WARNING", logger="webhooks"):
        with transaction.atomic():
            queueing.enqueue_on_commit(event)
        assert dispatch.flush()  # the dispatcher thread tried, and gave up
    assert time.monotonic() - started < 5
    event.refresh_from_db()
    assert event.status == Status.RECEIVED
    [record] = [r for r in caplog.records if "could not enqueue" in r.getMessage()]
    assert "redis://" not in record.getMessage() and "127.0.0.1:1" not in record.getMessage()
    assert record.exc_info is None


@pytest.mark.django_db(transaction=True)
@override_settings(WEBHOOKS={"TASK_QUEUE": "webhooks-h2"})
def test_enqueue_uses_the_configured_queue():
    purge_broker()
    queueing.enqueue_on_commit(WebhookEventFactory())
    assert dispatch.flush()
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    assert client.llen("webhooks-h2") == 1
    assert client.llen("celery") == 0


# -- replay, mark ignored -----------------------------------------------------------------------


@pytest.mark.django_db
def test_replay_sets_a_failed_event_back_to_received_and_sync_processes_it(handlers):
    on("stripe", "test.ok")(lambda event: None)
    event = WebhookEventFactory(
        event_type="test.ok", status=Status.FAILED, attempts=8, last_error="RuntimeError: x",
        last_attempt_at=timezone.now(),
    )  # fmt: skip
    assert services.replay_events(WebhookEvent.objects.filter(pk=event.pk), dry_run=True) == 1
    event.refresh_from_db()
    assert (event.status, event.attempts) == (Status.FAILED, 8)

    services.replay_event(event, sync=True)
    assert (event.status, event.attempts) == (Status.PROCESSED, 1)


@pytest.mark.django_db(transaction=True)
def test_replay_enqueues_after_resetting(handlers):
    purge_broker()
    events = WebhookEventFactory.create_batch(3, status=Status.FAILED, attempts=8)
    count = services.replay_events(WebhookEvent.objects.all(), chunk_size=2)
    assert count == 3
    assert queue_length() == 3
    assert set(WebhookEvent.objects.values_list("status", "attempts")) == {(Status.RECEIVED, 0)}
    assert len(events) == 3


@pytest.mark.django_db
def test_mark_ignored(received_signals):
    failed = WebhookEventFactory(status=Status.FAILED, last_error="RuntimeError: boom")
    processed = WebhookEventFactory(status=Status.PROCESSED)
    assert services.mark_ignored(failed, reason="handled by hand") is True
    assert failed.status == Status.IGNORED and failed.last_error == "RuntimeError: boom"
    [entry] = LogEntry.objects.filter(object_id=str(failed.pk))
    assert entry.change_message == "Marked ignored via code: handled by hand"
    assert services.mark_ignored(processed) is False
    assert processed.status == Status.PROCESSED
    assert services.mark_ignored(failed) is False  # already ignored
    assert [(name, e.pk) for name, e, _ in received_signals] == [("ignored", failed.pk)]


# -- sweeper ----------------------------------------------------------------------------------


@pytest.mark.django_db
@override_settings(WEBHOOKS={"STUCK_AFTER": 600, "REQUEUE_RECEIVED_AFTER": 600})
def test_stuck_events_selection():
    now = timezone.now()
    old, recent = now - timedelta(seconds=700), now - timedelta(seconds=100)
    stuck = {
        WebhookEventFactory(received_at=old).pk,
        WebhookEventFactory(status=Status.PROCESSING, received_at=old, last_attempt_at=old).pk,
        # A retry overdue by more than the threshold (its task was lost).
        WebhookEventFactory(
            status=Status.PROCESSING, received_at=old, last_attempt_at=old,
            next_attempt_at=old,
        ).pk,
    }  # fmt: skip
    WebhookEventFactory(received_at=recent)
    WebhookEventFactory(status=Status.PROCESSING, received_at=old, last_attempt_at=recent)
    # A retry waiting for its countdown, or just replayed: left to its own task.
    WebhookEventFactory(
        status=Status.PROCESSING, received_at=old, last_attempt_at=old,
        next_attempt_at=now + timedelta(seconds=300),
    )  # fmt: skip
    WebhookEventFactory(received_at=old, next_attempt_at=recent)
    for status in (Status.PROCESSED, Status.IGNORED, Status.FAILED):
        WebhookEventFactory(status=status, received_at=old, last_attempt_at=old)

    assert set(services.stuck_events().values_list("pk", flat=True)) == stuck
    assert services.requeue_stuck(dry_run=True) == 3
    assert services.stuck_events(older_than=50).count() == 6
    with pytest.raises(ValueError):
        services.stuck_events(older_than=-1)


@pytest.mark.django_db(transaction=True)
def test_requeue_stuck_publishes_each_stuck_event():
    purge_broker()
    old = timezone.now() - timedelta(hours=1)
    WebhookEventFactory.create_batch(3, received_at=old)
    assert services.requeue_stuck(chunk_size=2) == 3
    assert queue_length() == 3


@pytest.mark.django_db(transaction=True)
def test_requeue_stuck_stops_when_the_broker_is_down(broker_down):
    old = timezone.now() - timedelta(hours=1)
    WebhookEventFactory.create_batch(3, received_at=old)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        services.requeue_stuck()
    assert time.monotonic() - started < 5  # stopped at the first refusal


# -- prune ---------------------------------------------------------------------------------------


@pytest.mark.django_db
@override_settings(WEBHOOKS={"RETENTION_DAYS": 30})
def test_prune_deletes_old_finished_events_in_batches():
    old = timezone.now() - timedelta(days=31)
    recent = timezone.now() - timedelta(days=29)
    doomed = [
        WebhookEventFactory(status=s, received_at=old).pk
        for s in (Status.PROCESSED, Status.IGNORED, Status.PROCESSED)
    ]
    kept = [
        WebhookEventFactory(status=Status.FAILED, received_at=old).pk,
        WebhookEventFactory(status=Status.RECEIVED, received_at=old).pk,
        WebhookEventFactory(status=Status.PROCESSING, received_at=old).pk,
        WebhookEventFactory(status=Status.PROCESSED, received_at=recent).pk,
    ]
    assert services.prune_events(dry_run=True) == 3
    assert WebhookEvent.objects.count() == 7
    assert services.prune_events(batch_size=2) == 3
    assert sorted(WebhookEvent.objects.values_list("pk", flat=True)) == sorted(kept)
    assert not WebhookEvent.objects.filter(pk__in=doomed).exists()
    assert services.prune_events(include_failed=True) == 1
    assert services.prune_events(older_than_days=0, include_failed=True) == 1
    with pytest.raises(ValueError):
        services.prune_events(older_than_days=-1)


# -- duplicates (dj-stripe issue 832) -------------------------------------------------------------


@pytest.mark.django_db
def test_a_duplicate_delivery_never_reruns_a_processed_event_nor_blocks_a_failed_one(
    handlers, client
):
    from webhooks.testing import post_webhook

    calls = []

    @on("stripe", "test.dup")
    def handler(event):
        calls.append(event.event_id)
        if event.payload.get("broken") and len(calls) == 1:
            raise PermanentFailure("first try refused")

    payload = {"id": "evt_dup_ok", "object": "event", "type": "test.dup",
               "created": int(time.time()), "data": {"object": {}}}  # fmt: skip
    assert post_webhook(client, "stripe", payload).json()["status"] == "accepted"
    event = WebhookEvent.objects.get(event_id="evt_dup_ok")
    assert processing.process_event(event.pk) == Status.PROCESSED
    assert post_webhook(client, "stripe", payload).json()["status"] == "duplicate"
    assert processing.process_event(event.pk) is None  # a stray task for it does nothing
    assert calls == ["evt_dup_ok"]

    calls.clear()
    broken = {**payload, "id": "evt_dup_failed", "broken": True}
    post_webhook(client, "stripe", broken)
    failed = WebhookEvent.objects.get(event_id="evt_dup_failed")
    assert processing.process_event(failed.pk) == Status.FAILED
    assert post_webhook(client, "stripe", broken).json()["status"] == "duplicate"
    failed.refresh_from_db()
    assert failed.status == Status.FAILED  # the duplicate neither finished nor hid it
    services.replay_event(failed, sync=True)
    assert failed.status == Status.PROCESSED
    assert calls == ["evt_dup_failed", "evt_dup_failed"]


@pytest.mark.django_db
def test_the_task_runs_eagerly_inside_the_callers_transaction(handlers):
    """An eager run (CELERY_TASK_ALWAYS_EAGER in a user's tests) keeps the caller's connection."""
    from webhooks.tasks import process_event as process_event_task

    on("stripe", "test.ok")(lambda event: None)
    event = WebhookEventFactory(event_type="test.ok")
    assert process_event_task.apply(args=(event.pk,)).get() == Status.PROCESSED
    event.refresh_from_db()  # the test's transaction and connection are still usable
    assert event.status == Status.PROCESSED


@pytest.mark.django_db
@override_settings(WEBHOOKS={"MAX_ATTEMPTS": 3, "RETRY_BASE_DELAY": 0, "RETRY_MAX_DELAY": 0})
def test_the_eager_task_retries_until_failed(handlers):
    calls = []

    @on("stripe", "test.boom")
    def boom(event):
        calls.append(event.attempts)
        raise RuntimeError("boom")

    event = WebhookEventFactory(event_type="test.boom")
    from webhooks.tasks import process_event as process_event_task

    process_event_task.apply(args=(event.pk,))
    event.refresh_from_db()
    assert calls == [1, 2, 3]  # Celery's retry, run eagerly, with a zero countdown
    assert (event.status, event.attempts) == (Status.FAILED, 3)


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("MAX_ATTEMPTS", 0),
        ("MAX_ATTEMPTS", 2.5),
        ("MAX_ATTEMPTS", "8"),
        ("RETRY_BASE_DELAY", -1),
        ("RETRY_MAX_DELAY", float("nan")),
        ("STUCK_AFTER", None),
        ("RETENTION_DAYS", True),
        # Bounded above: each of these ends up in a timedelta or a Celery countdown.
        ("MAX_ATTEMPTS", 1001),
        ("RETRY_MAX_DELAY", 1e300),
        ("STUCK_AFTER", float("inf")),
        ("REQUEUE_RECEIVED_AFTER", 30 * 86_400 + 1),
        ("RETENTION_DAYS", 36_501),
        ("DISPATCH_INTERVAL", 61),
        ("DISPATCH_BATCH_SIZE", 10_001),
        ("DISPATCH_SHUTDOWN_TIMEOUT", 601),
        ("TASK_QUEUE", ""),
        ("TASK_QUEUE", 3),
    ],
)
def test_a_bad_processing_setting_is_a_system_check_error_and_a_clear_exception(key, value):
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    from webhooks.exceptions import WebhookConfigurationError

    with override_settings(WEBHOOKS={key: value}):
        with pytest.raises(SystemCheckError) as excinfo:
            call_command("check")
        assert f'webhooks.E008) WEBHOOKS["{key}"]' in str(excinfo.value)
        with pytest.raises(WebhookConfigurationError, match=rf'WEBHOOKS\["{key}"\]'):
            conf.processing_setting(key)


@override_settings(
    WEBHOOKS={"MAX_ATTEMPTS": 1, "RETRY_BASE_DELAY": 0, "RETRY_MAX_DELAY": 0.5,
              "STUCK_AFTER": 0, "RETENTION_DAYS": 0.5, "TASK_QUEUE": "webhooks"}
)  # fmt: skip
def test_good_processing_settings_pass_the_check():
    assert conf.processing_config_problems() == []


@postgres.DURABILITY
@pytest.mark.django_db
def test_the_claim_never_relaxes_the_durability_of_a_callers_transaction(handlers):
    on("stripe", "test.ok")(lambda event: None)
    event = WebhookEventFactory(event_type="test.ok")
    # The test runs inside a transaction, as an eager task inside a request would.
    assert processing.process_event(event.pk) == Status.PROCESSED
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"
