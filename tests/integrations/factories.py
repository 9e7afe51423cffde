"""factory-boy factories for the integrations models."""

from __future__ import annotations

import factory
from django.utils import timezone

from integrations.models import BreakerState, BreakerTransition, CircuitBreaker


class CircuitBreakerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = CircuitBreaker
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"service-{n}")
    state = BreakerState.CLOSED

    class Params:
        #: ``CircuitBreakerFactory(tripped=True)``: open since now, after 5 failures.
        tripped = factory.Trait(
            state=BreakerState.OPEN,
            consecutive_failures=5,
            total_failures=5,
            opened_at=factory.LazyFunction(timezone.now),
            last_failure_at=factory.LazyFunction(timezone.now),
            last_error="exchange-rates.rate: The vendor could not be reached",
        )


class BreakerTransitionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = BreakerTransition

    breaker = factory.SubFactory(CircuitBreakerFactory)
    from_state = BreakerState.CLOSED
    to_state = BreakerState.OPEN
    reason = "5 consecutive failures (threshold 5)"
    actor = BreakerTransition.SYSTEM
    snapshot = factory.LazyAttribute(lambda o: o.breaker.counts())
