"""The breaker models: migrations in step with the code, and a row per name."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.db import IntegrityError

from integrations.models import CircuitBreaker
from tests.integrations.factories import CircuitBreakerFactory


@pytest.mark.django_db
def test_migrations_are_in_step_with_the_models():
    out = StringIO()
    call_command("makemigrations", "integrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


@pytest.mark.django_db
def test_name_is_unique():
    CircuitBreakerFactory(name="rates")
    with pytest.raises(IntegrityError):
        CircuitBreaker.objects.create(name="rates")


@pytest.mark.django_db
def test_counts_are_what_a_transition_snapshots():
    breaker = CircuitBreakerFactory(tripped=True)
    counts = breaker.counts()
    assert counts["consecutive_failures"] == 5
    assert set(counts) >= {"total_successes", "total_failures", "half_open_in_flight"}
