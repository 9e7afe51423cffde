"""``WEBHOOKS["TASK_BACKEND"] = "django"`` end to end: django-tasks-db's database backend on the
test PostgreSQL and its real worker process (``manage.py db_worker``, ``tests.db_worker``).

The handlers are ``tests.worker_app``'s (as in ``test_worker.py``): their runs are rows of
``tether_handler_runs`` written inside the processing transaction. Retries are fast in the
worker (``FAST_RETRIES``: 3 attempts, 0.2 s base, 0.5 s cap).
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone
from django_tasks_db.models import DBTaskResult, get_date_max

from tests.servers import wait_until
from tests.webhooks.conftest import FAST_RETRIES
from tests.webhooks.factories import WebhookEventFactory
from tests.webhooks.through_workers import attempt_rows, attempts_run, enqueue, reaches
from webhooks import dispatch, queueing
from webhooks.models import WebhookEvent
from webhooks.testing import post_webhook

pytestmark = [pytest.mark.worker, pytest.mark.slow]
Status = WebhookEvent.Status


def tasks_of(event) -> list[DBTaskResult]:
    """The Django Tasks enqueued for the event, oldest first (by their only argument)."""
    return [
        result
        for result in DBTaskResult.objects.order_by("enqueued_at")
        if result.args_kwargs["args"] == [event.pk]
    ]


def test_a_signed_delivery_is_processed_by_the_db_worker(db_worker_factory, runs, client):
    db_worker_factory()
    event_id = f"evt_{uuid.uuid4().hex[:24]}"
    payload = {"id": event_id, "object": "event", "type": "test.record",
               "created": int(time.time()), "data": {"object": {}}}  # fmt: skip
    response = post_webhook(client, "stripe", payload)
    assert response.status_code == 200, response.content
    event = WebhookEvent.objects.get(endpoint="stripe", event_id=event_id)
    done = reaches(event, Status.PROCESSED)
    assert done.attempts == 1
    assert attempts_run(runs, event) == [1]
    # One Django Task, which carries the event's key and nothing else, run to success.
    (task,) = tasks_of(event)
    assert task.task_path == queueing.DJANGO_PROCESS_EVENT
    assert task.args_kwargs == {"args": [event.pk], "kwargs": {}}
    wait_until(lambda: DBTaskResult.objects.get(pk=task.pk).status == "SUCCESSFUL", timeout=10)
    assert DBTaskResult.objects.get(pk=task.pk).return_value == "processed"


def test_a_handler_that_fails_then_succeeds_is_retried_at_its_next_attempt_at(
    db_worker_factory, runs
):
    db_worker_factory()
    event = enqueue(event_type="test.flaky", payload={"fail_times": 1})
    done = reaches(event, Status.PROCESSED)
    assert done.attempts == 2
    assert attempt_rows(event) == [(1, "retry"), (2, "processed")]
    assert done.last_error.splitlines()[0] == "RuntimeError: flaky failure on attempt 1"
    assert attempts_run(runs, event) == [2]  # attempt 1's write rolled back with its failure
    # The retry is a second task, deferred (run_after) to within the backoff's cap.
    first, retry = tasks_of(event)
    assert first.run_after == get_date_max()  # the backend's "no run_after"
    assert retry.run_after - retry.enqueued_at <= timedelta(seconds=FAST_RETRIES["RETRY_MAX_DELAY"])


def test_retries_exhausted_then_replayed_by_the_command_and_the_admin(
    db_worker_factory, runs, admin_client
):
    db_worker_factory()
    first = enqueue(event_type="test.fail_until_fixed")
    second = enqueue(event_type="test.fail_until_fixed")
    for event in (first, second):
        failed = reaches(event, Status.FAILED)
        assert failed.attempts == FAST_RETRIES["MAX_ATTEMPTS"]
        assert failed.next_attempt_at is None
        assert len(tasks_of(event)) == FAST_RETRIES["MAX_ATTEMPTS"]  # the first and 2 retries

    cache.set(f"fixed:{first.event_id}", True, 300)
    out = StringIO()
    call_command("replay_webhooks", "--id", first.event_id, stdout=out)
    assert "Replayed 1 event(s)" in out.getvalue()
    assert reaches(first, Status.PROCESSED).attempts == 1
    assert attempts_run(runs, first) == [1]

    cache.set(f"fixed:{second.event_id}", True, 300)
    response = admin_client.post(
        reverse("admin:webhooks_webhookevent_changelist"),
        {"action": "replay", "_selected_action": [second.pk], "post": "yes"},
    )
    assert response.status_code == 302
    assert reaches(second, Status.PROCESSED).attempts == 1
    assert attempts_run(runs, second) == [1]


def test_a_worker_killed_mid_task_is_recovered_by_the_sweeper(db_worker_factory, runs, tmp_path):
    worker = db_worker_factory()
    marker = tmp_path / "started"
    event = enqueue(event_type="test.block", payload={"marker": str(marker), "sleep": 120})
    wait_until(marker.exists, timeout=30, message="the handler to start")
    worker.kill()  # SIGKILL: Django's Tasks redeliver nothing; its task stays RUNNING for good

    event.refresh_from_db()
    assert (event.status, event.attempts) == (Status.PROCESSING, 1)
    (killed,) = tasks_of(event)
    assert killed.status == "RUNNING"

    db_worker_factory()
    time.sleep(1)
    assert WebhookEvent.objects.get(pk=event.pk).status == Status.PROCESSING  # nobody took it
    out = StringIO()
    call_command("requeue_stuck_webhooks", "--older-than", "0", stdout=out)
    assert "Requeued 1 stuck event(s)." in out.getvalue()
    done = reaches(event, Status.PROCESSED)
    assert done.attempts == 2  # the killed attempt was counted
    assert attempts_run(runs, event) == [2]  # and its write rolled back
    assert len(tasks_of(event)) == 2


def test_the_sweeper_as_a_django_task_runs_on_the_worker(db_worker_factory, runs):
    """What a scheduler enqueues: ``webhooks.djtasks.requeue_stuck``, on the worker."""
    from webhooks.djtasks import requeue_stuck

    db_worker_factory()
    event = WebhookEventFactory(
        event_type="test.record", received_at=timezone.now() - timedelta(minutes=20)
    )
    result = requeue_stuck.enqueue()
    assert reaches(event, Status.PROCESSED).attempts == 1
    wait_until(lambda: DBTaskResult.objects.get(pk=result.id).status == "SUCCESSFUL", timeout=10)
    assert DBTaskResult.objects.get(pk=result.id).return_value == 1


def test_many_deliveries_through_the_dispatcher_each_get_their_task(db_worker_factory, runs):
    db_worker_factory()
    events = [enqueue(event_type="test.record") for _ in range(30)]
    assert dispatch.flush(10)
    for event in events:
        assert reaches(event, Status.PROCESSED).attempts == 1
        assert attempts_run(runs, event) == [1]
    assert DBTaskResult.objects.count() == 30
