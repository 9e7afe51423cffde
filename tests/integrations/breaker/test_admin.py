"""The breaker admin: list and detail render, actions record transitions with the username."""

from __future__ import annotations

import pytest
from django.db import connection
from django.urls import reverse

from integrations.breaker import get_breaker
from integrations.exceptions import CircuitOpenError
from integrations.models import BreakerTransition, CircuitBreaker
from tests.integrations.factories import BreakerTransitionFactory, CircuitBreakerFactory

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:integrations_circuitbreaker_changelist"


def test_changelist_shows_state_badge_counts_and_last_error(admin_client):
    CircuitBreakerFactory(name="exchange-rates", tripped=True)
    CircuitBreakerFactory(name="geocoder")
    response = admin_client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    html = response.content.decode()
    assert "exchange-rates" in html and "geocoder" in html
    assert "#c62828" in html  # the red "open" badge
    assert "The vendor could not be reached" in html
    assert "Reset selected breakers" in html


def test_changelist_filters_by_state(admin_client):
    CircuitBreakerFactory(name="exchange-rates", tripped=True)
    CircuitBreakerFactory(name="geocoder")
    response = admin_client.get(reverse(CHANGELIST), {"state": "open"})
    html = response.content.decode()
    assert "exchange-rates" in html and "geocoder" not in html


def test_detail_shows_transitions_newest_first_read_only(admin_client):
    breaker = CircuitBreakerFactory(name="exchange-rates", tripped=True)
    BreakerTransitionFactory(breaker=breaker, reason="first-transition")
    BreakerTransitionFactory(
        breaker=breaker, from_state="open", to_state="half_open", reason="second-transition"
    )
    url = reverse("admin:integrations_circuitbreaker_change", args=[breaker.pk])
    response = admin_client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert html.index("second-transition") < html.index("first-transition")
    assert 'name="transitions-0-reason"' not in html  # not an editable field


def test_detail_shows_the_latest_fifty_and_links_to_all(admin_client):
    breaker = CircuitBreakerFactory(name="exchange-rates", tripped=True)
    for number in range(55):
        BreakerTransitionFactory(breaker=breaker, reason=f"transition-{number:02d}-end")
    url = reverse("admin:integrations_circuitbreaker_change", args=[breaker.pk])
    html = admin_client.get(url).content.decode()
    shown = [n for n in range(55) if f"transition-{n:02d}-end" in html]
    assert shown == list(range(5, 55))
    assert "all 55 transitions" in html
    listing = admin_client.get(
        reverse("admin:integrations_breakertransition_changelist"),
        {"breaker__id__exact": breaker.pk},
    )
    assert listing.status_code == 200
    assert "transition-00-end" in listing.content.decode()


def test_policy_override_edit_writes_only_that_field(admin_client):
    breaker = CircuitBreakerFactory(name="exchange-rates", consecutive_failures=2)
    url = reverse("admin:integrations_circuitbreaker_change", args=[breaker.pk])
    page = admin_client.get(url)
    assert page.status_code == 200
    # Meanwhile another process counts a failure.
    CircuitBreaker.objects.filter(pk=breaker.pk).update(consecutive_failures=3)
    response = admin_client.post(
        url,
        {
            "failure_threshold": "10",
            "reset_timeout": "",
            "half_open_max_calls": "",
            "transitions-TOTAL_FORMS": "0",
            "transitions-INITIAL_FORMS": "0",
            "transitions-MIN_NUM_FORMS": "0",
            "transitions-MAX_NUM_FORMS": "1000",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    breaker.refresh_from_db()
    assert breaker.failure_threshold == 10
    assert breaker.consecutive_failures == 3  # not overwritten by the page's stale copy


def test_no_add_permission(admin_client):
    response = admin_client.get(reverse("admin:integrations_circuitbreaker_add"))
    assert response.status_code == 403


@pytest.mark.parametrize(
    ("action", "to_state"),
    [
        ("reset_selected", "closed"),
        ("force_open_selected", "forced_open"),
        ("disable_selected", "disabled"),
    ],
)
def test_actions_record_a_transition_with_the_username(admin_client, admin_user, action, to_state):
    first = CircuitBreakerFactory(name="exchange-rates", tripped=True)
    second = CircuitBreakerFactory(name="geocoder", tripped=True)
    response = admin_client.post(
        reverse(CHANGELIST),
        {"action": action, "_selected_action": [first.pk, second.pk]},
        follow=True,
    )
    assert response.status_code == 200
    for breaker in (first, second):
        breaker.refresh_from_db()
        assert breaker.state == to_state
        record = BreakerTransition.objects.get(breaker=breaker)
        assert record.actor == admin_user.get_username()
        assert record.reason == "admin action"
        assert record.from_state == "open"


def _delete_when_locked(name: str):
    """A database execute wrapper deleting breaker ``name`` just before it is locked for an
    action, as another operator's deletion between the changelist and the action would."""
    state = {"busy": False}

    def wrapper(execute, sql, params, many, context):
        if not state["busy"] and "FOR UPDATE" in sql and params and name in params:
            state["busy"] = True
            try:
                CircuitBreaker.objects.filter(name=name).delete()
            finally:
                state["busy"] = False
        return execute(sql, params, many, context)

    return wrapper


def _messages(response) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in response.context["messages"]]


def test_action_reports_success_only_for_the_breakers_it_changed(admin_client):
    first = CircuitBreakerFactory(name="exchange-rates", tripped=True)
    second = CircuitBreakerFactory(name="geocoder", tripped=True)
    with connection.execute_wrapper(_delete_when_locked("geocoder")):
        response = admin_client.post(
            reverse(CHANGELIST),
            {"action": "reset_selected", "_selected_action": [first.pk, second.pk]},
            follow=True,
        )
    assert sorted(_messages(response)) == [
        ("success", "Reset: exchange-rates"),
        ("warning", "geocoder no longer exists."),
    ]
    first.refresh_from_db()
    assert first.state == "closed"


def test_action_reports_no_success_when_no_breaker_was_changed(admin_client):
    breaker = CircuitBreakerFactory(name="geocoder", tripped=True)
    with connection.execute_wrapper(_delete_when_locked("geocoder")):
        response = admin_client.post(
            reverse(CHANGELIST),
            {"action": "disable_selected", "_selected_action": [breaker.pk]},
            follow=True,
        )
    assert _messages(response) == [("warning", "geocoder no longer exists.")]


def test_force_open_from_the_admin_stops_calls_in_this_process(admin_client):
    breaker = CircuitBreakerFactory(name="exchange-rates")
    b = get_breaker("exchange-rates")
    b.acquire("rate")
    admin_client.post(
        reverse(CHANGELIST), {"action": "force_open_selected", "_selected_action": [breaker.pk]}
    )
    with pytest.raises(CircuitOpenError):
        b.acquire("rate")


def test_actions_need_the_change_permission(client, django_user_model):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_circuitbreaker"))
    client.force_login(user)
    breaker = CircuitBreakerFactory(name="exchange-rates", tripped=True)
    response = client.post(
        reverse(CHANGELIST), {"action": "reset_selected", "_selected_action": [breaker.pk]}
    )
    assert response.status_code in (200, 302)
    breaker.refresh_from_db()
    assert breaker.state == "open"
    assert not BreakerTransition.objects.exists()


def test_transition_admin_is_read_only(admin_client):
    record = BreakerTransitionFactory(actor="cli:ops")
    listing = admin_client.get(reverse("admin:integrations_breakertransition_changelist"))
    assert listing.status_code == 200
    assert "cli:ops" in listing.content.decode()
    detail = admin_client.get(
        reverse("admin:integrations_breakertransition_change", args=[record.pk])
    )
    assert detail.status_code == 200
    assert 'name="reason"' not in detail.content.decode()
    add = admin_client.get(reverse("admin:integrations_breakertransition_add"))
    assert add.status_code == 403
    delete = admin_client.post(
        reverse("admin:integrations_breakertransition_delete", args=[record.pk]), {"post": "yes"}
    )
    assert delete.status_code == 403
    assert BreakerTransition.objects.filter(pk=record.pk).exists()


def test_list_and_detail_show_the_fleet_policies(admin_client, settings):
    from integrations import shared_state

    settings.INTEGRATIONS = {
        "REDIS_URL": settings.REDIS_URL,
        "SERVICES": {
            "geocoder": {
                "RATE_LIMIT": "80/s",
                "SHARED_COOLDOWN": True,
                "RETRY_BUDGET": {"RATIO": 0.2},
                "CLUSTER_MAX_CONCURRENCY": 3,
            }
        },
    }
    breaker = CircuitBreakerFactory(name="geocoder")
    shared_state.start_cooldown("geocoder", 30, "429 from geocoder.lookup")
    html = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert "rate 0/80 per s; cool-down" in html
    assert "(429 from geocoder.lookup); budget 0/10 retries; in flight 0/3" in html
    url = reverse("admin:integrations_circuitbreaker_change", args=[breaker.pk])
    html = admin_client.get(url).content.decode()
    assert "Fleet policies (shared by every process, state in Redis)" in html
    assert "<code>cluster_max_concurrency</code>: 3" in html
