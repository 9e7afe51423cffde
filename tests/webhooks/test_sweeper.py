"""The sweeper over a long outage: how many messages it leaves on the broker, how soon it
requeues again after the broker lost them, and that every event still ends processed once.

Time passes by moving the events' timestamps back (``let_time_pass``), one beat interval at a
time, with a real sweep after each step; the messages are read back from the real Redis broker.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import timedelta

import pytest
from django.db import models
from django.db.models import F
from django.test import override_settings
from django.utils import timezone

from tests.celery_worker import purge_broker, queue_length, queued_messages
from tests.servers import wait_until
from tests.webhooks.factories import WebhookEventFactory
from webhooks import services
from webhooks.exceptions import BrokerUnavailable
from webhooks.models import WebhookEvent

Status = WebhookEvent.Status

SWEEP_EVERY = 30  # seconds: beat's interval in the sandbox and the README
RECEIVED_AFTER, STUCK_AFTER, MAX_INTERVAL = 60, 600, 3600  # the defaults
TIMESTAMPS = ("received_at", "last_attempt_at", "next_attempt_at", "requeued_at")  # in `fields`


def let_time_pass(seconds: float) -> None:
    """As if ``seconds`` had passed: every event's timestamps move that far into the past."""
    step = timedelta(seconds=seconds)
    timestamps = [
        field.name
        for field in WebhookEvent._meta.concrete_fields
        if isinstance(field, models.DateTimeField)
    ]
    WebhookEvent.objects.update(**{name: F(name) - step for name in timestamps})


def sweep_for(seconds: float) -> None:
    """Sweep every ``SWEEP_EVERY`` seconds for ``seconds``, as beat does."""
    for _ in range(round(seconds / SWEEP_EVERY)):
        let_time_pass(SWEEP_EVERY)
        services.requeue_stuck()


def messages_per_event() -> Counter[int]:
    """How many ``webhooks.process_event`` messages wait on the broker for each event."""
    queued = queued_messages()
    assert {task for task, _ in queued} <= {"webhooks.process_event"}
    return Counter(args[0] for _, args in queued)


def most_requeues(waited: float, threshold: float, cap: float = MAX_INTERVAL) -> int:
    """API-CONTRACTS' bound on the sweeper's messages for one event that waited ``waited``
    seconds: 1 + log2(min(waited, cap) / threshold) + waited / cap."""
    return math.floor(1 + math.log2(min(waited, cap) / threshold) + waited / cap)


# -- the rule ------------------------------------------------------------------------------------


def ago(seconds: float | None):
    return None if seconds is None else timezone.now() - timedelta(seconds=seconds)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "requeueable"),
    [
        # received 90 s ago, never requeued: its wake-up is presumed lost
        ({"received_at": 90}, True),
        # requeued when it had waited 60 s: it waits 60 s more before the next
        ({"received_at": 100, "requeued_at": 40}, False),
        ({"received_at": 130, "requeued_at": 70}, True),
        # requeued when it had waited 500 s: 500 s more
        ({"received_at": 900, "requeued_at": 400}, False),
        ({"received_at": 1010, "requeued_at": 505}, True),
        # after hours of waiting, at most REQUEUE_MAX_INTERVAL (1 h) between requeues
        ({"received_at": 3 * 3600, "requeued_at": 3500}, False),
        ({"received_at": 3 * 3600, "requeued_at": 3700}, True),
        # replayed (next_attempt_at) after the requeue: that requeue no longer counts
        ({"received_at": 5 * 3600, "next_attempt_at": 90, "requeued_at": 1800}, True),
        # a processing event waits STUCK_AFTER (600 s) at least, from its latest attempt
        ({"status": Status.PROCESSING, "last_attempt_at": 700, "requeued_at": 100}, False),
        ({"status": Status.PROCESSING, "last_attempt_at": 1300, "requeued_at": 650}, True),
        # an attempt began after the requeue (its worker died): the requeue no longer counts
        ({"status": Status.PROCESSING, "last_attempt_at": 650, "requeued_at": 1200}, True),
    ],
)
def test_a_requeued_event_waits_as_long_again_as_it_had_waited_within_the_bounds(
    fields, requeueable
):
    fields = {"received_at": 6 * 3600, **fields}
    event = WebhookEventFactory(
        **{name: ago(value) if name in TIMESTAMPS else value for name, value in fields.items()}
    )
    assert services.stuck_events().filter(pk=event.pk).exists()  # health still counts it
    assert services.requeueable_events().filter(pk=event.pk).exists() is requeueable
    assert services.recently_requeued_events().filter(pk=event.pk).exists() is not requeueable


@pytest.mark.django_db
@override_settings(WEBHOOKS={"REQUEUE_MAX_INTERVAL": 0})
def test_a_max_interval_of_zero_requeues_on_every_sweep_past_the_threshold():
    event = WebhookEventFactory(received_at=ago(3 * 3600), requeued_at=ago(61))
    assert services.requeueable_events().filter(pk=event.pk).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("value", [-1, 30 * 86_400 + 1, float("inf"), float("nan"), "1h", None])
def test_a_bad_requeue_max_interval_is_a_system_check_error(value):
    from django.core.management import call_command
    from django.core.management.base import SystemCheckError

    with (
        override_settings(WEBHOOKS={"REQUEUE_MAX_INTERVAL": value}),
        pytest.raises(SystemCheckError) as excinfo,
    ):
        call_command("check")
    assert 'webhooks.E008) WEBHOOKS["REQUEUE_MAX_INTERVAL"]' in str(excinfo.value)


# -- a long outage -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.worker
def test_a_long_outage_leaves_a_bounded_number_of_messages_and_every_event_is_processed_once(
    worker_factory, runs
):
    """Workers down for 3 hours, beat sweeping every 30 s: before, every sweep published every
    stuck event again (about 18,000 messages here); now each event's messages grow like the
    log of the outage plus one per REQUEUE_MAX_INTERVAL."""
    received = WebhookEventFactory.create_batch(50, event_type="test.record")
    # Their worker died mid-handler: `processing`, the attempt counted.
    processing = WebhookEventFactory.create_batch(
        10, event_type="test.record", status=Status.PROCESSING, attempts=1,
        last_attempt_at=timezone.now(),
    )  # fmt: skip
    outage = 3 * 3600
    sweep_for(outage)

    per_event = messages_per_event()
    assert set(per_event) == {event.pk for event in received + processing}
    for events, threshold in ((received, RECEIVED_AFTER), (processing, STUCK_AFTER)):
        counts = [per_event[event.pk] for event in events]
        assert min(counts) >= 2 and max(counts) <= most_requeues(outage, threshold), counts
    assert queue_length() <= 50 * most_requeues(outage, RECEIVED_AFTER) + 10 * most_requeues(
        outage, STUCK_AFTER
    )  # 50 * 9 + 10 * 6 = 510

    # The broker restarts without its data: every event is requeued within REQUEUE_MAX_INTERVAL
    # (plus one sweep), and only once each.
    purge_broker()
    waited = 0
    while len(messages_per_event()) < 60:
        assert waited <= MAX_INTERVAL, f"{len(messages_per_event())} of 60 requeued"
        sweep_for(SWEEP_EVERY)
        waited += SWEEP_EVERY
    assert set(messages_per_event().values()) == {1}

    # The workers come back: every event is processed, its handler run once.
    worker_factory()
    for event in received + processing:
        done = wait_until(
            lambda e=event: WebhookEvent.objects.filter(pk=e.pk, status=Status.PROCESSED).first(),
            timeout=60,
            message=f"{event.event_id} to be processed",
        )
        assert done.attempts == (1 if event in received else 2)
        assert len(runs.runs(event.event_id)) == 1
    wait_until(lambda: queue_length() == 0, timeout=30, message="the queue to drain")


# -- the record follows the publish --------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_refused_publish_records_no_requeue_so_the_next_sweep_sends_it(broker_down):
    """The broker is down during a sweep: the events keep their previous requeue time, so the
    sweep after the broker is back requeues them at once instead of waiting on a message that
    was never sent."""
    requeued_before = ago(3660)  # the wait after this requeue (1 h, the cap) is over
    events = WebhookEventFactory.create_batch(
        3, received_at=ago(3 * 3600), requeued_at=requeued_before
    )
    with pytest.raises(BrokerUnavailable):
        services.requeue_stuck()
    assert {e.requeued_at for e in WebhookEvent.objects.all()} == {requeued_before}

    broker_down()  # the broker is back
    purge_broker()
    assert services.requeue_stuck() == 3
    assert messages_per_event() == Counter({event.pk: 1 for event in events})
    assert services.requeue_stuck() == 0  # recorded now: the next sweep leaves them alone
