"""The sandbox's async demo: concurrent calls through AsyncServiceClient to a real fake vendor,
feeding the real breaker in PostgreSQL."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from integrations.breaker import force_open_breaker
from integrations.models import CircuitBreaker


def run(*args):
    out = StringIO()
    call_command("demo_async_calls", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db(transaction=True)
def test_healthy_calls_run_at_once_on_one_loop():
    output = run("--calls", "8")

    assert output.count("EUR rate 1.0842") == 8
    assert "the vendor saw 8 request(s); breaker 'demo-rates' is closed." in output
    took = float(output.split("concurrent call(s) took ")[1].split(" s")[0])
    assert took < 8 * 0.2  # together, not one after the other (each takes 0.2 s)


@pytest.mark.django_db(transaction=True)
def test_a_down_vendor_opens_the_shared_breaker():
    output = run("--down", "--calls", "10")

    assert "breaker 'demo-rates' is open." in output
    assert CircuitBreaker.objects.get(name="demo-rates").state == "open"
    # Each call fails: with the vendor's error, or, when its retry came after the breaker
    # opened (which of the 10 concurrent calls retried first is the loop's choice), failing
    # fast; the vendor's failures (5 in a row at least) opened it.
    calls = [line for line in output.splitlines() if line.startswith("call ")]
    assert len(calls) == 10
    assert all(": IntegrationUnavailable: " in c or ": CircuitOpenError: " in c for c in calls)
    seen = int(output.split("the vendor saw ")[1].split(" request")[0])
    assert seen >= 5
    # Then the sync and the async clients alike fail fast without reaching the vendor.
    again = run("--calls", "3")
    assert again.count("CircuitOpenError") == 3
    assert "the vendor saw 0 request(s)" in again


@pytest.mark.django_db(transaction=True)
def test_a_breaker_held_open_by_an_operator_refuses_every_call():
    force_open_breaker("demo-rates", actor="admin", reason="vendor maintenance", create=True)

    output = run("--calls", "4")

    assert output.count("CircuitOpenError") == 4
    assert "held open by an operator" in output
    assert "the vendor saw 0 request(s)" in output


@pytest.mark.parametrize("calls", ["0", "-1", "51", "100000"])
def test_calls_out_of_bounds_are_refused(calls):
    with pytest.raises(CommandError, match="--calls must be from 1 to 50"):
        run("--calls", calls)


@pytest.mark.parametrize("calls", ["abc", "", "1.5"])
def test_malformed_calls_are_refused(calls):
    with pytest.raises(CommandError):
        run("--calls", calls)


@pytest.mark.django_db(transaction=True)
def test_the_database_down_fails_open_and_says_so():
    """Every query of the breaker fails (as with PostgreSQL gone): the calls still go out
    (FAIL_OPEN_ON_DB_ERROR, the default), and the breaker's state reads as degraded."""
    from django.db import OperationalError, connection

    def database_down(execute, sql, params, many, context):
        raise OperationalError("connection refused")

    with connection.execute_wrapper(database_down):
        output = run("--calls", "3")

    assert output.count("EUR rate 1.0842") == 3
    assert "breaker 'demo-rates' is degraded." in output
