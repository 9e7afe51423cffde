"""One way to schedule a retry (``queueing.schedule_retry``) and bulk mark-ignored
(``services.mark_ignored_many``), against the real PostgreSQL and Redis broker."""

from __future__ import annotations

import base64
import json
from datetime import datetime

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from tests import postgres
from tests.celery_worker import purge_broker
from tests.webhooks.factories import WebhookEventFactory
from webhooks import on, processing, queueing, services
from webhooks.models import WebhookEvent
from webhooks.signals import webhook_ignored

Status = WebhookEvent.Status
pytestmark = pytest.mark.django_db


@pytest.fixture
def broker():
    purge_broker()
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    yield client
    purge_broker()


def _messages(client: redis.Redis, queue: str = "celery") -> list[dict]:
    return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]


@pytest.fixture
def failing(handlers):
    @on("stripe", "test.retry-boom")
    def handler(event):
        raise RuntimeError("boom")

    return WebhookEventFactory(event_type="test.retry-boom")


@postgres.STATEMENTS
def test_a_failed_attempt_publishes_its_retry_with_the_countdown_it_wrote(broker, failing):
    with CaptureQueriesContext(connection) as queries:
        assert processing.process_event(failing.pk, retry=True) == Status.PROCESSING
    failing.refresh_from_db()
    [message] = _messages(broker)
    headers = message["headers"]
    assert headers["task"] == "webhooks.process_event"
    assert headers["argsrepr"] == f"({failing.pk},)"
    eta = datetime.fromisoformat(headers["eta"])
    # The countdown runs to the next_attempt_at the attempt wrote (to Celery's clock precision).
    assert abs((eta - failing.next_attempt_at).total_seconds()) < 1.0
    # No second read of next_attempt_at after the outcome was written.
    selects = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    assert not any("next_attempt_at" in sql.split("FROM", 1)[0] and "FOR UPDATE" not in sql
                   for sql in selects), selects  # fmt: skip


def test_without_retry_nothing_is_published(broker, failing):
    assert processing.process_event(failing.pk) == Status.PROCESSING
    assert _messages(broker) == []


def test_a_success_publishes_no_retry(broker, handlers):
    @on("stripe", "test.retry-ok")
    def handler(event):
        pass

    event = WebhookEventFactory(event_type="test.retry-ok")
    assert processing.process_event(event.pk, retry=True) == Status.PROCESSED
    assert _messages(broker) == []


def test_retries_go_to_the_task_queue(broker, failing):
    with override_settings(WEBHOOKS={**settings.WEBHOOKS, "TASK_QUEUE": "webhooks-retry-q"}):
        assert processing.process_event(failing.pk, retry=True) == Status.PROCESSING
    assert _messages(broker) == []
    [message] = _messages(broker, "webhooks-retry-q")
    assert message["headers"]["task"] == "webhooks.process_event"


def test_sync_replay_publishes_the_retry_the_same_way(broker, failing):
    WebhookEvent.objects.filter(pk=failing.pk).update(status=Status.FAILED)
    seen = []
    services.replay_events(WebhookEvent.objects.filter(pk=failing.pk), sync=True,
                           on_result=lambda pk, status: seen.append((pk, status)))  # fmt: skip
    assert seen == [(failing.pk, Status.PROCESSING)]
    [message] = _messages(broker)
    assert message["headers"]["task"] == "webhooks.process_event"
    assert "eta" in message["headers"] and message["headers"]["eta"]


def test_a_refused_retry_publish_is_swallowed_and_the_event_keeps_its_schedule(
    broker_down, failing
):
    assert processing.process_event(failing.pk, retry=True) == Status.PROCESSING
    failing.refresh_from_db()
    assert failing.next_attempt_at is not None
    assert queueing.schedule_retry(failing.pk, failing.next_attempt_at) is False


def test_mark_ignored_many_counts_changed_and_skipped_in_chunks():
    eligible = [
        WebhookEventFactory(status=Status.FAILED),
        WebhookEventFactory(status=Status.RECEIVED),
        WebhookEventFactory(status=Status.PROCESSING),
    ]
    done = [WebhookEventFactory(status=Status.PROCESSED),
            WebhookEventFactory(status=Status.IGNORED)]  # fmt: skip
    got = []

    def receive(sender, event, **kwargs):
        got.append(event.pk)

    webhook_ignored.connect(receive, weak=False)
    try:
        result = services.mark_ignored_many(WebhookEvent.objects.all(), reason="bulk", chunk_size=2)
    finally:
        webhook_ignored.disconnect(receive)
    assert result == (3, 2)
    assert sorted(got) == sorted(e.pk for e in eligible)
    for event in eligible:
        event.refresh_from_db()
        assert event.status == Status.IGNORED
        assert event.last_error == "Ignored: bulk"
        assert event.processed_at is not None and event.next_attempt_at is None
    assert WebhookEvent.objects.get(pk=done[0].pk).status == Status.PROCESSED
    # Nothing left to change: all skipped.
    assert services.mark_ignored_many(WebhookEvent.objects.all()) == (0, 5)
    assert services.mark_ignored_many(WebhookEvent.objects.none()) == (0, 0)


def test_a_batch_message_shows_its_keys_as_celery_would(broker, settings):
    """The dispatcher's messages carry the batch in ``argsrepr`` (what monitoring shows), as
    Celery's own repr would, cut at Celery's limit of 1,024 characters."""
    from webhooks.queueing import ARGS_REPR_MAX, publish_process_batch

    settings.WEBHOOKS = {**settings.WEBHOOKS, "DISPATCH_BATCH_SIZE": 1000}
    assert publish_process_batch([3, 1, 2])
    assert publish_process_batch(list(range(100_000, 100_500)))
    short, long = reversed(_messages(broker))
    assert short["headers"]["argsrepr"] == "([3, 1, 2],)"
    assert short["headers"]["kwargsrepr"] == "{}"
    shown = long["headers"]["argsrepr"]
    assert len(shown) == ARGS_REPR_MAX and shown.startswith("([100000, 100001,")
    assert shown.endswith("...")
    assert json.loads(base64.b64decode(long["body"]))[0] == [list(range(100_000, 100_500))]
