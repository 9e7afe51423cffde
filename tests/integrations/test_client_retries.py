"""ServiceClient over real HTTP to a FakeVendor on 127.0.0.1. Retryable failures (5xx, 408,
refused, dropped and cut connections), the backoff, and Retry-After."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from integrations.breaker import clear_local_cache
from integrations.client import parse_retry_after
from integrations.exceptions import (
    MAX_RETRY_AFTER,
    CircuitOpenError,
    ClientRequestError,
    IntegrationUnavailable,
    RateLimitedError,
)
from integrations.models import CircuitBreaker
from integrations.testing import Reply, force_breaker, unused_port_url
from tests.integrations.rates import configure

pytestmark = pytest.mark.django_db


# --- retryable failures -----------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_retried_until_success(rates, vendor, backoff, status):
    vendor.route("GET", "/v1/rates/EUR", Reply.server_error(status), Reply.json({"rate": 3}))

    assert rates.rate("EUR") == 3
    assert vendor.count() == 2
    assert len(backoff.sleeps) == 1


def test_5xx_every_time_exhausts_the_attempts(rates, vendor, backoff):
    vendor.route("GET", "/v1/rates/EUR", Reply.server_error(503))

    with pytest.raises(IntegrationUnavailable) as caught:
        rates.rate("EUR")

    error = caught.value
    assert type(error) is IntegrationUnavailable
    assert error.status_code == 503
    assert error.attempts == 3
    assert (error.service, error.operation) == ("rates", "rate")
    assert vendor.count() == 3
    assert len(backoff.sleeps) == 2


def test_backoff_is_exponential_with_full_jitter_capped(make_rates, vendor, settings, backoff):
    configure(
        settings,
        vendor.url,
        RETRY={"MAX_ATTEMPTS": 7, "BASE_DELAY": 1.0, "MAX_DELAY": 4.0, "DEADLINE": 1000.0},
    )
    vendor.route("GET", "/v1/rates/EUR", Reply.server_error())

    with pytest.raises(IntegrationUnavailable):
        make_rates().rate("EUR")

    assert vendor.count() == 7
    caps = [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert len(backoff.sleeps) == 6
    assert all(0 <= wait <= cap for wait, cap in zip(backoff.sleeps, caps, strict=True))


def test_408_is_retried(rates, vendor, backoff):
    vendor.route("GET", "/v1/rates/EUR", Reply.error(408))

    with pytest.raises(ClientRequestError) as caught:
        rates.rate("EUR")

    assert caught.value.status_code == 408
    assert caught.value.attempts == 3
    assert vendor.count() == 3


def test_connection_refused_is_retried_then_unavailable(make_rates, settings, backoff):
    configure(settings, unused_port_url())

    with pytest.raises(IntegrationUnavailable) as caught:
        make_rates().rate("EUR")

    assert caught.value.attempts == 3
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert len(backoff.sleeps) == 2


def test_a_stopped_vendor_refuses_connections(rates, vendor, backoff):
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": 1}))
    assert rates.rate("EUR") == 1  # a pooled keep-alive connection now exists
    vendor.stop()

    with pytest.raises(IntegrationUnavailable) as caught:
        rates.rate("EUR")

    assert isinstance(caught.value.__cause__, httpx.TransportError)
    assert vendor.count() == 1


def test_dropped_connection_is_retried(rates, vendor):
    vendor.route("GET", "/v1/rates/EUR", Reply.disconnect(), Reply.json({"rate": 5}))

    assert rates.rate("EUR") == 5
    assert vendor.count() == 2


def test_truncated_body_is_unavailable_and_retried(rates, vendor):
    vendor.route("GET", "/v1/rates/EUR", Reply.truncated(b'{"rate": "1.0'))

    with pytest.raises(IntegrationUnavailable) as caught:
        rates.rate("EUR")

    assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)
    assert vendor.count() == 3


# --- Retry-After ------------------------------------------------------------------------------


def test_429_with_retry_after_seconds_waits_that_long(rates, vendor, backoff):
    vendor.route("GET", "/v1/rates/EUR", Reply.rate_limited(7), Reply.json({"rate": 1}))

    assert rates.rate("EUR") == 1
    assert backoff.sleeps == [7.0]
    assert vendor.count() == 2


def test_429_with_retry_after_http_date_waits_until_then(rates, vendor, backoff):
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=12)
    vendor.route("GET", "/v1/rates/EUR", Reply.rate_limited(when), Reply.json({"rate": 1}))

    assert rates.rate("EUR") == 1
    [wait] = backoff.sleeps
    assert 10.0 <= wait <= 12.0
    assert vendor.requests[0].path == "/v1/rates/EUR"


def test_retry_after_beyond_the_deadline_fails_at_once(rates, vendor, backoff):
    vendor.route("GET", "/v1/rates/EUR", Reply.rate_limited(120))

    with pytest.raises(RateLimitedError) as caught:
        rates.rate("EUR")

    assert caught.value.retry_after == 120.0
    assert caught.value.attempts == 1
    assert vendor.count() == 1
    assert backoff.sleeps == []


def test_429_without_retry_after_uses_backoff(rates, vendor, backoff):
    vendor.route("GET", "/v1/rates/EUR", Reply.rate_limited(None))

    with pytest.raises(RateLimitedError) as caught:
        rates.rate("EUR")

    assert caught.value.retry_after is None
    assert vendor.count() == 3
    assert len(backoff.sleeps) == 2
    assert all(0 <= wait <= 1.0 for wait in backoff.sleeps)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("3", 3.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # in the past
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(header, expected):
    assert parse_retry_after(header) == expected


def test_parse_retry_after_http_date_in_the_future():
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Tue, 01 Jan 2030 12:00:30 GMT", now=now.timestamp()) == 30.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("1e308", MAX_RETRY_AFTER),
        ("1e999", MAX_RETRY_AFTER),  # a float overflow: infinite
        ("inf", MAX_RETRY_AFTER),
        ("Infinity", MAX_RETRY_AFTER),
        ("nan", None),  # unreadable: as if absent
        ("-5", 0.0),
        ("-inf", 0.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER),
    ],
)
def test_a_hostile_retry_after_is_finite_and_capped(rates, vendor, backoff, header, expected):
    vendor.route("GET", "/v1/rates/EUR", Reply.rate_limited(header))

    with pytest.raises(RateLimitedError) as caught:
        rates.rate("EUR")

    retry_after = caught.value.retry_after
    assert retry_after == expected
    if retry_after is not None:
        assert math.isfinite(retry_after)
        # What the README's `self.retry(countdown=exc.retry_after or 30)` makes of it (Celery
        # adds the countdown to now): no OverflowError.
        now = datetime.now(UTC)
        assert now + timedelta(seconds=retry_after) >= now
    # The waits between attempts stay within the call's deadline (30 s here).
    assert sum(backoff.sleeps) < 30.0


def test_a_breaker_held_open_for_ages_says_at_most_the_cap(rates, vendor):
    force_breaker("rates", "forced_open")
    CircuitBreaker.objects.filter(name="rates").update(
        forced_until=datetime(9999, 12, 31, tzinfo=UTC)
    )
    clear_local_cache("rates")

    with pytest.raises(CircuitOpenError) as caught:
        rates.rate("EUR")

    assert caught.value.retry_after == MAX_RETRY_AFTER
    assert vendor.count() == 0
