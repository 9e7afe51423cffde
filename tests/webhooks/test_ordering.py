"""Per-object ordering (``@on(..., ordering_key=...)``, ``webhooks.ordering``): registration,
reading keys and versions, the decision and its row lock, and processing around it.

Through real workers, with hypothesis: ``test_ordering_workers.py``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction

from tests import postgres
from tests.webhooks.factories import WebhookEventFactory
from webhooks import on, ordering, processing
from webhooks.exceptions import InvalidOrderingValue, PermanentFailure
from webhooks.models import HandlerRun, OrderingState, ProcessingAttempt, WebhookEvent
from webhooks.registry import OrderingSpec, Registration, handler_name, registrations_for

Status = WebhookEvent.Status
RunStatus = HandlerRun.Status
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def subscription_event(sub_id: str, version: int | None = None, **fields) -> WebhookEvent:
    """A stored ``test.subscription.updated`` (a type no other app's handler matches: the
    SQLite settings install the sandbox's demo, which handles ``customer.subscription.*``) for
    ``sub_id``; ``version`` sets both its
    occurred time (T0 + version seconds) and ``data.object.seq``."""
    obj = {"id": sub_id, "object": "subscription"}
    if version is not None:
        obj["seq"] = version
        fields.setdefault("occurred_at", T0 + timedelta(seconds=version))
    fields.setdefault("event_type", "test.subscription.updated")
    event = WebhookEventFactory(**fields)
    event.payload["data"]["object"].update(obj)
    event.save(update_fields=["payload"])
    return event


def unsaved(payload=None, **fields) -> WebhookEvent:
    return WebhookEvent(endpoint="stripe", event_id="evt_x", payload=payload, **fields)


def registration(handler=None, **options) -> Registration:
    options.setdefault("key", "data.object.id")
    spec = OrderingSpec.build(options.pop("key"), options.pop("version", None), **options)
    return Registration("stripe", "test.subscription.*", handler or apply_handler, spec)


def apply_handler(event):  # a module-level function: a stable dotted path
    pass


def other_handler(event):
    pass


# -- registration ---------------------------------------------------------------------------


def test_on_registers_the_ordering(handlers):
    @on("stripe", "test.subscription.*", ordering_key="data.object.id", stale="deliver")
    def sync(event):
        pass

    (found,) = [r for r in registrations_for("stripe", "test.subscription.updated")]
    assert found.handler is sync
    assert found.ordering is not None
    assert found.ordering.key == ("data", "object", "id")
    assert found.ordering.version is None and found.ordering.version_label == "occurred_at"
    assert found.ordering.stale == "deliver"


def test_an_unordered_handler_has_no_ordering(handlers):
    @on("stripe", "invoice.paid")
    def paid(event):
        pass

    assert [r.ordering for r in registrations_for("stripe", "invoice.paid")] == [None]


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"ordering_key": "data.object.id", "stale": "later"}, ValueError, "stale must be"),
        ({"ordering_version": "data.object.seq"}, ValueError, "need an ordering_key"),
        ({"stale": "deliver"}, ValueError, "need an ordering_key"),
        ({"ordering_key": 42}, TypeError, "dotted path into the payload or a callable"),
        ({"ordering_key": "data.object.id", "ordering_version": 3.0}, TypeError, "not float"),
        ({"ordering_key": ""}, ValueError, "is not a dotted path"),
        ({"ordering_key": "data..id"}, ValueError, "is not a dotted path"),
        ({"ordering_key": "data.object.id."}, ValueError, "is not a dotted path"),
        ({"ordering_key": "data. object"}, ValueError, "is not a dotted path"),
        ({"ordering_key": "a" * 201}, ValueError, "longer than 200 characters"),
        ({"ordering_key": ".".join("a" * 17)}, ValueError, "more than 16 segments"),
    ],
)
def test_a_wrong_ordering_is_refused_at_registration(handlers, options, error, message):
    before = len(handlers)
    with pytest.raises(error, match=message):
        on("stripe", "test.subscription.*", **options)(apply_handler)
    assert len(handlers) == before


# -- reading keys -----------------------------------------------------------------------------


def spec(key="data.object.id", version=None, stale="skip") -> OrderingSpec:
    return OrderingSpec.build(key, version, stale)


def test_the_key_at_a_path():
    event = unsaved({"data": {"object": {"id": "sub_1"}}})
    assert ordering.ordering_key_of(spec(), event) == "sub_1"


def test_an_integer_key_is_its_decimal_text_and_a_digit_segment_indexes_a_list():
    event = unsaved({"items": [{"id": 1}, {"id": 123456789012}]})
    assert ordering.ordering_key_of(spec("items.1.id"), event) == "123456789012"


def test_a_callable_key_and_a_callable_saying_there_is_none():
    assert ordering.ordering_key_of(spec(lambda e: f"k-{e.event_id}"), unsaved({})) == "k-evt_x"
    assert ordering.ordering_key_of(spec(lambda e: None), unsaved({})) is None


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({}, "is missing from the payload"),
        (None, "is missing from the payload"),
        ({"data": {"object": {"id": None}}}, "is missing from the payload"),
        ({"data": {"object": "sub_1"}}, "is missing from the payload"),
        ({"data": [{"id": "x"}]}, "is missing from the payload"),
        ({"data": {"object": {"id": True}}}, "gave a bool, not a string"),
        ({"data": {"object": {"id": 1.5}}}, "gave a float, not a string"),
        ({"data": {"object": {"id": {"nested": 1}}}}, "gave a dict, not a string"),
        ({"data": {"object": {"id": ""}}}, "key of 0 characters"),
        ({"data": {"object": {"id": "x" * 256}}}, "key of 256 characters"),
    ],
)
def test_a_key_that_cannot_be_read_is_a_permanent_failure(payload, message):
    with pytest.raises(InvalidOrderingValue, match=message) as raised:
        ordering.ordering_key_of(spec(), unsaved(payload), handler="app.sync")
    assert isinstance(raised.value, PermanentFailure)
    assert str(raised.value).startswith("ordered handler app.sync: ordering_key 'data.object.id'")
    assert "x" * 20 not in str(raised.value)  # never the payload's value


def test_a_key_of_the_longest_length_is_accepted():
    event = unsaved({"data": {"object": {"id": "k" * 255}}})
    assert ordering.ordering_key_of(spec(), event) == "k" * 255


# -- reading versions ---------------------------------------------------------------------------


def test_the_default_version_is_the_occurred_time():
    event = unsaved({}, occurred_at=T0 + timedelta(microseconds=250))
    version = ordering.ordering_version_of(spec(), event)
    assert version.kind == "time"
    assert version.value == Decimal(int(T0.timestamp())) + Decimal("0.000250")
    assert str(version) == "2026-12-01T12:00:00.000250+00:00"


def test_an_event_without_occurred_time_needs_an_ordering_version():
    with pytest.raises(InvalidOrderingValue, match="has no occurred time"):
        ordering.ordering_version_of(spec(), unsaved({}, occurred_at=None))


@pytest.mark.parametrize(
    ("value", "expected", "kind"),
    [
        (7, Decimal(7), "number"),
        (-3, Decimal(-3), "number"),
        (10**20 - 1, Decimal(10**20 - 1), "number"),
        (1.5, Decimal("1.5"), "number"),
        ("2026-12-01T12:00:00Z", Decimal(int(T0.timestamp())), "time"),
        ("2026-12-01T13:00:00+01:00", Decimal(int(T0.timestamp())), "time"),
        ("2026-12-01T12:00:00", Decimal(int(T0.timestamp())), "time"),  # naive: UTC
        ("2026-12-01T12:00:00.5Z", Decimal(int(T0.timestamp())) + Decimal("0.5"), "time"),
    ],
)
def test_versions_that_are_read(value, expected, kind):
    event = unsaved({"data": {"object": {"v": value}}})
    version = ordering.ordering_version_of(spec(version="data.object.v"), event)
    assert (version.value, version.kind) == (expected, kind)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        10**20,
        -(10**20),
        float("nan"),
        float("inf"),
        1e21,
        "not a time",
        "12",
        "2026-12-01T12:00:00Z" + " " * 50,
        [1],
        {"seq": 1},
    ],
)
def test_versions_that_are_refused(value):
    event = unsaved({"data": {"object": {"v": value}}})
    message = re.escape("ordering_version 'data.object.v' is")
    with pytest.raises(InvalidOrderingValue, match=message):
        ordering.ordering_version_of(spec(version="data.object.v"), event)


def test_a_callable_version():
    version = ordering.ordering_version_of(spec(version=lambda e: 41), unsaved({}))
    assert (version.value, version.kind) == (Decimal(41), "number")
    with pytest.raises(InvalidOrderingValue, match="is a str that is not usable"):
        ordering.ordering_version_of(spec(version=lambda e: "soon"), unsaved({}))


# -- the decision -------------------------------------------------------------------------------


def state_of(handler=apply_handler, key="sub_1") -> OrderingState:
    return OrderingState.objects.get(handler=handler_name(handler), key=key)


@pytest.mark.django_db
def test_the_first_event_of_a_key_applies_and_records_its_version():
    event = subscription_event("sub_1", 5)
    decision = ordering.decide(registration(), event)
    assert decision is not None
    assert (decision.action, decision.stale, decision.reason) == ("apply", False, "")
    assert (decision.key, decision.newest_version, decision.newest_event_id) == ("sub_1", None, "")
    state = state_of()
    assert (state.version_kind, state.event_id) == ("time", event.event_id)
    assert state.version == Decimal(int(T0.timestamp()) + 5)


@pytest.mark.django_db
def test_newer_applies_older_is_skipped_naming_the_newer_event():
    newest = subscription_event("sub_1", 5)
    ordering.decide(registration(), newest)
    newer = subscription_event("sub_1", 8)
    assert ordering.decide(registration(), newer).action == "apply"
    older = subscription_event("sub_1", 6)
    decision = ordering.decide(registration(), older)
    assert decision.action == "skip" and decision.stale
    assert decision.newest_event_id == newer.event_id
    assert decision.reason == (
        "stale: version 2026-12-01T12:00:06+00:00 of key 'sub_1' is older than version "
        f"2026-12-01T12:00:08+00:00 applied by event '{newer.event_id}'"
    )
    assert state_of().event_id == newer.event_id  # unchanged by the skip


@pytest.mark.django_db
def test_an_equal_version_applies_the_same_event_again_and_another_event_too():
    first = subscription_event("sub_1", 5)
    ordering.decide(registration(), first)
    assert ordering.decide(registration(), first).action == "apply"  # a replay
    tie = subscription_event("sub_1", 5)
    assert ordering.decide(registration(), tie).action == "apply"
    assert state_of().event_id == tie.event_id


@pytest.mark.django_db
def test_stale_deliver_hands_the_stale_event_over_and_keeps_the_newest_version():
    reg = registration(stale="deliver", version="data.object.seq")
    newest = subscription_event("sub_1", 9)
    ordering.decide(reg, newest)
    decision = ordering.decide(reg, subscription_event("sub_1", 2))
    assert (decision.action, decision.stale) == ("deliver_stale", True)
    assert str(decision.version) == "2" and str(decision.newest_version) == "9"
    state = state_of()
    assert (state.version, state.version_kind, state.event_id) == (9, "number", newest.event_id)


@pytest.mark.django_db
def test_keys_and_handlers_are_ordered_apart():
    ordering.decide(registration(), subscription_event("sub_1", 9))
    assert ordering.decide(registration(), subscription_event("sub_2", 1)).action == "apply"
    assert (
        ordering.decide(registration(other_handler), subscription_event("sub_1", 1)).stale is False
    )
    assert OrderingState.objects.count() == 3


@pytest.mark.django_db
def test_a_version_of_another_kind_applies_with_a_warning(caplog):
    ordering.decide(registration(), subscription_event("sub_1", 9))  # a time
    event = subscription_event("sub_1", 1)
    decision = ordering.decide(registration(version="data.object.seq"), event)
    assert decision.action == "apply"
    assert state_of().version_kind == "number"
    assert "held a time version" in caplog.text and "did ordering_version change?" in caplog.text


@pytest.mark.django_db
def test_an_unordered_handler_or_a_key_callable_saying_none_gets_no_decision():
    event = subscription_event("sub_1", 1)
    assert ordering.decide(Registration("stripe", "*", apply_handler), event) is None
    assert ordering.decide(registration(key=lambda e: None), event) is None
    assert not OrderingState.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_decide_outside_a_transaction_is_refused():
    event = subscription_event("sub_1", 1)
    with pytest.raises(RuntimeError, match="inside the handler's transaction"):
        ordering.decide(registration(), event)


@postgres.ROW_LOCKS
@pytest.mark.django_db(transaction=True)
def test_the_first_two_events_of_a_key_create_one_row_and_the_second_waits_for_the_first():
    """Two connections: A creates the key's row and holds it; B (an older version) waits on it,
    then sees A's version once A commits, and skips. Another key is not held up."""
    newer, older = subscription_event("sub_1", 8), subscription_event("sub_1", 3)
    other = subscription_event("sub_2", 1)
    a_decided, a_committed_at = threading.Event(), []
    results = {}

    def run_a():
        try:
            with transaction.atomic():
                results["a"] = ordering.decide(registration(), newer).action
                a_decided.set()
                time.sleep(1.5)  # long enough for C to finish on a busy machine
                a_committed_at.append(time.monotonic())
        finally:
            a_decided.set()
            connection.close()

    def run_b(name, event):
        try:
            a_decided.wait(10)
            with transaction.atomic():
                results[name] = ordering.decide(registration(), event).action
                results[name + "_at"] = time.monotonic()
        finally:
            connection.close()

    threads = [
        threading.Thread(target=run_a),
        threading.Thread(target=run_b, args=("b", older)),
        threading.Thread(target=run_b, args=("c", other)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert (results["a"], results["b"], results["c"]) == ("apply", "skip", "apply")
    assert results["b_at"] >= a_committed_at[0]  # B waited for A's row lock
    assert results["c_at"] < a_committed_at[0]  # another key did not wait
    assert OrderingState.objects.filter(key="sub_1").count() == 1
    assert state_of().event_id == newer.event_id


# -- processing around it ----------------------------------------------------------------------


@pytest.mark.django_db
def test_processing_skips_a_stale_event_its_run_ends_skipped_with_why_and_the_others_run(
    handlers, on_commit, caplog
):
    seen = []

    @on("stripe", "test.subscription.*", ordering_key="data.object.id")
    def sync_subscription(event):
        seen.append(("ordered", event.event_id, event.ordering.stale))

    @on("stripe", "test.subscription.*")
    def audit(event):
        seen.append(("unordered", event.event_id, event.ordering))

    newer, older = subscription_event("sub_1", 8), subscription_event("sub_1", 3)
    caplog.set_level(logging.INFO, logger="webhooks.ordering")
    with on_commit(execute=True):
        assert processing.process_event(newer.pk) == Status.PROCESSED
        assert processing.process_event(older.pk) == Status.PROCESSED  # skipped counts as done
    assert seen == [
        ("ordered", newer.event_id, False),
        ("unordered", newer.event_id, None),
        ("unordered", older.event_id, None),
    ]
    assert runs_of(older) == {
        handler_name(sync_subscription): (
            RunStatus.SKIPPED,
            1,
            "stale: version 2026-12-01T12:00:03+00:00 of key 'sub_1' is older than version "
            f"2026-12-01T12:00:08+00:00 applied by event '{newer.event_id}'",
        ),
        handler_name(audit): (RunStatus.PROCESSED, 1, ""),
    }
    assert {status for status, _, _ in runs_of(newer).values()} == {RunStatus.PROCESSED}
    (attempt,) = ProcessingAttempt.objects.filter(event=older)
    assert (attempt.outcome, attempt.error) == ("processed", "")
    assert f"skipped stripe:{older.event_id}: stale" in caplog.text
    assert WebhookEvent.objects.get(pk=older.pk).last_error == ""


def runs_of(event) -> dict[str, tuple[str, int, str]]:
    """The event's runs: ``{handler: (status, attempts, last_error)}``."""
    rows = HandlerRun.objects.filter(event=event)
    return {
        handler: (status, attempts, error)
        for handler, status, attempts, error in rows.values_list(
            "handler", "status", "attempts", "last_error"
        )
    }


@pytest.mark.django_db
def test_a_retry_of_a_stale_event_runs_the_failed_run_alone_and_leaves_the_skipped_one(
    handlers, on_commit
):
    calls = []

    @on("stripe", "test.subscription.*", ordering_key="data.object.id")
    def sync_subscription(event):
        calls.append(event.event_id)

    @on("stripe", "test.subscription.*")
    def notify(event):
        if event.payload.get("notify_fails") and event.attempts == 1:
            raise RuntimeError("mail server down")

    newer, older = subscription_event("sub_1", 8), subscription_event("sub_1", 3)
    with on_commit(execute=True):
        assert processing.process_event(newer.pk) == Status.PROCESSED
    # A stale event whose other handler fails: the failed run older is retried; the skipped run
    # is not run again.
    older.payload["notify_fails"] = True
    older.save(update_fields=["payload"])
    with on_commit(execute=True):
        assert processing.process_event(older.pk) == Status.PROCESSING
    assert runs_of(older)[handler_name(sync_subscription)][:2] == (RunStatus.SKIPPED, 1)
    assert runs_of(older)[handler_name(notify)][:2] == (RunStatus.PROCESSING, 1)
    WebhookEvent.objects.filter(pk=older.pk).update(next_attempt_at=None)
    with on_commit(execute=True):
        assert processing.process_event(older.pk) == Status.PROCESSED
    assert runs_of(older)[handler_name(sync_subscription)][:2] == (RunStatus.SKIPPED, 1)
    assert runs_of(older)[handler_name(notify)][:2] == (RunStatus.PROCESSED, 2)
    assert calls == [newer.event_id]


@pytest.mark.django_db
def test_two_ordered_callables_of_one_dotted_name_keep_their_own_state(handlers, on_commit):
    seen = []
    on("stripe", "test.subscription.*", ordering_key="data.object.id")(
        lambda event: seen.append(("a", event.event_id))
    )
    on("stripe", "test.subscription.updated", ordering_key="data.object.id")(
        lambda event: seen.append(("b", event.event_id))
    )
    first = subscription_event("sub_1", 8)
    with on_commit(execute=True):
        assert processing.process_event(first.pk) == Status.PROCESSED
    names = sorted(runs_of(first))
    assert len(names) == 2 and names[1] == names[0] + "#2"
    assert sorted(OrderingState.objects.values_list("handler", flat=True)) == names
    assert seen == [("a", first.event_id), ("b", first.event_id)]


@pytest.mark.django_db
def test_processing_delivers_a_stale_event_when_asked(handlers, on_commit):
    seen = []

    @on("stripe", "test.subscription.*", ordering_key="data.object.id", stale="deliver")
    def sync_subscription(event):
        seen.append((event.event_id, event.ordering.stale, str(event.ordering.newest_version)))

    newer, older = subscription_event("sub_1", 8), subscription_event("sub_1", 3)
    with on_commit(execute=True):
        processing.process_event(newer.pk)
        processing.process_event(older.pk)
    assert seen == [
        (newer.event_id, False, "None"),
        (older.event_id, True, "2026-12-01T12:00:08+00:00"),
    ]


@pytest.mark.django_db
def test_a_failing_ordered_handler_leaves_the_state_as_it_was(handlers, on_commit):
    @on("stripe", "test.subscription.*", ordering_key="data.object.id")
    def sync_subscription(event):
        if event.attempts == 1:
            raise RuntimeError("database hiccup")

    first = subscription_event("sub_1", 2)
    with on_commit(execute=True):
        assert processing.process_event(first.pk) == Status.PROCESSING  # a retry is due
    assert not OrderingState.objects.filter(key="sub_1").exclude(version=None).exists()
    WebhookEvent.objects.filter(pk=first.pk).update(next_attempt_at=None)
    with on_commit(execute=True):
        assert processing.process_event(first.pk) == Status.PROCESSED
    assert state_of(sync_subscription).event_id == first.event_id


@pytest.mark.django_db
def test_an_unreadable_key_fails_the_event_at_once(handlers, on_commit):
    @on("stripe", "test.subscription.*", ordering_key="data.object.customer")
    def sync_subscription(event):
        raise AssertionError("not called")

    event = subscription_event("sub_1", 2)
    with on_commit(execute=True):
        assert processing.process_event(event.pk) == Status.FAILED
    event.refresh_from_db()
    assert event.attempts == 1
    first_line = event.last_error.splitlines()[0]
    assert first_line == (
        "webhooks.exceptions.InvalidOrderingValue: ordered handler "
        f"{handler_name(sync_subscription)}: ordering_key 'data.object.customer' is missing "
        "from the payload"
    )
    assert runs_of(event)[handler_name(sync_subscription)][:2] == (RunStatus.FAILED, 1)


@pytest.mark.django_db
def test_a_raising_key_callable_is_the_handler_raising(handlers, on_commit):
    def key_of(event):
        raise RuntimeError("lookup failed")

    @on("stripe", "test.subscription.*", ordering_key=key_of)
    def sync_subscription(event):
        raise AssertionError("not called")

    event = subscription_event("sub_1", 2)
    with on_commit(execute=True):
        assert processing.process_event(event.pk) == Status.PROCESSING  # a retry is due
    event.refresh_from_db()
    assert event.last_error.splitlines()[:2] == [
        "RuntimeError: lookup failed",
        f"Handler: {handler_name(sync_subscription)}",
    ]
    assert not OrderingState.objects.exists()
    assert runs_of(event)[handler_name(sync_subscription)][:2] == (RunStatus.PROCESSING, 1)
