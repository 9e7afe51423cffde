"""The sandbox's outage demo: a real fake vendor over HTTP opens the real breaker in PostgreSQL."""

import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from integrations.breaker import force_open_breaker, reset_breaker
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


@pytest.mark.django_db(transaction=True)
def test_healthy_while_the_breaker_is_open_says_until_when_and_how_to_close_it():
    run("--calls", "6")

    output = run("--healthy", "--calls", "2")

    assert output.count("CircuitOpenError") == 2
    assert "The vendor saw 0 request(s); breaker 'demo-rates' is open." in output
    # RESET_TIMEOUT is 30 s by default: the time the breaker lets a probe through.
    match = re.search(r"It is open until (\d\d:\d\d:\d\d) UTC \(in (\d+) s\)", output)
    assert match, output
    assert 25 <= int(match[2]) <= 30
    assert "no call reached it while the breaker is open" in output
    assert "wait until then, or reset the breaker now with " in output
    assert "`manage.py circuit_breakers reset demo-rates`" in output
    assert "with --healthy" not in output  # it was run with --healthy: that is not the fix


@pytest.mark.django_db(transaction=True)
def test_a_breaker_held_open_by_an_operator_says_so():
    run("--calls", "1")  # the breaker's row exists
    until = timezone.now() + timedelta(minutes=10)
    force_open_breaker("demo-rates", actor="admin", reason="vendor maintenance", until=until)

    output = run("--healthy", "--calls", "1")

    assert "breaker 'demo-rates' is forced_open." in output
    match = re.search(r"An operator holds it open until \d\d:\d\d:\d\d UTC \(in (\d+) s\)", output)
    assert match, output
    assert 590 <= int(match[1]) <= 600
    assert "wait until then" not in output  # only a reset ends it early
    assert "reset the breaker now with `manage.py circuit_breakers reset demo-rates`" in output

    force_open_breaker("demo-rates", actor="admin", reason="vendor maintenance")  # no end
    assert "An operator holds it open until someone resets it" in run("--calls", "1")


@pytest.mark.django_db
def test_calls_must_be_positive():
    with pytest.raises(CommandError, match="--calls must be at least 1"):
        run("--calls", "0")


@pytest.mark.django_db(transaction=True)
def test_the_cooldown_demo_holds_the_next_caller():
    output = run("--cooldown")
    assert "call 1: RateLimitedError" in output
    assert "fleet: no cool-down" not in output
    assert re.search(r"fleet: cool-down \d\.\ds \(429 from demo-fleet\.rate\)", output)
    waited = float(re.search(r"after waiting (\d+\.\d)s", output).group(1))
    assert 1.5 <= waited <= 2.5
    gap = float(re.search(r"(\d+\.\d)s apart", output).group(1))
    assert gap >= 1.8


@pytest.mark.django_db(transaction=True)
def test_the_budget_demo_stops_most_retries():
    output = run("--budget", "--calls", "10")
    assert output.count("(retry budget spent: not retried)") >= 7
    seen = int(re.search(r"The vendor saw (\d+) request\(s\) for 10 call", output).group(1))
    assert 10 < seen <= 13  # 10 first attempts + 0.1 x 10 + 2 retries, where 30 without it
    assert "budget 3/3 retries" in output


def test_the_fleet_demos_need_a_redis(settings):
    settings.INTEGRATIONS = {**settings.INTEGRATIONS, "REDIS_URL": None}
    with pytest.raises(CommandError, match="INTEGRATIONS_REDIS_URL"):
        run("--budget")
