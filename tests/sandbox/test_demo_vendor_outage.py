"""The sandbox's outage demo: a real fake vendor over HTTP opens the real breaker in PostgreSQL."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from integrations.breaker import reset_breaker
from integrations.models import BreakerTransition, CircuitBreaker


def run(*args):
    out = StringIO()
    call_command("demo_vendor_outage", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_a_down_vendor_opens_the_breaker_and_later_calls_fail_fast():
    output = run("--calls", "8")

    breaker = CircuitBreaker.objects.get(name="demo-rates")
    assert breaker.state == "open"
    # Threshold 5, 2 attempts per call: calls 1-2 fail twice each; call 3's first attempt is the
    # 5th failure and opens the breaker, which refuses its retry; calls 4-8 send nothing.
    assert "The vendor saw 5 request(s); breaker 'demo-rates' is open." in output
    assert output.count("IntegrationUnavailable") == 2
    assert output.count("CircuitOpenError") == 6
    assert BreakerTransition.objects.filter(
        breaker=breaker, from_state="closed", to_state="open"
    ).exists()


@pytest.mark.django_db(transaction=True)
def test_after_a_reset_a_healthy_vendor_answers():
    run("--calls", "6")
    reset_breaker("demo-rates", actor="admin", reason="vendor is back")

    output = run("--healthy", "--calls", "2")

    assert output.count("EUR rate 1.0842") == 2
    assert "breaker 'demo-rates' is closed." in output
    assert CircuitBreaker.objects.get(name="demo-rates").state == "closed"


@pytest.mark.django_db
def test_calls_must_be_positive():
    with pytest.raises(CommandError, match="--calls must be at least 1"):
        run("--calls", "0")
