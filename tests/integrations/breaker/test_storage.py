"""The breaker's storage on its own: plain values in, snapshots out, every change conditional."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta

import pytest
from django.utils import timezone

from integrations.models import BreakerTransition, CircuitBreaker
from integrations.storage import BreakerSnapshot, DatabaseStorage, SuccessBatch
from tests.integrations.factories import CircuitBreakerFactory

pytestmark = pytest.mark.django_db

NOW = float(int(time.time()))
storage = DatabaseStorage()


def test_load_creates_the_row_and_gives_epoch_seconds():
    snapshot = storage.load("rates")
    assert isinstance(snapshot, BreakerSnapshot)
    assert (snapshot.state, snapshot.version, snapshot.expires_at) == ("closed", 0, 0.0)
    assert CircuitBreaker.objects.get(name="rates").pk == snapshot.pk

    opened = timezone.now() - timedelta(seconds=10)
    CircuitBreaker.objects.filter(pk=snapshot.pk).update(state="open", opened_at=opened)
    again = storage.load("rates")
    assert again.opened_at == pytest.approx(opened.timestamp())
    assert CircuitBreaker.objects.count() == 1


def test_a_transition_from_a_state_the_row_has_left_changes_nothing():
    current = storage.load("rates")
    opened = storage.transition(current, "open", now=NOW, reason="tripped")
    assert opened is not None
    assert (opened.state, opened.version, opened.opened_at) == ("open", 1, NOW)

    assert storage.transition(current, "open", now=NOW, reason="tripped again") is None
    stale = replace(opened, version=0)
    assert (
        storage.transition(stale, "half_open", now=NOW, reason="x", probe_lease_until=NOW) is None
    )
    record = BreakerTransition.objects.get()
    assert (record.from_state, record.to_state, record.actor) == ("closed", "open", "system")


def test_a_probe_outcome_is_counted_with_its_transition():
    current = storage.load("rates")
    opened = storage.transition(current, "open", now=NOW, reason="tripped")
    probing = storage.transition(
        opened, "half_open", now=NOW + 30, reason="probing", probe_lease_until=NOW + 45
    )
    assert (probing.half_open_in_flight, probing.probe_lease_until) == (1, NOW + 45)
    reopened = storage.transition(
        probing, "open", now=NOW + 31, reason="probe failed", failure="x" * 600
    )
    row = CircuitBreaker.objects.get(name="rates")
    assert (reopened.opened_at, reopened.half_open_in_flight) == (NOW + 31, 0)
    assert (row.total_failures, row.consecutive_failures, len(row.last_error)) == (1, 1, 500)


def test_a_failure_of_an_earlier_generation_joins_the_totals_only():
    current = storage.load("rates")
    counted = storage.add_failure(
        "rates", current.version, "boom", SuccessBatch(), now=NOW, window=60
    )
    late = storage.add_failure(
        "rates", current.version - 1, "late", SuccessBatch(), now=NOW, window=60
    )
    assert (counted.consecutive_failures, counted.window_failures) == (1, 1)
    assert (late.consecutive_failures, late.window_failures) == (1, 1)
    row = CircuitBreaker.objects.get(name="rates")
    assert (row.total_failures, row.last_error) == (2, "late")


def test_a_person_moves_the_breaker_from_whatever_state_it_is_in():
    CircuitBreakerFactory(name="rates", tripped=True, version=7)
    until = timezone.now() + timedelta(hours=1)
    row = storage.set_state(
        "rates", "forced_open", now=NOW, reason="maintenance", actor="alice", forced_until=until
    )
    assert (row.state, row.version, row.forced_until) == ("forced_open", 8, until)
    assert storage.set_state("nope", "closed", now=NOW, reason="x", actor="alice") is None
    assert not CircuitBreaker.objects.filter(name="nope").exists()
    created = storage.set_state("new", "disabled", now=NOW, reason="x", actor="bob", create=True)
    assert (created.state, created.version) == ("disabled", 1)
    assert list(BreakerTransition.objects.order_by("id").values_list("actor", flat=True)) == [
        "alice",
        "bob",
    ]
