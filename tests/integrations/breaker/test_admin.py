"""The breaker admin: list and detail render; Reset, Force open and Disable as buttons through a
form (reason, until) and a confirmation, recorded as a transition and a LogEntry; the change
permission needed; no delete; the policy in force and the next probe shown."""

from __future__ import annotations

import time
from datetime import UTC, timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from integrations.breaker import get_breaker
from integrations.exceptions import CircuitOpenError
from integrations.models import BreakerTransition, CircuitBreaker
from tests import postgres
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
    assert "Reset selected breakers" not in html


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


# --- the operator actions: buttons, form, confirmation, LogEntry ---------------------------------

ACTIONS = [("reset", "closed"), ("force-open", "forced_open"), ("disable", "disabled")]


def change_url(breaker: CircuitBreaker) -> str:
    return reverse("admin:integrations_circuitbreaker_change", args=[breaker.pk])


def action_url(breaker: CircuitBreaker, action: str) -> str:
    return reverse("admin:integrations_circuitbreaker_action", args=[breaker.pk, action])


def _viewer(client, django_user_model):
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_circuitbreaker"))
    client.force_login(user)
    return user


def _log_entries(breaker: CircuitBreaker) -> list[LogEntry]:
    content_type = ContentType.objects.get_for_model(CircuitBreaker)
    entries = LogEntry.objects.filter(content_type=content_type, object_id=str(breaker.pk))
    return list(entries.order_by("pk"))


def test_the_breakers_page_has_the_three_buttons(admin_client):
    breaker = CircuitBreakerFactory(name="exchange-rates", tripped=True)
    html = admin_client.get(change_url(breaker)).content.decode()
    tools = html[html.index('class="object-tools"') :]
    tools = tools[: tools.index("</ul>")]
    for action, label in (("reset", "Reset"), ("force-open", "Force open"), ("disable", "Disable")):
        assert f'href="{action_url(breaker, action)}" class="breaker-action">{label}</a>' in tools
    assert "History" in tools  # Django's own button is still there


@pytest.mark.parametrize(("action", "to_state"), ACTIONS)
def test_form_then_confirmation_then_the_action_with_transition_and_log_entry(
    admin_client, admin_user, action, to_state
):
    breaker = CircuitBreakerFactory(name="exchange-rates", tripped=True)
    url = action_url(breaker, action)
    form = admin_client.get(url)
    assert form.status_code == 200
    assert 'name="reason"' in form.content.decode()
    assert ('name="until"' in form.content.decode()) == (action != "reset")

    reason = "vendor incident INC-42 <b>bold</b>"
    confirm = admin_client.post(url, {"reason": reason, "until": ""})
    assert confirm.status_code == 200
    html = confirm.content.decode()
    assert "Are you sure?" in html
    assert "vendor incident INC-42 &lt;b&gt;bold&lt;/b&gt;" in html  # shown, escaped
    assert 'name="confirm" value="yes"' in html
    breaker.refresh_from_db()
    assert breaker.state == "open"  # nothing done before the confirmation
    assert not BreakerTransition.objects.exists() and not _log_entries(breaker)

    done = admin_client.post(url, {"reason": reason, "until": "", "confirm": "yes"})
    assert done.status_code == 302 and done["Location"] == change_url(breaker)
    breaker.refresh_from_db()
    assert breaker.state == to_state
    record = BreakerTransition.objects.get(breaker=breaker)
    assert (record.from_state, record.to_state) == ("open", to_state)
    assert record.actor == admin_user.get_username()
    assert record.reason == reason
    [entry] = _log_entries(breaker)
    assert entry.user == admin_user
    assert entry.is_change()
    assert f"open -> {to_state}" in entry.get_change_message()
    assert reason in entry.get_change_message()
    history = admin_client.get(
        reverse("admin:integrations_circuitbreaker_history", args=[breaker.pk])
    ).content.decode()
    assert "vendor incident INC-42" in history


def test_the_confirmation_has_a_way_back_and_going_back_changes_nothing(admin_client):
    breaker = CircuitBreakerFactory(name="exchange-rates")
    html = admin_client.post(
        action_url(breaker, "force-open"), {"reason": "maintenance", "until": ""}
    ).content.decode()
    assert f'href="{change_url(breaker)}" class="button cancel-link"' in html
    breaker.refresh_from_db()
    assert breaker.state == "closed"


@pytest.mark.parametrize(
    ("reason", "error"),
    [
        ("", "This field is required."),
        ("   ", "This field is required."),
        ("x" * 501, "Ensure this value has at most 500 characters (it has 501)."),
    ],
)
def test_the_reason_is_required_and_bounded(admin_client, reason, error):
    breaker = CircuitBreakerFactory(name="exchange-rates", tripped=True)
    response = admin_client.post(action_url(breaker, "reset"), {"reason": reason, "confirm": "yes"})
    assert response.status_code == 200
    assert error in response.content.decode()
    breaker.refresh_from_db()
    assert breaker.state == "open"
    assert not BreakerTransition.objects.exists() and not _log_entries(breaker)


def test_a_reason_of_exactly_the_limit_is_kept_whole(admin_client):
    breaker = CircuitBreakerFactory(name="exchange-rates", tripped=True)
    reason = "r" * 500
    admin_client.post(action_url(breaker, "reset"), {"reason": reason, "confirm": "yes"})
    assert BreakerTransition.objects.get(breaker=breaker).reason == reason


def _iso(moment) -> str:
    return moment.isoformat(timespec="seconds")


@pytest.mark.parametrize(
    ("until", "error"),
    [
        ("yesterday", "is not an ISO 8601 date"),
        ("2001-01-01T00:00:00+00:00", "is not in the future"),
        ("9999-12-31T23:59:59-23:59", "outside the years 1-9999"),
        ("PAST", "is not in the future"),
        ("FAR", "more than 366 days away"),
        ("1" * 65, "Ensure this value has at most 64 characters"),
    ],
)
def test_until_is_validated_in_the_future_and_not_absurdly_far(admin_client, until, error):
    now = timezone.now()
    relative = {"PAST": now - timedelta(minutes=1), "FAR": now + timedelta(days=367)}
    if until in relative:
        until = _iso(relative[until])
    breaker = CircuitBreakerFactory(name="exchange-rates")
    response = admin_client.post(
        action_url(breaker, "force-open"),
        {"reason": "maintenance", "until": until, "confirm": "yes"},
    )
    assert response.status_code == 200
    assert error in response.content.decode()
    breaker.refresh_from_db()
    assert breaker.state == "closed" and breaker.forced_until is None
    assert not _log_entries(breaker)


def test_until_within_bounds_is_confirmed_then_kept_and_logged(admin_client):
    breaker = CircuitBreakerFactory(name="exchange-rates")
    until = (timezone.now() + timedelta(hours=2)).replace(microsecond=0)
    url = action_url(breaker, "disable")
    body = {"reason": "vendor flaky, calls must go", "until": _iso(until)}
    html = admin_client.post(url, body).content.decode()
    assert "Are you sure?" in html
    assert timezone.localtime(until).strftime("%Y-%m-%d %H:%M:%S") in html
    admin_client.post(url, {**body, "confirm": "yes"})
    breaker.refresh_from_db()
    assert breaker.state == "disabled" and breaker.forced_until == until
    [entry] = _log_entries(breaker)
    assert entry.get_change_message() == (
        "Disabled via admin: vendor flaky, calls must go (closed -> disabled, "
        f"until {until.astimezone(UTC).isoformat()})"
    )


def test_an_until_that_passed_while_confirming_is_refused(admin_client):
    breaker = CircuitBreakerFactory(name="exchange-rates")
    soon = timezone.now() + timedelta(seconds=1)
    url = action_url(breaker, "force-open")
    body = {"reason": "maintenance", "until": soon.isoformat()}
    assert "Are you sure?" in admin_client.post(url, body).content.decode()
    time.sleep(1.2)
    response = admin_client.post(url, {**body, "confirm": "yes"})
    assert "is not in the future" in response.content.decode()
    breaker.refresh_from_db()
    assert breaker.state == "closed"


def test_an_unknown_action_or_breaker_is_404(admin_client):
    breaker = CircuitBreakerFactory(name="exchange-rates")
    assert admin_client.get(action_url(breaker, "delete")).status_code == 404
    missing = reverse("admin:integrations_circuitbreaker_action", args=[999999, "reset"])
    assert admin_client.get(missing).status_code == 404


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


@postgres.ROW_LOCKS
def test_a_breaker_deleted_before_the_confirmation_is_reported(admin_client):
    breaker = CircuitBreakerFactory(name="geocoder", tripped=True)
    with connection.execute_wrapper(_delete_when_locked("geocoder")):
        response = admin_client.post(
            action_url(breaker, "reset"), {"reason": "recovered", "confirm": "yes"}, follow=True
        )
    assert _messages(response) == [("warning", "geocoder no longer exists.")]
    assert not BreakerTransition.objects.exists() and not LogEntry.objects.exists()


def test_force_open_from_the_admin_stops_calls_in_this_process(admin_client):
    breaker = CircuitBreakerFactory(name="exchange-rates")
    b = get_breaker("exchange-rates")
    b.acquire("rate")
    admin_client.post(
        action_url(breaker, "force-open"), {"reason": "maintenance", "until": "", "confirm": "yes"}
    )
    with pytest.raises(CircuitOpenError):
        b.acquire("rate")


@pytest.mark.parametrize(("action", "to_state"), ACTIONS)
def test_a_view_only_user_sees_no_buttons_and_gets_403(client, django_user_model, action, to_state):
    _viewer(client, django_user_model)
    breaker = CircuitBreakerFactory(name="exchange-rates", tripped=True)
    page = client.get(change_url(breaker))
    assert page.status_code == 200
    assert "breaker-action" not in page.content.decode()
    assert action_url(breaker, action) not in page.content.decode()
    assert client.get(action_url(breaker, action)).status_code == 403
    response = client.post(
        action_url(breaker, action), {"reason": "sneaky", "until": "", "confirm": "yes"}
    )
    assert response.status_code == 403
    breaker.refresh_from_db()
    assert breaker.state == "open"
    assert not BreakerTransition.objects.exists() and not LogEntry.objects.exists()


def test_the_changelist_has_no_bulk_actions(admin_client):
    CircuitBreakerFactory(name="exchange-rates", tripped=True)
    html = admin_client.get(reverse(CHANGELIST)).content.decode()
    assert 'name="action"' not in html
    assert "delete_selected" not in html


def test_no_delete(admin_client):
    breaker = CircuitBreakerFactory(name="exchange-rates", tripped=True)
    BreakerTransitionFactory(breaker=breaker)
    page = admin_client.get(change_url(breaker)).content.decode()
    assert "deletelink" not in page
    delete_url = reverse("admin:integrations_circuitbreaker_delete", args=[breaker.pk])
    assert admin_client.get(delete_url).status_code == 403
    assert admin_client.post(delete_url, {"post": "yes"}).status_code == 403
    admin_client.post(
        reverse(CHANGELIST), {"action": "delete_selected", "_selected_action": [breaker.pk]}
    )
    assert CircuitBreaker.objects.filter(pk=breaker.pk).exists()
    assert BreakerTransition.objects.filter(breaker=breaker).exists()


# --- what the page shows: the policy in force, the next probe -------------------------------------


def _policy_table(html: str) -> str:
    table = html[html.index('<table class="policy-in-force">') :]
    return table[: table.index("</table>")]


def _service(**breaker) -> dict:
    return {"SERVICES": {"exchange-rates": {"BASE_URL": "http://127.0.0.1:1", "BREAKER": breaker}}}


def test_the_policy_in_force_is_the_services_settings(admin_client, settings):
    settings.INTEGRATIONS = _service(
        FAILURE_THRESHOLD=7, RESET_TIMEOUT=45, FAILURE_RATE=0.5, MINIMUM_CALLS=30
    )
    breaker = CircuitBreakerFactory(name="exchange-rates", half_open_max_calls=3)
    table = _policy_table(admin_client.get(change_url(breaker)).content.decode())
    assert "<th>failure threshold</th><td>7</td><td>INTEGRATIONS settings</td>" in table
    assert "<th>reset timeout</th><td>45s</td><td>INTEGRATIONS settings</td>" in table
    assert "<th>half-open max calls</th><td>3</td><td>override of this breaker</td>" in table
    assert "opens at 50% of at least 30 calls over 60s" in table
    assert "<th>database unreachable</th><td>calls go through</td>" in table


def test_next_probe_of_an_open_breaker_is_opened_at_plus_the_reset_timeout(admin_client, settings):
    settings.INTEGRATIONS = _service(RESET_TIMEOUT=600)
    opened = timezone.now().replace(microsecond=0)
    breaker = CircuitBreakerFactory(name="exchange-rates", tripped=True, opened_at=opened)
    html = admin_client.get(change_url(breaker)).content.decode()
    expected = timezone.localtime(opened + timedelta(seconds=600))
    assert f"{expected.isoformat(sep=' ')} (opened at + reset timeout)" in html
    CircuitBreaker.objects.filter(pk=breaker.pk).update(opened_at=opened - timedelta(hours=1))
    html = admin_client.get(change_url(breaker)).content.decode()
    assert "now: the next call is a probe" in html


def test_next_probe_of_a_hold_is_its_until_or_none(admin_client):
    until = (timezone.now() + timedelta(hours=3)).replace(microsecond=0)
    held = CircuitBreakerFactory(name="held", state="forced_open", forced_until=until)
    html = admin_client.get(change_url(held)).content.decode()
    expected = timezone.localtime(until).isoformat(sep=" ")
    assert f"{expected} (the hold ends; then closed)" in html
    forever = CircuitBreakerFactory(name="forever", state="disabled")
    html = admin_client.get(change_url(forever)).content.decode()
    assert "none by itself: held by an operator until someone resets it" in html
    closed = CircuitBreakerFactory(name="fine")
    assert "none needed: closed" in admin_client.get(change_url(closed)).content.decode()


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
