"""Uses a project that installs one of the two apps, as its operators and code would: run as
``python -m tests.alone`` by ``tests/test_apps_alone.py`` (settings from
``DJANGO_SETTINGS_MODULE``, on a migrated database of the test's own).

A superuser opens the installed app's admin pages (changelist and change page), its operator
API (list and detail), the health view and the metrics; the app does its job once (webhooks
takes a signed delivery, integrations calls a real local HTTP vendor). Prints one JSON line:
``{"pages": {path: status}, "health": [status, body], "used": ...}``; the test asserts on it.
"""

from __future__ import annotations

import json
from typing import Any

import django


def use_webhooks(client: Any) -> tuple[dict[str, Any], list[str]]:
    """A delivery received and processed; the pages that show it."""
    from webhooks.models import WebhookEvent
    from webhooks.testing import post_webhook

    answer = post_webhook(client, "stripe", event_type="alone.ping")
    event = WebhookEvent.objects.get()
    used = {"receive": [answer.status_code, answer.json()], "status": event.status}
    pages = [
        "/admin/webhooks/webhookevent/",
        f"/admin/webhooks/webhookevent/{event.pk}/change/",
        "/api/webhook-events/",
        f"/api/webhook-events/{event.pk}/",
    ]
    return used, pages


def use_integrations(client: Any) -> tuple[dict[str, Any], list[str]]:
    """A call through a circuit breaker to a real HTTP vendor; the pages that show breakers."""
    from django.test import override_settings

    from integrations import ServiceClient
    from integrations.models import CircuitBreaker
    from integrations.testing import FakeVendor, Reply, force_breaker

    class Rates(ServiceClient):
        service = "rates"

    with FakeVendor() as vendor:
        vendor.route("GET", "/v1/rate", Reply.json({"rate": "1.08"}))
        services = {"SERVICES": {"rates": {"BASE_URL": vendor.url}}}
        with override_settings(INTEGRATIONS=services):
            rate = Rates().get_json("/v1/rate", operation="rate")
    force_breaker("maps", "forced_open", reason="vendor maintenance")
    breaker = CircuitBreaker.objects.get(name="rates")
    used = {"call": rate, "breakers": sorted(CircuitBreaker.objects.values_list("name", "state"))}
    pages = [
        "/admin/integrations/circuitbreaker/",
        f"/admin/integrations/circuitbreaker/{breaker.pk}/change/",
        "/api/circuit-breakers/",
        "/api/circuit-breakers/rates/",
    ]
    return used, pages


def main() -> None:
    django.setup()
    from django.apps import apps
    from django.contrib.auth.models import User
    from django.test import Client
    from django.test.utils import setup_test_environment

    setup_test_environment()
    client = Client()
    installed = "webhooks" if apps.is_installed("webhooks") else "integrations"
    used, pages = (use_webhooks if installed == "webhooks" else use_integrations)(client)
    client.force_login(User.objects.create_superuser("root", password="pw-root"))
    statuses = {page: client.get(page).status_code for page in [*pages, "/metrics"]}
    health = client.get("/health/")
    print(
        json.dumps(
            {
                "installed": installed,
                "used": used,
                "pages": statuses,
                "health": [health.status_code, health.json()],
            },
            default=str,
        )
    )


if __name__ == "__main__":
    main()
