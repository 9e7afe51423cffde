"""ServiceClient over real HTTP to a FakeVendor on 127.0.0.1. The circuit breaker as the client
drives it: fail fast when open, what counts, the full cycle."""

from __future__ import annotations

import time

import pytest

from integrations.exceptions import (
    CircuitOpenError,
    ClientRequestError,
    IntegrationUnavailable,
    InvalidResponseError,
)
from integrations.models import CircuitBreaker
from integrations.testing import Reply, force_breaker
from tests.integrations.rates import configure

pytestmark = pytest.mark.django_db


# --- the circuit breaker ----------------------------------------------------------------------


def test_open_breaker_fails_fast_without_touching_the_network(rates, vendor):
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": 1}))
    force_breaker("rates", "forced_open")

    started = time.perf_counter()
    with pytest.raises(CircuitOpenError) as caught:
        rates.rate("EUR")

    assert time.perf_counter() - started < 0.5
    assert vendor.count() == 0
    assert caught.value.attempts == 0
    assert caught.value.service == "rates"


def test_client_errors_do_not_trip_the_breaker(make_rates, vendor, settings):
    configure(settings, vendor.url, BREAKER={"FAILURE_THRESHOLD": 2})
    vendor.route("GET", "/v1/rates/EUR", Reply.error(404))

    for _ in range(5):
        with pytest.raises(ClientRequestError):
            make_rates().rate("EUR")

    assert vendor.count() == 5
    assert CircuitBreaker.objects.get(name="rates").state == "closed"


def test_consecutive_5xx_trip_the_breaker(make_rates, vendor, settings, backoff):
    configure(settings, vendor.url, BREAKER={"FAILURE_THRESHOLD": 3}, RETRY={"MAX_ATTEMPTS": 1})
    vendor.route("GET", "/v1/rates/EUR", Reply.server_error())

    for _ in range(3):
        with pytest.raises(IntegrationUnavailable) as caught:
            make_rates().rate("EUR")
        assert type(caught.value) is IntegrationUnavailable

    assert CircuitBreaker.objects.get(name="rates").state == "open"
    with pytest.raises(CircuitOpenError) as caught:
        make_rates().rate("EUR")
    assert caught.value.retry_after is not None and caught.value.retry_after > 0
    assert vendor.count() == 3  # the fourth call never reached the vendor


def test_each_attempt_counts_and_an_open_breaker_stops_the_retries(
    make_rates, vendor, settings, backoff
):
    configure(settings, vendor.url, BREAKER={"FAILURE_THRESHOLD": 2}, RETRY={"MAX_ATTEMPTS": 5})
    vendor.route("GET", "/v1/rates/EUR", Reply.server_error())

    with pytest.raises(CircuitOpenError) as caught:
        make_rates().rate("EUR")

    assert vendor.count() == 2  # attempts 1 and 2 failed and opened it; attempt 3 was refused
    assert caught.value.attempts == 2
    assert isinstance(caught.value.__cause__, IntegrationUnavailable)


def test_a_success_resets_the_consecutive_count(make_rates, vendor, settings, backoff):
    configure(settings, vendor.url, BREAKER={"FAILURE_THRESHOLD": 3}, RETRY={"MAX_ATTEMPTS": 1})
    vendor.route(
        "GET",
        "/v1/rates/EUR",
        Reply.server_error(),
        Reply.server_error(),
        Reply.json({"rate": 1}),
        Reply.server_error(),
        Reply.server_error(),
        Reply.json({"rate": 1}),
    )

    outcomes = []
    for _ in range(6):
        try:
            outcomes.append(make_rates().rate("EUR"))
        except IntegrationUnavailable:
            outcomes.append("down")

    assert outcomes == ["down", "down", 1, "down", "down", 1]
    assert CircuitBreaker.objects.get(name="rates").state == "closed"


def test_full_cycle_through_the_client(make_rates, vendor, settings):
    configure(
        settings,
        vendor.url,
        BREAKER={"FAILURE_THRESHOLD": 2, "RESET_TIMEOUT": 0.3},
        RETRY={"MAX_ATTEMPTS": 1, "DEADLINE": 7},
    )
    vendor.route(
        "GET", "/v1/rates/EUR", Reply.server_error(), Reply.server_error(), Reply.json({"rate": 4})
    )

    for _ in range(2):
        with pytest.raises(IntegrationUnavailable):
            make_rates().rate("EUR")
    with pytest.raises(CircuitOpenError) as caught:
        make_rates().rate("EUR")
    assert 0 < caught.value.retry_after <= 0.3
    time.sleep(0.35)
    assert make_rates().rate("EUR") == 4  # the half-open probe succeeds and closes the breaker

    assert vendor.count() == 3
    row = CircuitBreaker.objects.get(name="rates")
    assert row.state == "closed"
    steps = list(row.transitions.order_by("created_at", "id").values_list("from_state", "to_state"))
    assert steps == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_invalid_responses_count_against_the_breaker(make_rates, vendor, settings):
    configure(settings, vendor.url, BREAKER={"FAILURE_THRESHOLD": 2})
    vendor.route("GET", "/v1/rates/EUR", Reply.garbage())

    for _ in range(2):
        with pytest.raises(InvalidResponseError):
            make_rates().rate("EUR")

    assert CircuitBreaker.objects.get(name="rates").state == "open"


def test_disabled_breaker_lets_calls_through(rates, vendor):
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": 1}))
    force_breaker("rates", "disabled")

    assert rates.rate("EUR") == 1
    assert vendor.count() == 1
