"""``circuit_breakers list|reset|open|disable``: every mode, bad input, exit codes, and the
History (``LogEntry``) each action writes by ``--user`` or the system user."""

from __future__ import annotations

import getpass
import os
import subprocess
import sys
from datetime import UTC, timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from integrations.breaker import MAX_HOLD
from integrations.management.commands.circuit_breakers import (
    EXIT_BAD_DATE,
    EXIT_UNKNOWN_BREAKER,
    EXIT_USAGE,
)
from integrations.models import BreakerTransition, CircuitBreaker
from tests import postgres
from tests.history import history
from tests.integrations.factories import CircuitBreakerFactory
from tether.audit import SYSTEM_USERNAME

pytestmark = pytest.mark.django_db

ACTOR = f"cli:{getpass.getuser()}"


def run(*args: str) -> str:
    out = StringIO()
    call_command("circuit_breakers", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_list_shows_every_breaker():
    CircuitBreakerFactory(name="exchange-rates", tripped=True)
    CircuitBreakerFactory(name="geocoder", total_successes=42)
    out = run("list")
    lines = out.splitlines()
    assert lines[0].startswith("NAME")
    assert lines[1].split()[:5] == ["exchange-rates", "open", "5", "5", "0"]
    assert "The vendor could not be reached" in lines[1]
    assert lines[2].split()[:5] == ["geocoder", "closed", "0", "0", "42"]


def test_list_when_there_are_none(settings):
    settings.INTEGRATIONS = {}
    assert "no circuit breakers yet" in run("list")


def test_list_is_a_per_service_status_view_with_the_fleet_policies(settings):
    """Configured services show before their first call; each service with fleet policies gets
    a line of their state in Redis: rate used / limit, cool-down, retry budget, bulkhead."""
    from integrations import shared_state

    settings.INTEGRATIONS = {
        "REDIS_URL": settings.REDIS_URL,
        "SERVICES": {
            "geocoder": {
                "RATE_LIMIT": "80/s",
                "SHARED_COOLDOWN": True,
                "RETRY_BUDGET": {"RATIO": 0.2, "MIN_RETRIES_PER_SECOND": 1, "WINDOW": 10},
                "CLUSTER_MAX_CONCURRENCY": 3,
            },
            "quiet": {},
        },
    }
    CircuitBreakerFactory(name="exchange-rates", tripped=True)
    shared_state.start_cooldown("geocoder", 30, "429 from geocoder.lookup")
    shared_state.take_lease("geocoder", limit=3, lease=30, token="a-call")
    lines = run("list").splitlines()
    assert [line.split()[0] for line in lines[1:] if not line.startswith(" ")] == [
        "exchange-rates",
        "geocoder",
        "quiet",
    ]
    assert "(no call yet)" in lines[2]
    fleet = lines[3]
    assert fleet.startswith("    fleet: rate 0/80 per s; cool-down ")
    assert "(429 from geocoder.lookup)" in fleet
    assert "budget 0/10 retries" in fleet
    assert "in flight 1/3" in fleet
    assert len(lines) == 5  # exchange-rates and quiet have no fleet policies: no second line


def test_reset():
    CircuitBreakerFactory(name="exchange-rates", tripped=True)
    out = run("reset", "exchange-rates", "--reason", "vendor fixed")
    assert "exchange-rates: closed" in out
    record = BreakerTransition.objects.get()
    assert (record.from_state, record.to_state) == ("open", "closed")
    assert (record.actor, record.reason) == (ACTOR, "vendor fixed")


def test_open_with_until():
    CircuitBreakerFactory(name="exchange-rates")
    until = (timezone.now() + timedelta(hours=2)).replace(microsecond=0)
    out = run("open", "exchange-rates", "--reason", "maintenance", "--until", until.isoformat())
    assert "exchange-rates: forced_open until" in out
    breaker = CircuitBreaker.objects.get()
    assert breaker.state == "forced_open" and breaker.forced_until == until
    record = BreakerTransition.objects.get()
    assert (record.to_state, record.actor, record.reason) == ("forced_open", ACTOR, "maintenance")


def test_open_until_a_date_means_its_midnight():
    CircuitBreakerFactory(name="exchange-rates")
    day = (timezone.localdate() + timedelta(days=3)).isoformat()
    run("open", "exchange-rates", "--reason", "holiday", "--until", day)
    forced_until = timezone.localtime(CircuitBreaker.objects.get().forced_until)
    assert forced_until.date().isoformat() == day
    assert (forced_until.hour, forced_until.minute) == (0, 0)


def test_disable():
    CircuitBreakerFactory(name="exchange-rates", tripped=True)
    out = run("disable", "exchange-rates", "--reason", "flaky but needed")
    assert "exchange-rates: disabled" in out
    assert CircuitBreaker.objects.get().state == "disabled"
    assert BreakerTransition.objects.get().actor == ACTOR


def expect_error(returncode: int, *args: str) -> str:
    with pytest.raises(CommandError) as caught:
        run(*args)
    assert caught.value.returncode == returncode
    return str(caught.value)


@pytest.mark.parametrize("action", ["reset", "open", "disable"])
def test_unknown_name(action):
    CircuitBreakerFactory(name="exchange-rates")
    message = expect_error(EXIT_UNKNOWN_BREAKER, action, "nope", "--reason", "x")
    assert "no circuit breaker named 'nope'" in message
    assert "known breakers: exchange-rates" in message
    assert not BreakerTransition.objects.exists()


def test_a_configured_service_can_be_opened_before_its_first_call(settings):
    # The same rule as the API's: a configured service's breaker is created on demand.
    settings.INTEGRATIONS = {"SERVICES": {"exchange-rates": {}}}
    assert "exchange-rates: forced_open" in run("open", "exchange-rates", "--reason", "not yet")
    assert CircuitBreaker.objects.get(name="exchange-rates").state == "forced_open"
    # an unconfigured name is still unknown
    expect_error(EXIT_UNKNOWN_BREAKER, "open", "typo", "--reason", "x")
    assert not CircuitBreaker.objects.filter(name="typo").exists()


@pytest.mark.parametrize("action", ["reset", "open", "disable"])
def test_missing_name(action):
    assert "needs a breaker NAME" in expect_error(EXIT_USAGE, action, "--reason", "x")


@pytest.mark.parametrize("action", ["open", "disable"])
def test_open_and_disable_need_a_reason(action):
    CircuitBreakerFactory(name="exchange-rates")
    assert "needs --reason" in expect_error(EXIT_USAGE, action, "exchange-rates")
    assert "needs --reason" in expect_error(EXIT_USAGE, action, "exchange-rates", "--reason", " ")
    assert CircuitBreaker.objects.get().state == "closed"


def test_reset_does_not_take_until():
    CircuitBreakerFactory(name="exchange-rates", tripped=True)
    expect_error(EXIT_USAGE, "reset", "exchange-rates", "--until", "2099-01-01")
    assert CircuitBreaker.objects.get().state == "open"


@pytest.mark.parametrize("until", ["tomorrow", "2026-13-45", "2026-02-30T10:00", "", "12:00"])
def test_bad_until(until):
    CircuitBreakerFactory(name="exchange-rates")
    if until == "":
        # An empty --until is the same as none given.
        run("open", "exchange-rates", "--reason", "x", "--until", until)
        assert CircuitBreaker.objects.get().forced_until is None
        return
    assert "ISO 8601" in expect_error(
        EXIT_BAD_DATE, "open", "exchange-rates", "--reason", "x", "--until", until
    )
    assert CircuitBreaker.objects.get().state == "closed"


@pytest.mark.parametrize("action", ["open", "disable"])
def test_until_out_of_range(action):
    # In the future, but year 10000 once in UTC: PostgreSQL would store it and then fail every
    # read of the breaker.
    CircuitBreakerFactory(name="exchange-rates")
    message = expect_error(
        EXIT_BAD_DATE, action, "exchange-rates", "--reason", "x",
        "--until", "9999-12-31T23:59:59-23:59",
    )  # fmt: skip
    assert message.startswith("--until ") and "outside the years 1-9999" in message
    breaker = CircuitBreaker.objects.get()
    assert (breaker.state, breaker.forced_until) == ("closed", None)


def test_until_in_the_past():
    CircuitBreakerFactory(name="exchange-rates")
    message = expect_error(
        EXIT_BAD_DATE, "disable", "exchange-rates", "--reason", "x", "--until", "2001-01-01"
    )
    assert "not in the future" in message
    assert CircuitBreaker.objects.get().state == "closed"


def test_until_further_than_the_longest_hold():
    CircuitBreakerFactory(name="exchange-rates")
    far = (timezone.now() + MAX_HOLD + timedelta(days=1)).date().isoformat()
    message = expect_error(EXIT_BAD_DATE, "open", "exchange-rates", "--reason", "x", "--until", far)
    assert "more than 366 days away" in message
    assert CircuitBreaker.objects.get().state == "closed"


def test_unknown_action():
    with pytest.raises(CommandError, match="invalid choice"):
        run("explode", "exchange-rates")


@postgres.SUBPROCESS
@pytest.mark.django_db(transaction=True)
def test_exit_codes_from_a_real_shell():
    """As an operator runs it: ``manage.py circuit_breakers`` in its own process."""
    CircuitBreakerFactory(name="exchange-rates")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "TETHER_DB_NAME": connection.settings_dict["NAME"],
    }
    root = Path(__file__).resolve().parents[3]

    def shell(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            # System checks are other tests' business; here only this command is under test.
            [sys.executable, "manage.py", "circuit_breakers", "--skip-checks", *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert shell("open", "exchange-rates", "--reason", "drill").returncode == 0
    unknown = shell("reset", "nope")
    assert unknown.returncode == EXIT_UNKNOWN_BREAKER
    assert "no circuit breaker named 'nope'" in unknown.stderr
    assert shell("open", "exchange-rates", "--reason", "x", "--until", "soon").returncode == (
        EXIT_BAD_DATE
    )
    assert shell("bogus").returncode == 2  # argparse's own usage error
    nobody = shell("reset", "exchange-rates", "--user", "nobody")
    assert nobody.returncode == EXIT_USAGE and "no user named 'nobody'" in nobody.stderr
    listing = shell("list")
    assert listing.returncode == 0 and "forced_open" in listing.stdout


# -- the History (LogEntry) of each action ----------------------------------------------------


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("reset", "Reset via command circuit_breakers: INC-7 (open -> closed)"),
        ("open", "Force opened via command circuit_breakers: INC-7 (open -> forced_open)"),
        ("disable", "Disabled via command circuit_breakers: INC-7 (open -> disabled)"),
    ],
)
def test_each_action_writes_a_log_entry_by_the_user_given(django_user_model, action, message):
    django_user_model.objects.create_user("alice")
    breaker = CircuitBreakerFactory(name="exchange-rates", tripped=True)
    run(action, "exchange-rates", "--reason", "INC-7", "--user", "alice")
    assert history(breaker) == [("alice", CHANGE, message)]
    assert BreakerTransition.objects.get().actor == ACTOR  # the transition keeps the OS user


def test_the_log_entry_names_the_until_in_utc():
    breaker = CircuitBreakerFactory(name="exchange-rates")
    until = (timezone.now() + timedelta(hours=2)).replace(microsecond=0)
    run("open", "exchange-rates", "--reason", "maintenance", "--until", until.isoformat())
    [(_, _, message)] = history(breaker)
    assert message == (
        "Force opened via command circuit_breakers: maintenance (closed -> forced_open, "
        f"until {until.astimezone(UTC).isoformat()})"
    )


def test_without_user_the_log_entry_names_the_inactive_system_user(django_user_model):
    breaker = CircuitBreakerFactory(name="exchange-rates", tripped=True)
    run("reset", "exchange-rates")
    assert history(breaker) == [
        (SYSTEM_USERNAME, CHANGE, "Reset via command circuit_breakers (open -> closed)")
    ]
    system = django_user_model.objects.get(username=SYSTEM_USERNAME)
    assert not system.is_active and not system.has_usable_password()


def test_an_unknown_user_is_a_usage_error_and_changes_nothing():
    breaker = CircuitBreakerFactory(name="exchange-rates", tripped=True)
    message = expect_error(EXIT_USAGE, "reset", "exchange-rates", "--user", "mallory")
    assert message == "--user: no user named 'mallory'"
    assert CircuitBreaker.objects.get().state == "open"
    assert not BreakerTransition.objects.exists() and not history(breaker)


@pytest.mark.parametrize(
    "args",
    [
        ("open", "exchange-rates", "--reason", "x", "--until", "2001-01-01"),
        ("open", "exchange-rates", "--reason", "x", "--until", "soon"),
        ("disable", "exchange-rates", "--reason", "x", "--until", "9999-12-31T23:59:59-23:59"),
    ],
)
def test_a_refused_until_writes_no_log_entry(args):
    breaker = CircuitBreakerFactory(name="exchange-rates")
    expect_error(EXIT_BAD_DATE, *args)
    assert not history(breaker) and not LogEntry.objects.exists()


@pytest.mark.parametrize("action", ["reset", "open", "disable"])
def test_an_unknown_breaker_writes_no_log_entry(action):
    CircuitBreakerFactory(name="exchange-rates")
    expect_error(EXIT_UNKNOWN_BREAKER, action, "nope", "--reason", "x")
    assert not LogEntry.objects.exists()


def test_the_reason_is_bounded_like_the_admins_and_the_apis():
    breaker = CircuitBreakerFactory(name="exchange-rates", tripped=True)
    run("reset", "exchange-rates", "--reason", "r" * 500)
    assert BreakerTransition.objects.get().reason == "r" * 500
    with pytest.raises(CommandError, match="longer than 500 characters"):
        run("open", "exchange-rates", "--reason", "r" * 501)
    assert CircuitBreaker.objects.get().state == "closed"
    assert len(history(breaker)) == 1
