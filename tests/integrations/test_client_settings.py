"""ServiceClient over real HTTP to a FakeVendor on 127.0.0.1. Settings precedence (global, service,
class, constructor), read at call time, and bad settings reported."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from integrations import RetryPolicy, ServiceClient, Timeout
from integrations.exceptions import (
    IntegrationUnavailable,
)
from integrations.testing import FakeVendor, Reply, unused_port_url
from tests.integrations.rates import Rates, configure

pytestmark = pytest.mark.django_db


# --- settings precedence ----------------------------------------------------------------------


def test_retry_policy_precedence_global_service_class_constructor(vendor, settings, backoff):
    vendor.route("GET", "/v1/rates/EUR", Reply.server_error())

    class ClassLevel(Rates):
        retry = {"MAX_ATTEMPTS": 4}

    def attempts_made(client: ServiceClient, integrations: dict) -> int:
        vendor.reset()
        vendor.route("GET", "/v1/rates/EUR", Reply.server_error())
        integrations = {**integrations, "BREAKER": {"FAILURE_THRESHOLD": 100}}
        with override_settings(INTEGRATIONS=integrations), pytest.raises(IntegrationUnavailable):
            client.get_json("/v1/rates/EUR", operation="rate")
        return vendor.count()

    global_only = {"RETRY": {"MAX_ATTEMPTS": 2}, "SERVICES": {"rates": {"BASE_URL": vendor.url}}}
    with_service = {
        "RETRY": {"MAX_ATTEMPTS": 2},
        "SERVICES": {"rates": {"BASE_URL": vendor.url, "RETRY": {"MAX_ATTEMPTS": 3}}},
    }
    assert attempts_made(Rates(), {"SERVICES": {"rates": {"BASE_URL": vendor.url}}}) == 3
    assert attempts_made(Rates(), global_only) == 2
    assert attempts_made(Rates(), with_service) == 3
    assert attempts_made(ClassLevel(), with_service) == 4
    assert attempts_made(ClassLevel(retry={"MAX_ATTEMPTS": 5}), with_service) == 5
    assert attempts_made(ClassLevel(retry=RetryPolicy(max_attempts=1)), with_service) == 1


def test_timeout_precedence_merges_field_by_field(settings):
    class ClassLevel(Rates):
        timeout = {"WRITE": 3.0}

    settings.INTEGRATIONS = {
        "TIMEOUT": {"CONNECT": 1.0, "READ": 20.0},
        "SERVICES": {"rates": {"TIMEOUT": {"READ": 2.0, "POOL": 0.5}}},
    }
    assert Rates().get_timeout() == Timeout(connect=1.0, read=2.0, write=10.0, pool=0.5)
    assert ClassLevel().get_timeout() == Timeout(connect=1.0, read=2.0, write=3.0, pool=0.5)
    assert ClassLevel(timeout={"connect": 0.2}).get_timeout() == Timeout(
        connect=0.2, read=2.0, write=3.0, pool=0.5
    )
    assert ClassLevel(timeout=Timeout(read=1.0)).get_timeout() == Timeout(read=1.0)


def test_breaker_policy_precedence(settings):
    class ClassLevel(Rates):
        breaker = {"FAILURE_THRESHOLD": 7}

    settings.INTEGRATIONS = {
        "BREAKER": {"RESET_TIMEOUT": 60},
        "SERVICES": {"rates": {"BREAKER": {"FAILURE_THRESHOLD": 2}}},
    }
    assert Rates().get_breaker_policy().failure_threshold == 2
    assert Rates().get_breaker_policy().reset_timeout == 60
    assert ClassLevel().get_breaker_policy().failure_threshold == 7
    assert ClassLevel(breaker={"failure_threshold": 9}).get_breaker_policy().failure_threshold == 9


def test_base_url_precedence(vendor, settings):
    other = FakeVendor().start()
    try:
        vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": 1}))
        other.route("GET", "/v1/rates/EUR", Reply.json({"rate": 2}))

        class Fixed(Rates):
            base_url = other.url

        settings.INTEGRATIONS = {"SERVICES": {"rates": {"BASE_URL": vendor.url}}}
        assert Rates().rate("EUR") == 1  # settings
        assert Fixed().rate("EUR") == 2  # class attribute over settings
        assert Fixed(base_url=vendor.url).rate("EUR") == 1  # constructor over class
        assert Rates(base_url=f"{other.url}/").get_json("v1/rates/EUR", operation="r") == {
            "rate": 2
        }
    finally:
        other.stop()


def test_settings_are_read_at_call_time(vendor, settings):
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": 1}))
    client = Rates(retry={"MAX_ATTEMPTS": 1})
    settings.INTEGRATIONS = {"SERVICES": {"rates": {"BASE_URL": vendor.url}}}
    assert client.rate("EUR") == 1
    # The same instance: it must not keep the base URL it used first.
    settings.INTEGRATIONS = {"SERVICES": {"rates": {"BASE_URL": unused_port_url()}}}
    with pytest.raises(IntegrationUnavailable):
        client.rate("EUR")


def test_missing_base_url_names_the_setting(settings):
    settings.INTEGRATIONS = {}
    with pytest.raises(ImproperlyConfigured, match=r'INTEGRATIONS\["SERVICES"\]\[\'rates\'\]'):
        Rates().rate("EUR")


def test_a_client_needs_a_service_name():
    class Nameless(ServiceClient):
        pass

    with pytest.raises(ImproperlyConfigured, match="service"):
        Nameless()


def test_bad_policy_override_is_reported(settings, vendor):
    configure(settings, vendor.url)
    with pytest.raises(ImproperlyConfigured, match="MAX_ATEMPTS"):
        Rates(retry={"MAX_ATEMPTS": 2}).get_retry_policy()
    with pytest.raises(ImproperlyConfigured, match="dict"):
        Rates(retry=3).get_retry_policy()  # type: ignore[arg-type]
