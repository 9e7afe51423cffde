"""The database-backed breaker against a plain in-memory model of the policy.

Hypothesis drives random sequences of calls (acquire, report a held permit's success or
failure, give it back, move the clock, operator actions) and, after every step, the breaker's
row and answers must match what the model of the policy says. Held permits are reported in any
order, so late outcomes (of a generation that has ended since) are part of every run."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from integrations.breaker import (
    ManualClock,
    clear_local_cache,
    disable_breaker,
    force_open_breaker,
    get_breaker,
    reset_breaker,
)
from integrations.exceptions import CircuitOpenError, IntegrationUnavailable
from integrations.models import BreakerTransition, CircuitBreaker
from integrations.policies import BreakerPolicy

NAME = "modelled"
THRESHOLD, RESET, MAX_PROBES, LEASE = 3, 10.0, 2, 5.0


@dataclass
class Model:
    """The policy as written in the README, in the simplest terms."""

    state: str = "closed"
    version: int = 0
    consecutive: int = 0
    total_failures: int = 0
    opened_at: float = 0.0
    in_flight: int = 0
    lease_until: float = 0.0
    transitions: list[tuple[str, str]] = field(default_factory=list)

    def move(self, to_state: str) -> None:
        self.transitions.append((self.state, to_state))
        self.state = to_state
        self.version += 1

    def acquire(self, now: float) -> tuple[str, int] | None:
        if self.state in ("closed", "disabled"):
            return (self.state, self.version)
        if self.state == "open" and now >= self.opened_at + RESET:
            self.move("half_open")
            self.in_flight, self.lease_until = 1, now + LEASE
            return ("half_open", self.version)
        if self.state == "half_open":
            lease_over = self.lease_until < now
            if self.in_flight < MAX_PROBES or lease_over:
                self.in_flight = 1 if lease_over else self.in_flight + 1
                self.lease_until = now + LEASE
                return ("half_open", self.version)
        return None

    def late(self, permit: tuple[str, int]) -> bool:
        """An outcome counts only against the generation (version) that admitted its call;
        one of an earlier generation goes to the totals only."""
        return permit[1] != self.version

    def success(self, permit: tuple[str, int]) -> None:
        if self.late(permit):
            return
        if permit[0] == "half_open":
            self.move("closed")
            self.consecutive = self.in_flight = 0
        elif permit[0] == "closed":
            self.consecutive = 0

    def failure(self, permit: tuple[str, int], now: float) -> None:
        self.total_failures += 1
        if self.late(permit):
            return
        if permit[0] == "half_open":
            self.move("open")
            self.consecutive += 1
            self.opened_at, self.in_flight = now, 0
            return
        self.consecutive += 1
        if self.state == "closed" and self.consecutive >= THRESHOLD:
            self.move("open")
            self.opened_at, self.in_flight = now, 0

    def release(self, permit: tuple[str, int]) -> None:
        if permit[0] == "half_open" and (self.state, self.version) == permit and self.in_flight:
            self.in_flight -= 1

    def operator(self, to_state: str) -> None:
        self.move(to_state)
        self.in_flight = 0
        if to_state == "closed":
            self.consecutive = 0


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        BreakerTransition.objects.all().delete()
        CircuitBreaker.objects.all().delete()
        clear_local_cache()
        self.clock = ManualClock(1_000_000.0)
        policy = BreakerPolicy(
            failure_threshold=THRESHOLD, reset_timeout=RESET, half_open_max_calls=MAX_PROBES
        )
        self.breaker = get_breaker(NAME, policy, clock=self.clock, probe_lease=LEASE)
        self.model = Model()
        self.held: list[tuple[object, tuple[str, int]]] = []

    @rule()
    def acquire(self) -> None:
        expected = self.model.acquire(self.clock())
        try:
            permit = self.breaker.acquire("op")
        except CircuitOpenError as exc:
            assert expected is None, f"refused, but the model grants {expected}"
            if self.model.state == "open":
                assert exc.retry_after == pytest.approx(self.model.opened_at + RESET - self.clock())
            return
        assert expected is not None, f"granted {permit!r}, but the model refuses"
        assert permit.state == expected[0]
        self.held.append((permit, expected))

    @precondition(lambda self: self.held)
    @rule(index=st.integers(min_value=0), failed=st.booleans())
    def report(self, index: int, failed: bool) -> None:
        permit, expected = self.held.pop(index % len(self.held))
        if failed:
            self.breaker.record_failure(permit, IntegrationUnavailable(NAME, "op"))
            self.model.failure(expected, self.clock())
        else:
            self.breaker.record_success(permit)
            self.model.success(expected)

    @precondition(lambda self: self.held)
    @rule(index=st.integers(min_value=0))
    def release(self, index: int) -> None:
        permit, expected = self.held.pop(index % len(self.held))
        self.breaker.release(permit)
        self.model.release(expected)

    @rule(seconds=st.sampled_from([0.5, 2.0, 4.0, 5.5, 10.0, 11.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(action=st.sampled_from(["closed", "forced_open", "disabled"]))
    def operator(self, action: str) -> None:
        act = {
            "closed": reset_breaker,
            "forced_open": force_open_breaker,
            "disabled": disable_breaker,
        }[action]
        act(NAME, actor="tester", reason="model", create=True)
        self.model.operator(action)

    @invariant()
    def row_matches_the_model(self) -> None:
        row = CircuitBreaker.objects.filter(name=NAME).first()
        if row is None:
            assert self.model.transitions == []
            return
        assert row.state == self.model.state
        assert row.consecutive_failures == self.model.consecutive
        assert row.total_failures == self.model.total_failures
        if row.state == "half_open":
            assert row.half_open_in_flight == self.model.in_flight
        recorded = list(
            BreakerTransition.objects.filter(breaker=row)
            .order_by("id")
            .values_list("from_state", "to_state")
        )
        assert recorded == self.model.transitions


@pytest.mark.django_db
def test_breaker_follows_the_policy_model():
    runner = BreakerMachine.TestCase
    runner.settings = settings(
        max_examples=60,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    runner().runTest()
