"""ServiceClient over real HTTP to a FakeVendor on 127.0.0.1. The call's deadline and the
connect/read timeouts, with bounded wall time."""

from __future__ import annotations

import time

import httpx
import pytest

from integrations.exceptions import (
    IntegrationTimeout,
    RateLimitedError,
)
from integrations.testing import Reply
from tests.integrations.rates import configure

pytestmark = pytest.mark.django_db


# --- deadline and timeouts --------------------------------------------------------------------


def test_deadline_bounds_attempts_plus_waits(make_rates, vendor, settings, backoff):
    configure(
        settings,
        vendor.url,
        RETRY={"MAX_ATTEMPTS": 10, "BASE_DELAY": 0.5, "MAX_DELAY": 4.0, "DEADLINE": 10.0},
    )
    vendor.route("GET", "/v1/rates/EUR", Reply.rate_limited(3))

    with pytest.raises(RateLimitedError) as caught:
        make_rates().rate("EUR")

    # Attempts at t=0, 3, 6, 9; a fourth wait would end at 12 > 10: stop there.
    assert backoff.sleeps == [3.0, 3.0, 3.0]
    assert vendor.count() == 4
    assert caught.value.attempts == 4


def test_hang_times_out_with_bounded_wall_time(make_rates, vendor, settings):
    configure(
        settings,
        vendor.url,
        TIMEOUT={"READ": 0.3},
        RETRY={"MAX_ATTEMPTS": 2, "BASE_DELAY": 0.05, "MAX_DELAY": 0.05},
    )
    vendor.route("GET", "/v1/rates/EUR", Reply.hang())

    started = time.monotonic()
    with pytest.raises(IntegrationTimeout) as caught:
        make_rates().rate("EUR")
    elapsed = time.monotonic() - started

    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert caught.value.attempts == 2
    assert vendor.count() == 2
    assert 0.6 <= elapsed < 2.0


def test_deadline_shortens_the_read_timeout(make_rates, vendor, settings):
    configure(
        settings,
        vendor.url,
        TIMEOUT={"READ": 30.0},
        RETRY={"MAX_ATTEMPTS": 5, "BASE_DELAY": 0.01, "DEADLINE": 0.5},
    )
    vendor.route("GET", "/v1/rates/EUR", Reply.hang())

    started = time.monotonic()
    with pytest.raises(IntegrationTimeout) as caught:
        make_rates().rate("EUR")
    elapsed = time.monotonic() - started

    assert elapsed < 1.5  # not 30 s: the attempt got what the deadline left
    assert caught.value.attempts == 1
    assert vendor.count() == 1


def test_slow_answer_within_the_read_timeout_succeeds(rates, vendor):
    vendor.route("GET", "/v1/rates/EUR", Reply.slow(0.2, Reply.json({"rate": 9})))
    assert rates.rate("EUR") == 9


def test_slow_answer_beyond_the_read_timeout_is_a_timeout(make_rates, vendor, settings, backoff):
    configure(settings, vendor.url, TIMEOUT={"READ": 0.1}, RETRY={"MAX_ATTEMPTS": 1})
    vendor.route("GET", "/v1/rates/EUR", Reply.slow(0.5, Reply.json({"rate": 9})))

    with pytest.raises(IntegrationTimeout):
        make_rates().rate("EUR")
    assert vendor.count() == 1
