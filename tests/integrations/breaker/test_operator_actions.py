"""Operator actions: each records who, why and the counts, and takes effect in this process at
once. A person's transition is written by the same path as the breaker's own."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from integrations.breaker import (
    MAX_HOLD,
    disable_breaker,
    force_open_breaker,
    get_breaker,
    reset_breaker,
    set_breaker_overrides,
)
from integrations.exceptions import (
    BreakerNotFound,
    CircuitOpenError,
    IntegrationUnavailable,
    InvalidExpiry,
)
from integrations.models import BreakerTransition, CircuitBreaker
from integrations.policies import BreakerPolicy
from integrations.signals import breaker_transitioned
from tests.integrations.factories import BreakerTransitionFactory, CircuitBreakerFactory

pytestmark = pytest.mark.django_db


def test_reset_closes_and_zeroes_the_failure_counts_but_keeps_totals():
    CircuitBreakerFactory(name="rates", tripped=True, half_open_in_flight=1, window_failures=4)
    breaker = reset_breaker("rates", actor="alice", reason="vendor fixed")
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 0 and breaker.half_open_in_flight == 0
    assert breaker.window_failures == 0 and breaker.opened_at is None
    assert breaker.total_failures == 5
    record = BreakerTransition.objects.get(breaker=breaker)
    assert (record.from_state, record.to_state) == ("open", "closed")
    assert (record.actor, record.reason) == ("alice", "vendor fixed")
    assert record.snapshot["total_failures"] == 5
    assert record.snapshot["consecutive_failures"] == 0


def test_reset_without_reason_says_reset():
    CircuitBreakerFactory(name="rates", tripped=True)
    reset_breaker("rates", actor="alice")
    assert BreakerTransition.objects.get().reason == "reset"


def test_force_open_takes_effect_in_this_process_at_once():
    b = get_breaker("rates")
    b.acquire("rate")  # snapshot: closed
    force_open_breaker("rates", actor="cli:ops", reason="vendor incident")
    with pytest.raises(CircuitOpenError) as caught:
        b.acquire("rate")
    assert caught.value.retry_after is None
    assert "operator" in str(caught.value)


def test_force_open_with_expiry_gives_retry_after():
    until = timezone.now() + timedelta(minutes=10)
    CircuitBreakerFactory(name="rates")
    breaker = force_open_breaker("rates", actor="api:bob", reason="maintenance", until=until)
    assert breaker.state == "forced_open" and breaker.forced_until == until
    with pytest.raises(CircuitOpenError) as caught:
        get_breaker("rates").acquire("rate")
    assert 590 < caught.value.retry_after <= 600


def test_disable_lets_calls_through():
    CircuitBreakerFactory(name="rates", tripped=True)
    disable_breaker("rates", actor="alice", reason="accept errors")
    assert get_breaker("rates").acquire("rate").state == "disabled"
    assert BreakerTransition.objects.get().to_state == "disabled"


def test_reset_ends_a_forced_state_and_its_expiry():
    CircuitBreakerFactory(
        name="rates", state="forced_open", forced_until=timezone.now() + timedelta(hours=1)
    )
    breaker = reset_breaker("rates", actor="alice")
    assert breaker.state == "closed" and breaker.forced_until is None


@pytest.mark.parametrize("action", [reset_breaker, force_open_breaker, disable_breaker])
def test_unknown_breaker(action):
    with pytest.raises(BreakerNotFound, match="nope"):
        action("nope", actor="alice", reason="x")
    assert not CircuitBreaker.objects.exists()
    assert not BreakerTransition.objects.exists()


def test_create_makes_the_row_for_a_service_not_called_yet():
    breaker = force_open_breaker("new-svc", actor="test", reason="forced", create=True)
    assert breaker.state == "forced_open"
    assert BreakerTransition.objects.get().from_state == "closed"


def test_a_configured_service_gets_its_row_without_create(settings):
    settings.INTEGRATIONS = {"SERVICES": {"exchange-rates": {}}}
    breaker = disable_breaker("exchange-rates", actor="test", reason="maintenance")
    assert breaker.state == "disabled"
    with pytest.raises(BreakerNotFound):
        disable_breaker("typo", actor="test", reason="x")
    assert not CircuitBreaker.objects.filter(name="typo").exists()


@pytest.mark.parametrize(
    "make_until",
    [
        lambda: timezone.now() - timedelta(seconds=1),  # past
        lambda: datetime(2099, 1, 1),  # naive
        lambda: timezone.now() + MAX_HOLD + timedelta(minutes=1),  # absurdly far
    ],
    ids=["past", "naive", "too-far"],
)
def test_invalid_expiry_changes_nothing(make_until):
    # Computed when the test runs, not at collection (a long suite would bring "too-far" within
    # MAX_HOLD).
    until = make_until()
    CircuitBreakerFactory(name="rates")
    with pytest.raises(InvalidExpiry):
        force_open_breaker("rates", actor="alice", reason="x", until=until)
    assert CircuitBreaker.objects.get().state == "closed"
    assert not BreakerTransition.objects.exists()


def test_each_action_sends_the_signal_after_commit(django_capture_on_commit_callbacks):
    received = []

    def receiver(sender, **kwargs):
        received.append((kwargs["from_state"], kwargs["to_state"], kwargs["actor"]))

    breaker_transitioned.connect(receiver)
    try:
        CircuitBreakerFactory(name="rates")
        with django_capture_on_commit_callbacks(execute=True):
            force_open_breaker("rates", actor="alice", reason="x")
            disable_breaker("rates", actor="alice", reason="y")
            reset_breaker("rates", actor="bob")
    finally:
        breaker_transitioned.disconnect(receiver)
    assert received == [
        ("closed", "forced_open", "alice"),
        ("forced_open", "disabled", "alice"),
        ("disabled", "closed", "bob"),
    ]


def test_a_failing_signal_receiver_does_not_undo_the_action(
    django_capture_on_commit_callbacks, caplog
):
    def broken(sender, **kwargs):
        raise RuntimeError("receiver bug")

    breaker_transitioned.connect(broken)
    try:
        CircuitBreakerFactory(name="rates")
        with django_capture_on_commit_callbacks(execute=True):
            force_open_breaker("rates", actor="alice", reason="x")
    finally:
        breaker_transitioned.disconnect(broken)
    assert CircuitBreaker.objects.get().state == "forced_open"
    assert BreakerTransition.objects.count() == 1
    assert "receiver bug" in caplog.text


def test_factories_build_consistent_rows():
    transition = BreakerTransitionFactory(breaker__tripped=True)
    assert transition.breaker.state == "open"
    assert transition.snapshot["consecutive_failures"] == 5
    assert str(transition.breaker) == f"{transition.breaker.name} (open)"


def test_a_persons_transition_is_written_as_the_breakers_own(
    django_capture_on_commit_callbacks, caplog
):
    received = []

    def receiver(sender, **kwargs):
        received.append(kwargs)

    breaker = get_breaker("rates", BreakerPolicy(failure_threshold=1))
    breaker_transitioned.connect(receiver)
    try:
        with (
            django_capture_on_commit_callbacks(execute=True),
            caplog.at_level(logging.INFO, logger="integrations.breaker"),
        ):
            error = IntegrationUnavailable("rates", "rate", "server error")
            breaker.record_failure(breaker.acquire("rate"), error)  # the system: closed -> open
            opened = CircuitBreaker.objects.get(name="rates")
            closed = reset_breaker("rates", actor="alice", reason="vendor fixed")
    finally:
        breaker_transitioned.disconnect(receiver)

    assert (opened.state, closed.state) == ("open", "closed")
    assert closed.version == opened.version + 1
    system, person = BreakerTransition.objects.order_by("id")
    for record, row in ((system, opened), (person, closed)):
        assert record.created_at == row.updated_at  # one statement moved the row, one moment
        assert record.snapshot == row.counts()
    assert (person.from_state, person.to_state, person.actor, person.reason) == (
        "open",
        "closed",
        "alice",
        "vendor fixed",
    )
    assert [(r["from_state"], r["to_state"], r["actor"]) for r in received] == [
        ("closed", "open", "system"),
        ("open", "closed", "alice"),
    ]
    assert set(received[0]) == set(received[1])
    assert received[1]["breaker"].pk == closed.pk
    assert received[1]["breaker"].state == "closed"
    lines = [r.getMessage() for r in caplog.records if r.name == "integrations.breaker"]
    assert lines == [
        "circuit breaker rates: closed -> open (1 consecutive failures (threshold 1)) by system",
        "circuit breaker rates: open -> closed (vendor fixed) by alice",
    ]


def test_policy_overrides_take_effect_in_this_process_at_once():
    breaker = get_breaker("rates", BreakerPolicy(failure_threshold=1, reset_timeout=30.0))
    breaker.record_failure(breaker.acquire("rate"), IntegrationUnavailable("rates", "rate"))
    with pytest.raises(CircuitOpenError) as caught:
        breaker.acquire("rate")  # the snapshot says: open for 30 s
    assert caught.value.retry_after == pytest.approx(30.0, abs=1)

    set_breaker_overrides("rates", {"reset_timeout": 600.0, "failure_threshold": 3})

    with pytest.raises(CircuitOpenError) as caught:
        breaker.acquire("rate")
    assert caught.value.retry_after == pytest.approx(600.0, abs=1)
    row = CircuitBreaker.objects.get(name="rates")
    assert (row.reset_timeout, row.failure_threshold, row.half_open_max_calls) == (600.0, 3, None)
    assert (row.state, row.consecutive_failures) == ("open", 1)
    assert BreakerTransition.objects.count() == 1  # the opening; overrides are no transition


def test_only_policy_overrides_can_be_set():
    CircuitBreakerFactory(name="rates", consecutive_failures=2)
    with pytest.raises(ValueError, match="consecutive_failures"):
        set_breaker_overrides("rates", {"consecutive_failures": 0, "failure_threshold": 1})
    row = CircuitBreaker.objects.get(name="rates")
    assert (row.consecutive_failures, row.failure_threshold) == (2, None)
