"""The circuit breakers API: list, detail with recent transitions, reset, open, disable.

Every action goes through the operator actions of ``integrations.breaker`` and is recorded as a
transition with the actor ``api:<username>`` and as a ``LogEntry`` (the admin's History) by the
request's user; the effect on real calls is checked through ``get_breaker``."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.utils import timezone

from integrations.breaker import MAX_HOLD, clear_local_cache, get_breaker
from integrations.exceptions import CircuitOpenError
from integrations.models import BreakerState, BreakerTransition, CircuitBreaker
from tests.api.conftest import client_for, make_user
from tests.history import history
from tests.integrations.factories import BreakerTransitionFactory, CircuitBreakerFactory

pytestmark = pytest.mark.django_db

LIST = "/api/circuit-breakers/"


def url(name: str, action: str = "") -> str:
    return f"{LIST}{name}/" + (f"{action}/" if action else "")


def test_list_shows_state_counts_and_last_error(api):
    CircuitBreakerFactory(name="stripe")
    CircuitBreakerFactory(name="exchange-rates", tripped=True)
    response = api.get(LIST)
    assert response.status_code == 200
    rows = response.json()
    assert [r["name"] for r in rows] == ["exchange-rates", "stripe"]
    tripped = rows[0]
    assert tripped["state"] == "open"
    assert tripped["consecutive_failures"] == 5
    assert tripped["last_error"].startswith("exchange-rates.rate")
    assert "recent_transitions" not in tripped


def test_detail_has_the_recent_transitions_newest_first(api):
    breaker = CircuitBreakerFactory(name="stripe")
    now = timezone.now()
    for n in range(25):
        BreakerTransitionFactory(
            breaker=breaker, reason=f"t{n}", created_at=now - dt.timedelta(minutes=25 - n)
        )
    body = api.get(url("stripe")).json()
    reasons = [t["reason"] for t in body["recent_transitions"]]
    assert reasons == [f"t{n}" for n in range(24, 4, -1)]  # the 20 newest
    assert set(body["recent_transitions"][0]) == {
        "from_state",
        "to_state",
        "reason",
        "actor",
        "snapshot",
        "created_at",
    }


def test_names_with_dots_and_hyphens_resolve(api):
    CircuitBreakerFactory(name="acme.payments-v2")
    assert api.get(url("acme.payments-v2")).json()["name"] == "acme.payments-v2"


def test_unknown_breaker_is_404_for_reads_and_actions(api):
    assert api.get(url("nope")).status_code == 404
    for action in ("reset", "open", "disable"):
        response = api.post(url("nope", action), {"reason": "x"}, format="json")
        assert response.status_code == 404, action
    assert not CircuitBreaker.objects.exists()
    assert not LogEntry.objects.exists()


def test_open_holds_the_breaker_open_for_real_calls(api, superuser):
    CircuitBreakerFactory(name="stripe")
    until = timezone.now() + dt.timedelta(hours=1)
    response = api.post(
        url("stripe", "open"),
        {"reason": "vendor maintenance", "until": until.isoformat()},
        format="json",
    )
    assert response.status_code == 200
    body = response.json()
    assert body["state"] == BreakerState.FORCED_OPEN
    assert dt.datetime.fromisoformat(body["forced_until"].replace("Z", "+00:00")) == until
    transition = body["recent_transitions"][0]
    assert transition["actor"] == f"api:{superuser.username}"
    assert (transition["from_state"], transition["to_state"]) == ("closed", "forced_open")
    assert transition["reason"] == "vendor maintenance"

    clear_local_cache()
    with pytest.raises(CircuitOpenError) as info:
        get_breaker("stripe").acquire("create_customer")
    assert 3500 < info.value.retry_after <= 3600


def test_disable_then_reset(api, superuser):
    CircuitBreakerFactory(name="stripe", tripped=True)
    response = api.post(url("stripe", "disable"), {"reason": "flapping alarm"}, format="json")
    assert response.json()["state"] == BreakerState.DISABLED
    assert response.json()["forced_until"] is None
    clear_local_cache()
    get_breaker("stripe").acquire("op")  # a disabled breaker lets calls through

    response = api.post(url("stripe", "reset"), {"reason": "vendor fixed"}, format="json")
    assert response.status_code == 200
    assert response.json()["state"] == BreakerState.CLOSED
    assert response.json()["consecutive_failures"] == 0
    transitions = list(
        BreakerTransition.objects.filter(breaker__name="stripe")
        .order_by("created_at", "id")
        .values_list("from_state", "to_state", "actor", "reason")
    )
    actor = f"api:{superuser.username}"
    assert transitions == [
        ("open", "disabled", actor, "flapping alarm"),
        ("disabled", "closed", actor, "vendor fixed"),
    ]


def test_reset_needs_no_reason(api):
    CircuitBreakerFactory(name="stripe", tripped=True)
    response = api.post(url("stripe", "reset"))
    assert response.status_code == 200 and response.json()["state"] == "closed"
    assert BreakerTransition.objects.get().reason  # the service records a default reason


@pytest.mark.parametrize("action", ["open", "disable"])
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "reason"),
        ({"reason": "   "}, "reason"),
        ({"reason": "r" * 501}, "reason"),
        ({"reason": "x", "until": "tomorrow"}, "until"),
        ({"reason": "x", "until": "2020-01-01T00:00:00Z"}, "until"),
        ({"reason": "x", "until": 12}, "until"),
        # In the future, but year 10000 in UTC: PostgreSQL would store it and fail every read.
        ({"reason": "x", "until": "9999-12-31T23:59:59-23:59"}, "until"),
    ],
)
def test_bad_action_bodies_are_400_and_change_nothing(api, action, body, field):
    CircuitBreakerFactory(name="stripe")
    response = api.post(url("stripe", action), body, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert CircuitBreaker.objects.get(name="stripe").state == "closed"
    assert not BreakerTransition.objects.exists()
    assert not LogEntry.objects.exists()


def test_open_until_the_furthest_allowed_instant_is_stored_and_read_back(api):
    CircuitBreakerFactory(name="stripe")
    furthest = (timezone.now() + MAX_HOLD - dt.timedelta(minutes=1)).replace(microsecond=0)
    body = {"reason": "x", "until": furthest.isoformat()}
    response = api.post(url("stripe", "open"), body, format="json")
    assert response.status_code == 200, response.content
    assert CircuitBreaker.objects.get(name="stripe").forced_until == furthest


@pytest.mark.parametrize("until", ["9999-12-31T23:59:59Z", "LATER"])
def test_open_until_further_than_the_longest_hold_is_400(api, until):
    CircuitBreakerFactory(name="stripe")
    if until == "LATER":
        until = (timezone.now() + MAX_HOLD + dt.timedelta(minutes=1)).isoformat()
    response = api.post(url("stripe", "open"), {"reason": "x", "until": until}, format="json")
    assert response.status_code == 400
    assert "more than 366 days away" in response.json()["until"][0]
    assert CircuitBreaker.objects.get(name="stripe").state == "closed"


def test_a_configured_service_can_be_opened_before_its_first_call(api, settings):
    settings.INTEGRATIONS = {"SERVICES": {"exchange-rates": {}}}
    response = api.post(url("exchange-rates", "open"), {"reason": "not yet"}, format="json")
    assert response.status_code == 200
    assert CircuitBreaker.objects.get(name="exchange-rates").state == "forced_open"
    # an unconfigured name is still unknown
    assert api.post(url("typo", "open"), {"reason": "x"}, format="json").status_code == 404


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_breakers_cannot_be_edited_or_deleted(api, method):
    CircuitBreakerFactory(name="stripe")
    assert getattr(api, method)(url("stripe"), {"state": "open"}, format="json").status_code == 405
    assert CircuitBreaker.objects.get(name="stripe").state == "closed"


def test_each_breaker_shows_its_service_fleet_policies(api, settings):
    from integrations import shared_state

    settings.INTEGRATIONS = {
        "REDIS_URL": settings.REDIS_URL,
        "SERVICES": {
            "geocoder": {
                "RATE_LIMIT": {"RATE": "80/s", "BURST": 10},
                "SHARED_COOLDOWN": True,
                "MAX_CONCURRENCY": 4,
                "CLUSTER_MAX_CONCURRENCY": 3,
            },
        },
    }
    CircuitBreakerFactory(name="geocoder")
    CircuitBreakerFactory(name="stripe")
    shared_state.start_cooldown("geocoder", 30, "429 from geocoder.lookup")
    shared_state.take_lease("geocoder", limit=3, lease=30, token="a-call")
    rows = {r["name"]: r for r in api.get(LIST).json()}
    fleet = rows["geocoder"]["fleet"]
    assert fleet["rate_limit"] == "80/1s (burst 10)"
    assert (fleet["rate_per_second"], fleet["rate_used_last_second"]) == (80.0, 0)
    assert 29 < fleet["cooldown_left"] <= 30
    assert fleet["cooldown_reason"] == "429 from geocoder.lookup"
    assert (fleet["max_concurrency"], fleet["cluster_max_concurrency"]) == (4, 3)
    assert fleet["cluster_in_flight"] == 1
    assert fleet["retry_budget"] is None and fleet["error"] is None
    assert rows["stripe"]["fleet"]["rate_limit"] is None  # no fleet policy: nothing read
    detail = api.get(url("geocoder")).json()
    assert detail["fleet"]["cluster_in_flight"] == 1


def test_fleet_policies_with_redis_down_say_why(api, settings):
    settings.INTEGRATIONS = {
        "REDIS_URL": "redis://:pw@127.0.0.1:1/0",
        "SERVICES": {"geocoder": {"RATE_LIMIT": "80/s"}},
    }
    CircuitBreakerFactory(name="geocoder")
    fleet = api.get(url("geocoder")).json()["fleet"]
    assert fleet["error"] == "ConnectionError"
    assert fleet["rate_limit"] == "80/1s (burst 1)" and fleet["rate_used_last_second"] is None


# -- the History (LogEntry) of each action ----------------------------------------------------


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("reset", "Reset via operator API: INC-7 (open -> closed)"),
        ("open", "Force opened via operator API: INC-7 (open -> forced_open)"),
        ("disable", "Disabled via operator API: INC-7 (open -> disabled)"),
    ],
)
def test_each_action_writes_a_log_entry_by_the_request_user(action, message):
    operator = make_user(
        "oncall",
        staff=True,
        perms=("integrations.view_circuitbreaker", "integrations.change_circuitbreaker"),
    )
    breaker = CircuitBreakerFactory(name="stripe", tripped=True)
    response = client_for(operator).post(url("stripe", action), {"reason": "INC-7"}, format="json")
    assert response.status_code == 200
    assert history(breaker) == [("oncall", CHANGE, message)]


def test_the_log_entry_names_the_until_in_utc(api, superuser):
    breaker = CircuitBreakerFactory(name="stripe")
    until = (timezone.now() + dt.timedelta(hours=1)).replace(microsecond=0)
    body = {"reason": "maintenance", "until": until.isoformat()}
    assert api.post(url("stripe", "disable"), body, format="json").status_code == 200
    assert history(breaker) == [
        (
            superuser.username,
            CHANGE,
            "Disabled via operator API: maintenance (closed -> disabled, "
            f"until {until.astimezone(dt.UTC).isoformat()})",
        )
    ]


def test_a_reset_without_reason_is_logged_without_one(api, superuser):
    breaker = CircuitBreakerFactory(name="stripe", tripped=True)
    assert api.post(url("stripe", "reset")).status_code == 200
    assert history(breaker) == [
        (superuser.username, CHANGE, "Reset via operator API (open -> closed)")
    ]


def test_a_configured_service_opened_before_its_first_call_is_logged(api, settings, superuser):
    settings.INTEGRATIONS = {"SERVICES": {"geocoder": {}}}
    response = api.post(url("geocoder", "open"), {"reason": "not yet"}, format="json")
    assert response.status_code == 200
    breaker = CircuitBreaker.objects.get(name="geocoder")
    assert history(breaker) == [
        (
            superuser.username,
            CHANGE,
            "Force opened via operator API: not yet (closed -> forced_open)",
        )
    ]


def test_a_user_without_the_change_permission_writes_nothing():
    viewer = make_user("viewer", staff=True, perms=("integrations.view_circuitbreaker",))
    CircuitBreakerFactory(name="stripe", tripped=True)
    response = client_for(viewer).post(url("stripe", "reset"), {"reason": "x"}, format="json")
    assert response.status_code == 403
    assert not BreakerTransition.objects.exists() and not LogEntry.objects.exists()
