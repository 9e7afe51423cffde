"""Who may use the operator API: staff only by default, model permissions per action,
configurable permission and throttle classes."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from rest_framework.throttling import UserRateThrottle

from integrations.models import CircuitBreaker
from tests.api.conftest import client_for, make_user
from tests.integrations.factories import CircuitBreakerFactory
from tests.webhooks.factories import WebhookEventFactory
from webhooks.models import WebhookEvent

pytestmark = pytest.mark.django_db

Status = WebhookEvent.Status
VIEW_EVENT = "webhooks.view_webhookevent"
CHANGE_EVENT = "webhooks.change_webhookevent"
VIEW_BREAKER = "integrations.view_circuitbreaker"
CHANGE_BREAKER = "integrations.change_circuitbreaker"


@pytest.fixture
def targets():
    event = WebhookEventFactory(status=Status.FAILED)
    CircuitBreakerFactory(name="stripe")
    return event


def requests(event) -> list[tuple[str, str, dict | None]]:
    """Every endpoint: (method, url, JSON body)."""
    ev = f"/api/webhook-events/{event.pk}/"
    br = "/api/circuit-breakers/stripe/"
    return [
        ("get", "/api/webhook-events/", None),
        ("get", ev, None),
        ("post", ev + "replay/", {}),
        ("post", ev + "ignore/", {}),
        ("post", "/api/webhook-events/replay/", {}),
        ("get", "/api/circuit-breakers/", None),
        ("get", br, None),
        ("post", br + "reset/", {}),
        ("post", br + "open/", {"reason": "x"}),
        ("post", br + "disable/", {"reason": "x"}),
    ]


def call(client, method, url, body):
    if method == "get":
        return client.get(url)
    return client.post(url, body, format="json")


def assert_nothing_changed(event):
    event.refresh_from_db()
    assert event.status == Status.FAILED
    assert CircuitBreaker.objects.get(name="stripe").state == "closed"


def test_anonymous_is_refused_everywhere(targets):
    """DRF answers 403 (not 401) when the first authentication class is the session's, as in
    the default ``DEFAULT_AUTHENTICATION_CLASSES``; the detail says what is missing."""
    client = client_for(None)
    for method, url, body in requests(targets):
        response = call(client, method, url, body)
        assert response.status_code == 403, url
        assert response.json()["detail"] == "Authentication credentials were not provided."
    assert_nothing_changed(targets)


def test_wrong_basic_credentials_are_refused(targets):
    client = client_for(None)
    make_user("ops", superuser=True)
    client.credentials(HTTP_AUTHORIZATION="Basic b3BzOndyb25n")  # ops:wrong
    response = client.get("/api/webhook-events/")
    assert response.status_code == 403
    assert response.json()["detail"] == "Invalid username/password."


def test_basic_auth_of_a_superuser_works(targets):
    import base64

    make_user("ops", superuser=True)
    client = client_for(None)
    token = base64.b64encode(b"ops:pw-ops").decode()
    client.credentials(HTTP_AUTHORIZATION=f"Basic {token}")
    assert client.get("/api/webhook-events/").status_code == 200


def test_non_staff_is_403_everywhere_even_with_model_permissions(targets):
    user = make_user("clerk", perms=(VIEW_EVENT, CHANGE_EVENT, VIEW_BREAKER, CHANGE_BREAKER))
    client = client_for(user)
    for method, url, body in requests(targets):
        assert call(client, method, url, body).status_code == 403, url
    assert_nothing_changed(targets)


def test_staff_without_model_permissions_is_403(targets):
    client = client_for(make_user("staff", staff=True))
    for method, url, body in requests(targets):
        response = call(client, method, url, body)
        assert response.status_code == 403, url
        assert "permission" in response.json()["detail"]
    assert_nothing_changed(targets)


def test_view_permission_reads_but_does_not_act(targets):
    client = client_for(make_user("viewer", staff=True, perms=(VIEW_EVENT, VIEW_BREAKER)))
    for method, url, body in requests(targets):
        expected = 200 if method == "get" else 403
        assert call(client, method, url, body).status_code == expected, url
    assert_nothing_changed(targets)


def test_change_permission_allows_the_actions_of_its_own_model_only(
    targets, django_capture_on_commit_callbacks
):
    client = client_for(make_user("operator", staff=True, perms=(VIEW_EVENT, CHANGE_EVENT)))
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(f"/api/webhook-events/{targets.pk}/replay/").status_code == 202
    br = "/api/circuit-breakers/stripe/"
    assert client.get(br).status_code == 403
    assert client.post(br + "open/", {"reason": "x"}, format="json").status_code == 403

    breaker_operator = client_for(
        make_user("breakers", staff=True, perms=(VIEW_BREAKER, CHANGE_BREAKER))
    )
    assert breaker_operator.post(br + "open/", {"reason": "x"}, format="json").status_code == 200
    assert breaker_operator.get("/api/webhook-events/").status_code == 403


def test_permission_classes_are_configurable(targets, settings):
    """A project may let non-staff service accounts in; model permissions still apply."""
    client = client_for(make_user("robot", perms=(VIEW_EVENT,)))
    assert client.get("/api/webhook-events/").status_code == 403
    settings.WEBHOOKS = {
        **settings.WEBHOOKS,
        "API_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    }
    assert client.get("/api/webhook-events/").status_code == 200
    assert client.post(f"/api/webhook-events/{targets.pk}/replay/").status_code == 403
    # the integrations API has its own setting, still admin-only
    assert client.get("/api/circuit-breakers/").status_code == 403


def test_a_bad_permission_class_path_names_the_setting(targets, settings, superuser):
    settings.INTEGRATIONS = {"API_PERMISSION_CLASSES": ["myproject.perms.Nope"]}
    client = client_for(superuser)
    client.raise_request_exception = True
    with pytest.raises(ImproperlyConfigured, match=r'INTEGRATIONS\["API_PERMISSION_CLASSES"\]'):
        client.get("/api/circuit-breakers/")


class TwoPerMinute(UserRateThrottle):
    rate = "2/min"


def test_throttling_is_configurable(targets, settings, superuser):
    client = client_for(superuser)
    for _ in range(3):
        assert client.get("/api/circuit-breakers/").status_code == 200
    settings.INTEGRATIONS = {"API_THROTTLE_CLASSES": [f"{__name__}.TwoPerMinute"]}
    statuses = [client.get("/api/circuit-breakers/").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    # the webhooks API is throttled by its own setting only
    assert client.get("/api/webhook-events/").status_code == 200
