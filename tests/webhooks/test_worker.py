"""Behaviour that depends on a real Celery worker (a subprocess on the test database and Redis).

The worker loads ``tests.worker_app``, whose handlers (``test.*`` types on the ``stripe``
endpoint) write to the ``tether_handler_runs`` table inside the processing transaction, so side
effects are counted in the database. Retries are fast in the worker (``FAST_RETRIES`` in
conftest: 3 attempts, 0.2 s base, 0.5 s cap), passed to it by environment variable.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from integrations.testing import instant_backoff
from integrations.testing.stripe import FakeStripe
from sandbox_project.celery import app as celery_app
from tests.integrations.vendors.conftest import API_KEY, stripe_settings
from tests.servers import wait_until
from tests.webhooks.conftest import FAST_RETRIES
from tests.webhooks.factories import WebhookEventFactory
from tests.webhooks.through_workers import attempt_rows, attempts_run, enqueue, reaches
from webhooks import on, queueing
from webhooks.models import HandlerRun, WebhookEvent
from webhooks.testing import post_webhook

pytestmark = [pytest.mark.worker, pytest.mark.slow]
Status = WebhookEvent.Status


def stripe_event(event_type: str, **payload) -> dict:
    return {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "type": event_type,
        "created": int(time.time()),
        "data": {"object": {}},
        **payload,
    }


def test_a_handler_that_fails_then_succeeds_on_retry(celery_worker, runs):
    event = enqueue(event_type="test.flaky", payload={"fail_times": 1})
    done = reaches(event, Status.PROCESSED)
    assert done.attempts == 2
    assert attempt_rows(event) == [(1, "retry"), (2, "processed")]
    # kept for the record
    assert done.last_error.splitlines()[0] == "RuntimeError: flaky failure on attempt 1"
    # Attempt 1's write was rolled back with its failure; attempt 2's committed with the mark.
    assert attempts_run(runs, event) == [2]
    assert done.processed_at >= done.last_attempt_at


def test_retries_exhausted_then_replayed_by_the_command_and_the_admin(
    celery_worker, runs, admin_client
):
    first = enqueue(event_type="test.fail_until_fixed")
    second = enqueue(event_type="test.fail_until_fixed")
    for event in (first, second):
        failed = reaches(event, Status.FAILED)
        assert failed.attempts == FAST_RETRIES["MAX_ATTEMPTS"]
        assert failed.last_error.splitlines()[0] == "RuntimeError: bug not fixed yet"
        assert failed.next_attempt_at is None
    assert attempts_run(runs, first) == []

    # The bug is fixed; the operator replays the first by the command...
    cache.set(f"fixed:{first.event_id}", True, 300)
    out = StringIO()
    call_command("replay_webhooks", "--id", first.event_id, stdout=out)
    assert "Replayed 1 event(s)" in out.getvalue()
    done = reaches(first, Status.PROCESSED)
    assert done.attempts == 1
    assert attempts_run(runs, first) == [1]

    # ... and the second by the admin action.
    cache.set(f"fixed:{second.event_id}", True, 300)
    response = admin_client.post(
        reverse("admin:webhooks_webhookevent_changelist"),
        {"action": "replay", "_selected_action": [second.pk], "post": "yes"},
    )
    assert response.status_code == 302
    done = reaches(second, Status.PROCESSED)
    assert done.attempts == 1
    assert attempts_run(runs, second) == [1]


def test_permanent_failure_and_no_handler_through_the_worker(celery_worker, runs):
    permanent = enqueue(event_type="test.permanent")
    unhandled = enqueue(event_type="test.nobody_listens")
    done = reaches(permanent, Status.FAILED)
    assert done.attempts == 1
    first_line = done.last_error.splitlines()[0]
    assert first_line == "webhooks.exceptions.PermanentFailure: not recoverable"
    assert reaches(unhandled, Status.IGNORED).attempts == 1


def test_broker_down_at_receive_then_the_sweeper_recovers_the_event(
    celery_worker, runs, client, broker_down
):
    payload = stripe_event("test.record")
    started = time.monotonic()
    response = post_webhook(client, "stripe", payload)
    assert time.monotonic() - started < 5  # publishing failed fast
    assert response.status_code == 200
    assert response.json()["status"] == "accepted"
    event = WebhookEvent.objects.get(endpoint="stripe", event_id=payload["id"])
    time.sleep(1)
    event.refresh_from_db()
    assert event.status == Status.RECEIVED and event.attempts == 0  # stored, not processed

    broker_down()  # the broker is back
    out = StringIO()
    call_command("requeue_stuck_webhooks", "--older-than", "0", stdout=out)
    assert out.getvalue().strip() == "Requeued 1 stuck event(s)."
    done = reaches(event, Status.PROCESSED)
    assert done.attempts == 1
    assert attempts_run(runs, event) == [1]


def test_the_requeue_stuck_task_runs_on_the_worker(celery_worker, runs):
    event = WebhookEventFactory(
        event_type="test.record", received_at=timezone.now() - timedelta(minutes=20)
    )
    # What beat sends: the task by its name (the worker uses its own STUCK_AFTER, 600 s).
    celery_app.send_task("webhooks.requeue_stuck")
    assert reaches(event, Status.PROCESSED).attempts == 1


def test_a_worker_process_killed_mid_handler_is_redelivered_and_runs_once(
    worker_factory, runs, tmp_path
):
    worker = worker_factory(pool="prefork", concurrency=1)
    marker = tmp_path / "started"
    event = enqueue(event_type="test.block", payload={"marker": str(marker), "sleep": 120})
    wait_until(marker.exists, timeout=30, message="the handler to start")
    killed = worker.kill_child()  # SIGKILL the pool process running the handler

    # reject_on_worker_lost: the message goes back to the queue and a new pool process takes it.
    done = reaches(event, Status.PROCESSED)
    assert done.attempts == 2  # the killed attempt was counted
    runs_ = runs.runs(event.event_id)
    assert [attempt for _, attempt, _ in runs_] == [2]  # the killed attempt's write rolled back
    assert killed not in [pid for _, _, pid in runs_]
    # The killed attempt has no row (its outcome never committed); the page shows it as missing.
    assert attempt_rows(event) == [(2, "processed")]


def test_a_whole_worker_killed_mid_handler_is_recovered_by_the_sweeper(
    worker_factory, runs, tmp_path
):
    worker = worker_factory()
    marker = tmp_path / "started"
    event = enqueue(event_type="test.block", payload={"marker": str(marker), "sleep": 120})
    wait_until(marker.exists, timeout=30, message="the handler to start")
    worker.kill()  # SIGKILL main process: the message stays unacknowledged in Redis

    event.refresh_from_db()
    assert (event.status, event.attempts) == (Status.PROCESSING, 1)
    worker_factory()
    out = StringIO()
    call_command("requeue_stuck_webhooks", "--older-than", "0", stdout=out)
    assert "Requeued 1 stuck event(s)." in out.getvalue()
    done = reaches(event, Status.PROCESSED)
    assert done.attempts == 2
    assert attempts_run(runs, event) == [2]


def test_a_poison_event_that_kills_its_worker_every_time_ends_failed(worker_factory, runs):
    """Attempts are counted before the handlers run, so crashes use them up: no endless loop."""
    worker = worker_factory(pool="prefork", concurrency=1, webhooks={"MAX_ATTEMPTS": 2})
    event = enqueue(event_type="test.crash")
    done = reaches(event, Status.FAILED, timeout=60)
    assert done.attempts == 2
    assert done.last_error.startswith("WorkerLost: attempt 2 of 2 did not finish")
    assert attempts_run(runs, event) == []  # every crashed attempt's write was rolled back
    # The last lost attempt is recorded by the claim that ends the event failed.
    assert attempt_rows(event) == [(2, "lost")]
    assert worker.process.poll() is None  # the main worker process survived


def test_concurrent_deliveries_of_one_event_run_its_handlers_once(worker_factory, runs):
    worker_factory(pool="prefork", concurrency=3)
    event = WebhookEventFactory(event_type="test.slow", payload={"sleep": 1})
    for _ in range(6):
        queueing.publish_process_task(event.pk)
    done = reaches(event, Status.PROCESSED)
    time.sleep(1.5)  # let the other deliveries finish
    assert len(runs.runs(event.event_id)) == 1
    assert WebhookEvent.objects.get(pk=event.pk).processed_at == done.processed_at


@override_settings(WEBHOOKS={"TASK_QUEUE": "webhooks-h2"})
def test_task_queue_setting_routes_first_attempts_and_retries(worker_factory, runs):
    worker_factory(queues="webhooks-h2", webhooks={**FAST_RETRIES, "TASK_QUEUE": "webhooks-h2"})
    event = enqueue(event_type="test.flaky", payload={"fail_times": 1})
    assert reaches(event, Status.PROCESSED).attempts == 2


def test_reconciled_events_are_processed_by_the_worker(celery_worker, runs, handlers):
    """``reconcile_webhooks`` against a fake Stripe stores the undelivered events; the worker
    processes them as it does deliveries (its ``test.record`` handler records each run)."""
    on("stripe", "test.record")(lambda event: None)  # what this process's registry must know
    with FakeStripe(api_key=API_KEY) as fake, instant_backoff():
        listed = [fake.add_event("test.record", data_object={"id": f"obj_{n}"}) for n in range(3)]
        fake.add_event("test.record", delivered=True)
        with override_settings(INTEGRATIONS=stripe_settings(fake.base_url)):
            out = StringIO()
            call_command("reconcile_webhooks", "stripe", stdout=out)
    assert "listed 3 undelivered event(s); stored and enqueued 3" in out.getvalue()
    for item in listed:
        event = WebhookEvent.objects.get(endpoint="stripe", event_id=item["id"])
        assert event.source == WebhookEvent.Source.RECONCILE
        assert reaches(event, Status.PROCESSED).attempts == 1
        assert attempts_run(runs, event) == [1]


# -- a run per handler -----------------------------------------------------------------------------

PAIR = "tests.worker_app.webhooks.pair_"


def test_a_retry_runs_only_the_handler_that_failed(celery_worker, runs):
    """Two handlers of one event (three registered: the one "added later" included, as for a new
    event): one fails once. The retry runs it alone; the others ran once."""
    event = enqueue(event_type="test.pair", payload={"fail_times": 1})
    done = reaches(event, Status.PROCESSED)
    assert done.attempts == 2
    assert runs.runs_as(event.event_id, "steady") == [1]
    assert runs.runs_as(event.event_id, "later") == [1]
    assert runs.runs_as(event.event_id, "flaky") == [2]  # attempt 1's write rolled back
    states = dict(HandlerRun.objects.filter(event=done).values_list("handler", "attempts"))
    assert states == {f"{PAIR}steady": 1, f"{PAIR}flaky": 2, f"{PAIR}added_later": 1}
    assert attempt_rows(event) == [(1, "retry"), (2, "processed")]


def test_backfill_a_new_handler_over_processed_events_through_the_worker(
    celery_worker, runs, handlers
):
    """Events processed before ``pair_added_later`` existed (runs of the other two only): the
    backfill runs it over them, and nothing else."""
    from tests.worker_app.webhooks import pair_added_later

    on("stripe", "test.pair")(pair_added_later)  # the command checks the name in this process
    events = []
    for _ in range(3):
        event = WebhookEventFactory(event_type="test.pair", status=Status.PROCESSED, attempts=1)
        for name in ("steady", "flaky"):
            HandlerRun.objects.create(event=event, handler=PAIR + name, status="processed",
                                      attempts=1)  # fmt: skip
        events.append(event)
    untouched = WebhookEventFactory(event_type="test.record", status=Status.PROCESSED)
    name = f"{PAIR}added_later"
    out = StringIO()
    call_command("replay_webhooks", "--handler", name, "--status", "processed", "--dry-run",
                 stdout=out)  # fmt: skip
    assert out.getvalue().strip() == "Would replay 3 event(s) (dry run: nothing changed)."
    call_command("replay_webhooks", "--handler", name, "--status", "processed", stdout=out)
    for event in events:
        done = reaches(event, Status.PROCESSED)
        assert done.attempts == 1
        wait_until(lambda e=event: runs.runs_as(e.event_id, "later") == [1], timeout=30,
                   message="the backfilled handler to run")  # fmt: skip
        assert runs.runs_as(event.event_id, "steady") == []
        assert runs.runs_as(event.event_id, "flaky") == []
        assert HandlerRun.objects.get(event=event, handler=name).status == "processed"
    assert runs.runs(untouched.event_id) == []
