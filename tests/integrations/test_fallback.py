"""with_fallback over a real cache (Redis) and a real vendor (FakeVendor): fresh, stale, missing."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest
from django.core.cache import cache

from integrations import AsyncServiceClient, ServiceClient, with_fallback
from integrations.exceptions import CircuitOpenError, IntegrationUnavailable
from integrations.fallback import KEY_PREFIX
from integrations.testing import Reply, force_breaker
from tests.integrations.rates import Awaited

pytestmark = pytest.mark.django_db


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


clock = FakeClock()


class Rates(ServiceClient):
    service = "rates"

    @with_fallback("rates:{currency}", ttl=60, stale_ttl=3600, clock=clock)
    def rate(self, currency: str) -> Decimal:
        data = self.get_json(f"/v1/rates/{currency}", operation="rate", required=["rate"])
        return Decimal(str(data["rate"]))

    @with_fallback(lambda self, *ids: "many:" + ",".join(ids), ttl=0, stale_ttl=60, clock=clock)
    def many(self, *ids: str) -> list:
        return self.get_json("/v1/many", operation="many", params={"ids": ",".join(ids)})

    @with_fallback("broken:{self.service}", ttl=0, stale_ttl=60, clock=clock)
    def broken(self) -> int:
        self.get_json("/v1/broken", operation="broken")
        raise ValueError("a bug in our code")


class AsyncRates(AsyncServiceClient):
    """``Rates`` on an event loop: the same decorator on coroutines."""

    service = "rates"

    @with_fallback("rates:{currency}", ttl=60, stale_ttl=3600, clock=clock)
    async def rate(self, currency: str) -> Decimal:
        data = await self.get_json(f"/v1/rates/{currency}", operation="rate", required=["rate"])
        return Decimal(str(data["rate"]))

    @with_fallback(lambda self, *ids: "many:" + ",".join(ids), ttl=0, stale_ttl=60, clock=clock)
    async def many(self, *ids: str) -> list:
        return await self.get_json("/v1/many", operation="many", params={"ids": ",".join(ids)})

    @with_fallback("broken:{self.service}", ttl=0, stale_ttl=60, clock=clock)
    async def broken(self) -> int:
        await self.get_json("/v1/broken", operation="broken")
        raise ValueError("a bug in our code")


@pytest.fixture(params=["sync", "async"])
def rates(request, vendor, settings, backoff):
    settings.INTEGRATIONS = {
        "SERVICES": {
            "rates": {
                "BASE_URL": vendor.url,
                "RETRY": {"MAX_ATTEMPTS": 2},
                "BREAKER": {"FAILURE_THRESHOLD": 100},
            }
        }
    }
    clock.now = 1_800_000_000.0
    return Rates() if request.param == "sync" else Awaited(AsyncRates())


def test_fresh_value_is_served_from_the_cache_without_a_call(rates, vendor):
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": "1.08"}))

    assert rates.rate("EUR") == Decimal("1.08")
    clock.now += 59
    assert rates.rate("EUR") == Decimal("1.08")

    assert vendor.count() == 1


def test_after_ttl_the_vendor_is_asked_again(rates, vendor):
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": "1.08"}), Reply.json({"rate": "1.10"}))

    assert rates.rate("EUR") == Decimal("1.08")
    clock.now += 61
    assert rates.rate("EUR") == Decimal("1.10")
    clock.now += 1
    assert rates.rate("EUR") == Decimal("1.10")  # the new value is fresh again

    assert vendor.count() == 2


def test_stale_value_is_served_when_the_vendor_fails_and_logged(rates, vendor, caplog):
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": "1.08"}), Reply.server_error())
    assert rates.rate("EUR") == Decimal("1.08")
    clock.now += 600

    with caplog.at_level(logging.WARNING, logger="integrations.fallback"):
        assert rates.rate("EUR") == Decimal("1.08")

    assert vendor.count() == 3  # the first call, then two failed attempts
    [record] = [r for r in caplog.records if r.name == "integrations.fallback"]
    assert record.levelno == logging.WARNING
    assert "stale" in record.getMessage()
    assert "600 s old" in record.getMessage()
    assert record.age == 600
    assert record.stale is True
    assert record.service == "rates"
    assert record.operation == "rate"
    assert record.error == "IntegrationUnavailable"


def test_no_stored_value_means_the_error_is_raised(rates, vendor):
    vendor.route("GET", "/v1/rates/EUR", Reply.server_error())

    with pytest.raises(IntegrationUnavailable):
        rates.rate("EUR")


def test_value_older_than_stale_ttl_is_not_served(rates, vendor):
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": "1.08"}), Reply.server_error())
    rates.rate("EUR")
    clock.now += 3600

    with pytest.raises(IntegrationUnavailable):
        rates.rate("EUR")


def test_open_breaker_serves_stale_without_the_network(rates, vendor):
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": "1.08"}))
    rates.rate("EUR")
    clock.now += 120
    force_breaker("rates", "forced_open")

    assert rates.rate("EUR") == Decimal("1.08")
    assert vendor.count() == 1


def test_open_breaker_and_nothing_stored_raises(rates, vendor):
    force_breaker("rates", "forced_open")
    with pytest.raises(CircuitOpenError):
        rates.rate("EUR")
    assert vendor.count() == 0


def test_keys_come_from_the_arguments(rates, vendor):
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": "1"}), Reply.server_error())
    vendor.route("GET", "/v1/rates/USD", Reply.server_error())
    rates.rate("EUR")
    clock.now += 100

    assert rates.rate(currency="EUR") == Decimal("1")
    with pytest.raises(IntegrationUnavailable):
        rates.rate("USD")  # EUR's value is not USD's
    assert cache.get(KEY_PREFIX + "rates:EUR") is not None


def test_callable_key(rates, vendor):
    vendor.route("GET", "/v1/many", Reply.json([1, 2]), Reply.server_error())

    assert rates.many("a", "b") == [1, 2]
    assert rates.many("a", "b") == [1, 2]  # ttl=0: asked again, failed, served stale
    with pytest.raises(IntegrationUnavailable):
        rates.many("a", "c")
    assert cache.get(KEY_PREFIX + "many:a,b") is not None


def test_our_own_bugs_are_not_hidden(rates, vendor):
    vendor.route("GET", "/v1/broken", Reply.json({}))
    with pytest.raises(ValueError, match="a bug"):
        rates.broken()


def test_long_or_spaced_keys_are_hashed():
    calls = []

    @with_fallback("{text}", ttl=10, stale_ttl=10)
    def echo(text: str) -> str:
        calls.append(text)
        return text

    long_text = "x" * 500
    assert echo(long_text) == long_text
    assert echo(long_text) == long_text
    assert echo("with space") == "with space"
    assert calls == [long_text, "with space"]


@pytest.mark.parametrize(("ttl", "stale_ttl"), [(-1, 10), (10, 5), (0, 0)])
def test_invalid_ttls_are_refused(ttl, stale_ttl):
    with pytest.raises(ValueError):
        with_fallback("k", ttl=ttl, stale_ttl=stale_ttl)
