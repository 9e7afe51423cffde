"""The history of processing attempts: one row per attempt that recorded an outcome, written in
the outcome's transaction; the lost last attempt recorded by the claim that ends the event; rows
bounded per event by a replay and deleted with their event; the table on the event's page."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import transaction
from django.db.transaction import TransactionManagementError
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from tests.webhooks.factories import WebhookEventFactory
from webhooks import on, processing, services, storage
from webhooks.models import ProcessingAttempt, WebhookEvent

Status = WebhookEvent.Status
Outcome = ProcessingAttempt.Outcome


def rows(event):
    return list(
        ProcessingAttempt.objects.filter(event=event).values_list("number", "outcome", "error")
    )


def due_now(event):
    WebhookEvent.objects.filter(pk=event.pk).update(next_attempt_at=timezone.now())


@pytest.mark.django_db
@override_settings(WEBHOOKS={"MAX_ATTEMPTS": 3})
def test_a_failing_handler_then_its_retry_leave_one_row_each(handlers):
    calls = []

    @on("stripe", "invoice.flaky")
    def flaky(event):
        calls.append(1)
        WebhookEvent.objects.filter(pk=event.pk).update(event_type="written.by.handler")
        if len(calls) == 1:
            raise KeyError("customer")

    event = WebhookEventFactory(event_type="invoice.flaky")
    before = timezone.now()
    assert processing.process_event(event.pk) == Status.PROCESSING
    [(number, outcome, error)] = rows(event)
    assert (number, outcome) == (1, Outcome.RETRY)
    assert error.splitlines()[:2] == ["KeyError: 'customer'",
                                      f"Handler: {__name__}.{flaky.__qualname__}"]  # fmt: skip
    assert "Traceback (most recent call last):" in error
    event.refresh_from_db()
    assert event.event_type == "invoice.flaky"  # the handler's write was rolled back, not the row

    due_now(event)
    assert processing.process_event(event.pk) == Status.PROCESSED
    assert [(n, o) for n, o, _ in rows(event)] == [(1, Outcome.RETRY), (2, Outcome.PROCESSED)]
    assert rows(event)[1][2] == ""
    first, second = ProcessingAttempt.objects.filter(event=event)
    event.refresh_from_db()
    assert before <= first.started_at <= first.finished_at <= second.started_at
    assert second.started_at == event.last_attempt_at
    assert second.finished_at == event.processed_at
    assert second.duration == second.finished_at - second.started_at


@pytest.mark.django_db
@override_settings(WEBHOOKS={"MAX_ATTEMPTS": 2})
def test_every_outcome_has_its_row(handlers):
    from webhooks import Ignore, PermanentFailure

    on("stripe", "t.permanent")(lambda e: (_ for _ in ()).throw(PermanentFailure("no")))
    on("stripe", "t.ignore")(lambda e: (_ for _ in ()).throw(Ignore("not ours")))
    on("stripe", "t.boom")(lambda e: 1 / 0)
    permanent = WebhookEventFactory(event_type="t.permanent")
    ignored = WebhookEventFactory(event_type="t.ignore")
    nobody = WebhookEventFactory(event_type="t.nobody")
    boom = WebhookEventFactory(event_type="t.boom")
    for event in (permanent, ignored, nobody, boom):
        processing.process_event(event.pk)
    due_now(boom)
    processing.process_event(boom.pk)
    assert [(n, o) for n, o, _ in rows(permanent)] == [(1, Outcome.FAILED)]
    assert rows(ignored) == [(1, Outcome.IGNORED, "webhooks.exceptions.Ignore: not ours")]
    assert rows(nobody) == [(1, Outcome.IGNORED, "")]
    assert [(n, o) for n, o, _ in rows(boom)] == [(1, Outcome.RETRY), (2, Outcome.FAILED)]
    assert rows(boom)[1][2].startswith("ZeroDivisionError: division by zero\nHandler: ")


@pytest.mark.django_db
@override_settings(WEBHOOKS={"MAX_ATTEMPTS": 2})
def test_a_lost_last_attempt_is_recorded_when_the_event_ends_failed(handlers):
    """What a worker SIGKILLed mid-handler leaves: the attempt counted, no outcome."""
    started = timezone.now() - timedelta(minutes=15)
    event = WebhookEventFactory(status=Status.PROCESSING, attempts=2, last_attempt_at=started,
                                last_error="RuntimeError: first")  # fmt: skip
    assert processing.process_event(event.pk) == Status.FAILED
    [attempt] = ProcessingAttempt.objects.filter(event=event)
    assert (attempt.number, attempt.outcome) == (2, Outcome.LOST)
    assert attempt.started_at == started and attempt.finished_at is None
    assert attempt.error == "WorkerLost: attempt 2 of 2 did not finish"
    assert attempt.duration is None


@pytest.mark.django_db(transaction=True)
@override_settings(WEBHOOKS={"MAX_ATTEMPTS": 2})
def test_the_event_ends_failed_in_one_transaction_with_its_lost_attempt(handlers):
    """No reader sees the event failed without the lost attempt's row: both commit together,
    and ``end_lost`` refuses to run outside a transaction (where it would commit alone)."""
    event = WebhookEventFactory(status=Status.PROCESSING, attempts=2,
                                last_attempt_at=timezone.now())  # fmt: skip
    with pytest.raises(TransactionManagementError):
        storage.end_lost(event.pk, max_attempts=2, now=timezone.now(), max_error_chars=100)
    event.refresh_from_db()
    assert event.status == Status.PROCESSING

    # A claim finds no attempt left; the failure and the row are written, then rolled back together.
    with pytest.raises(RuntimeError), transaction.atomic():
        assert storage.claim(event.pk, max_attempts=2, now=timezone.now()) is None
        assert processing.process_event(event.pk) == Status.FAILED
        assert rows(event) == [(2, Outcome.LOST, "WorkerLost: attempt 2 of 2 did not finish")]
        raise RuntimeError("roll back")
    event.refresh_from_db()
    assert (event.status, rows(event)) == (Status.PROCESSING, [])

    # An event with an attempt left is not ended.
    with transaction.atomic():
        assert (
            storage.end_lost(event.pk, max_attempts=3, now=timezone.now(), max_error_chars=100)
            is None
        )


@pytest.mark.django_db
def test_a_replay_keeps_the_latest_rows_of_each_event(on_commit):
    event = WebhookEventFactory(status=Status.FAILED)
    other = WebhookEventFactory(status=Status.FAILED)
    start = timezone.now() - timedelta(days=1)
    ProcessingAttempt.objects.bulk_create(
        ProcessingAttempt(event=e, number=i % 8 + 1, started_at=start + timedelta(seconds=i),
                          finished_at=start + timedelta(seconds=i), outcome=Outcome.RETRY)
        for e in (event, other) for i in range(60)
    )  # fmt: skip
    with on_commit(execute=False):
        services.replay_event(event)
    kept = ProcessingAttempt.objects.filter(event=event)
    assert kept.count() == services.ATTEMPTS_KEPT_PER_EVENT == 50
    assert min(a.started_at for a in kept) == start + timedelta(seconds=10)  # the latest 50
    assert ProcessingAttempt.objects.filter(event=other).count() == 60  # not replayed


@pytest.mark.django_db
def test_pruning_an_event_deletes_its_attempts(handlers):
    event = WebhookEventFactory(event_type="nobody.listens")
    processing.process_event(event.pk)
    assert ProcessingAttempt.objects.filter(event=event).count() == 1
    WebhookEvent.objects.filter(pk=event.pk).update(received_at=timezone.now() - timedelta(days=40))
    assert services.prune_events() == 1
    assert not ProcessingAttempt.objects.exists()


@pytest.mark.django_db
@override_settings(WEBHOOKS={"MAX_ATTEMPTS": 5})
def test_the_event_page_shows_the_attempts_and_those_without_an_outcome(admin_client, handlers):
    on("stripe", "t.boom")(lambda e: {}["missing-key"])
    event = WebhookEventFactory(event_type="t.boom")
    processing.process_event(event.pk)  # attempt 1: retry
    # Attempt 2 "dies": counted, no outcome (as a SIGKILL leaves it).
    WebhookEvent.objects.filter(pk=event.pk).update(attempts=2, next_attempt_at=timezone.now())
    processing.process_event(event.pk)  # attempt 3: retry
    # Attempt 4 is running (counted, no outcome yet).
    WebhookEvent.objects.filter(pk=event.pk).update(attempts=4, next_attempt_at=None,
                                                    last_attempt_at=timezone.now())  # fmt: skip
    content = admin_client.get(
        reverse("admin:webhooks_webhookevent_change", args=[event.pk])
    ).content.decode()
    table = content[content.index('<table class="webhooks-attempts">') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr>") == 5  # header + attempts 1 to 4
    assert table.count("failed, retry scheduled") == 2
    assert "no outcome recorded" in table  # attempt 2
    assert "running, or its worker died" in table  # attempt 4
    assert "<summary><code>KeyError: &#x27;missing-key&#x27;</code></summary>" in table
    assert " s</td>" in table  # durations


@pytest.mark.django_db
def test_an_event_without_attempts_says_so(admin_client):
    event = WebhookEventFactory()
    content = admin_client.get(
        reverse("admin:webhooks_webhookevent_change", args=[event.pk])
    ).content.decode()
    assert "No attempt yet." in content
