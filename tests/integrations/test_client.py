"""ServiceClient over real HTTP to a FakeVendor on 127.0.0.1: retries, Retry-After, deadlines,
timeouts, idempotency keys, error mapping, settings precedence, the breaker, logs and signals."""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from integrations import RetryPolicy, ServiceClient, Timeout
from integrations.breaker import clear_local_cache, get_breaker
from integrations.client import parse_retry_after
from integrations.exceptions import (
    MAX_RETRY_AFTER,
    CircuitOpenError,
    ClientRequestError,
    IntegrationError,
    IntegrationTimeout,
    IntegrationUnavailable,
    InvalidResponseError,
    RateLimitedError,
)
from integrations.models import CircuitBreaker
from integrations.signals import call_finished, call_retried
from integrations.testing import FakeVendor, Reply, force_breaker, unused_port_url

pytestmark = pytest.mark.django_db

API_KEY = "sk_live_h3_SUPER_SECRET_51Hx"


class Rates(ServiceClient):
    service = "rates"

    def default_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def rate(self, currency: str) -> Decimal:
        data = self.get_json(f"/v1/rates/{currency}", operation="rate", required=["rate"])
        return Decimal(str(data["rate"]))


def configure(settings, vendor_url: str, **service) -> None:
    """Point service "rates" at the fake, with quick policies unless told otherwise."""
    entry = {
        "BASE_URL": vendor_url,
        "TIMEOUT": {"CONNECT": 1.0, "READ": 1.0, "WRITE": 1.0, "POOL": 1.0},
        "RETRY": {"MAX_ATTEMPTS": 3, "BASE_DELAY": 0.5, "MAX_DELAY": 4.0, "DEADLINE": 30.0},
        "BREAKER": {"FAILURE_THRESHOLD": 50},
    }
    for key, value in service.items():
        entry[key] = {**entry.get(key, {}), **value} if isinstance(value, dict) else value
    settings.INTEGRATIONS = {"SERVICES": {"rates": entry}}


@pytest.fixture
def rates(vendor, settings, backoff) -> Rates:
    configure(settings, vendor.url)
    return Rates()


# --- healthy calls ------------------------------------------------------------------------------


def test_get_json_returns_parsed_json_and_ignores_extra_fields(rates, vendor, backoff):
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": "1.08", "extra": {"x": [1, 2]}}))

    assert rates.rate("EUR") == Decimal("1.08")

    [request] = vendor.requests
    assert request.header("Authorization") == f"Bearer {API_KEY}"
    assert request.header("Accept") == "application/json"
    assert request.header("Idempotency-Key") is None  # GET is idempotent by itself
    assert backoff.sleeps == []


def test_query_params_and_json_body_reach_the_vendor(rates, vendor):
    vendor.route("GET", "/v1/search", Reply.json([]))
    vendor.route("POST", "/v1/orders", Reply.json({"id": "o_1"}, status=201))

    assert rates.get_json("/v1/search", operation="search", params={"q": "a b"}) == []
    created = rates.post_json("/v1/orders", operation="create", json={"amount": 5})

    assert created == {"id": "o_1"}
    search, order = vendor.requests
    assert search.params == {"q": ["a b"]}
    assert order.json() == {"amount": 5}
    assert order.header("Content-Type") == "application/json"


def test_put_patch_delete_and_raw_request(rates, vendor):
    vendor.route("PUT", "/v1/x", Reply.json({"put": True}))
    vendor.route("PATCH", "/v1/x", Reply.json({"patch": True}))
    vendor.route("DELETE", "/v1/x", Reply.empty(204))
    vendor.route("GET", "/v1/raw", Reply.text("plain"))

    assert rates.put_json("/v1/x", operation="put", json={}) == {"put": True}
    assert rates.patch_json("/v1/x", operation="patch", json={}) == {"patch": True}
    assert rates.delete("/v1/x", operation="delete").status_code == 204
    response = rates.request("GET", "/v1/raw", operation="raw")
    assert isinstance(response, httpx.Response)
    assert response.text == "plain"
    assert [r.method for r in vendor.requests] == ["PUT", "PATCH", "DELETE", "GET"]


def test_no_content_answer_is_none(rates, vendor):
    vendor.route("POST", "/v1/ping", Reply.empty(204))
    assert rates.post_json("/v1/ping", operation="ping") is None


def test_connections_are_pooled_and_reused_across_instances(rates, vendor):
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": 1}))

    for _ in range(3):
        Rates().rate("EUR")

    ports = {r.client_port for r in vendor.requests}
    assert len(vendor.requests) == 3
    assert len(ports) == 1  # one keep-alive connection from the shared pool


@pytest.mark.django_db(transaction=True)  # the threads' own connections commit
def test_concurrent_calls_from_threads(rates, vendor):
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": "2"}, delay=0.05))
    results: list[Decimal] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            results.append(Rates().rate("EUR"))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert errors == []
    assert results == [Decimal("2")] * 8
    assert vendor.count() == 8


# --- retryable failures -------------------------------------------------------------------------


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


def test_backoff_is_exponential_with_full_jitter_capped(vendor, settings, backoff):
    configure(
        settings,
        vendor.url,
        RETRY={"MAX_ATTEMPTS": 7, "BASE_DELAY": 1.0, "MAX_DELAY": 4.0, "DEADLINE": 1000.0},
    )
    vendor.route("GET", "/v1/rates/EUR", Reply.server_error())

    with pytest.raises(IntegrationUnavailable):
        Rates().rate("EUR")

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


def test_connection_refused_is_retried_then_unavailable(settings, backoff):
    configure(settings, unused_port_url())

    with pytest.raises(IntegrationUnavailable) as caught:
        Rates().rate("EUR")

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


# --- Retry-After --------------------------------------------------------------------------------


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


# --- deadline and timeouts ----------------------------------------------------------------------


def test_deadline_bounds_attempts_plus_waits(vendor, settings, backoff):
    configure(
        settings,
        vendor.url,
        RETRY={"MAX_ATTEMPTS": 10, "BASE_DELAY": 0.5, "MAX_DELAY": 4.0, "DEADLINE": 10.0},
    )
    vendor.route("GET", "/v1/rates/EUR", Reply.rate_limited(3))

    with pytest.raises(RateLimitedError) as caught:
        Rates().rate("EUR")

    # Attempts at t=0, 3, 6, 9; a fourth wait would end at 12 > 10: stop there.
    assert backoff.sleeps == [3.0, 3.0, 3.0]
    assert vendor.count() == 4
    assert caught.value.attempts == 4


def test_hang_times_out_with_bounded_wall_time(vendor, settings):
    configure(
        settings,
        vendor.url,
        TIMEOUT={"READ": 0.3},
        RETRY={"MAX_ATTEMPTS": 2, "BASE_DELAY": 0.05, "MAX_DELAY": 0.05},
    )
    vendor.route("GET", "/v1/rates/EUR", Reply.hang())

    started = time.monotonic()
    with pytest.raises(IntegrationTimeout) as caught:
        Rates().rate("EUR")
    elapsed = time.monotonic() - started

    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert caught.value.attempts == 2
    assert vendor.count() == 2
    assert 0.6 <= elapsed < 2.0


def test_deadline_shortens_the_read_timeout(vendor, settings):
    configure(
        settings,
        vendor.url,
        TIMEOUT={"READ": 30.0},
        RETRY={"MAX_ATTEMPTS": 5, "BASE_DELAY": 0.01, "DEADLINE": 0.5},
    )
    vendor.route("GET", "/v1/rates/EUR", Reply.hang())

    started = time.monotonic()
    with pytest.raises(IntegrationTimeout) as caught:
        Rates().rate("EUR")
    elapsed = time.monotonic() - started

    assert elapsed < 1.5  # not 30 s: the attempt got what the deadline left
    assert caught.value.attempts == 1
    assert vendor.count() == 1


def test_slow_answer_within_the_read_timeout_succeeds(rates, vendor):
    vendor.route("GET", "/v1/rates/EUR", Reply.slow(0.2, Reply.json({"rate": 9})))
    assert rates.rate("EUR") == 9


def test_slow_answer_beyond_the_read_timeout_is_a_timeout(vendor, settings, backoff):
    configure(settings, vendor.url, TIMEOUT={"READ": 0.1}, RETRY={"MAX_ATTEMPTS": 1})
    vendor.route("GET", "/v1/rates/EUR", Reply.slow(0.5, Reply.json({"rate": 9})))

    with pytest.raises(IntegrationTimeout):
        Rates().rate("EUR")
    assert vendor.count() == 1


# --- non-retryable failures ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 409, 422])
def test_4xx_is_not_retried(rates, vendor, backoff, status):
    vendor.route("POST", "/v1/orders", Reply.error(status, {"error": {"code": "nope"}}))

    with pytest.raises(ClientRequestError) as caught:
        rates.post_json("/v1/orders", operation="create", json={})

    error = caught.value
    assert error.status_code == status
    assert error.attempts == 1
    assert error.response.json() == {"error": {"code": "nope"}}
    assert vendor.count() == 1
    assert backoff.sleeps == []


def test_garbage_is_an_invalid_response_and_not_retried(rates, vendor, backoff):
    vendor.route("GET", "/v1/rates/EUR", Reply.garbage())

    with pytest.raises(InvalidResponseError) as caught:
        rates.rate("EUR")

    assert "not JSON" in str(caught.value)
    assert caught.value.attempts == 1
    assert vendor.count() == 1


def test_complete_but_cut_json_is_an_invalid_response(rates, vendor):
    vendor.route("GET", "/v1/rates/EUR", Reply.garbage(b'{"rate": "1.0'))

    with pytest.raises(InvalidResponseError):
        rates.rate("EUR")
    assert vendor.count() == 1


def test_missing_required_field_is_an_invalid_response(rates, vendor):
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"currency": "EUR"}))

    with pytest.raises(InvalidResponseError) as caught:
        rates.rate("EUR")

    assert "rate" in str(caught.value)
    assert vendor.count() == 1


@pytest.mark.parametrize(
    ("payload", "ok"),
    [
        ({"customer": {"id": "c_1"}, "items": [{"id": "i_1"}]}, True),
        ({"customer": {"id": "c_1"}, "items": []}, False),
        ({"customer": {"id": None}, "items": [{"id": "i_1"}]}, False),
        ({"customer": "c_1", "items": [{"id": "i_1"}]}, False),
        ([1, 2], False),
    ],
)
def test_required_dotted_paths(rates, vendor, payload, ok):
    vendor.route("GET", "/v1/order", Reply.json(payload))

    def call():
        return rates.get_json(
            "/v1/order", operation="order", required=["customer.id", "items.0.id"]
        )

    if ok:
        assert call() == payload
    else:
        with pytest.raises(InvalidResponseError):
            call()


def test_require_helper_after_the_call(rates):
    assert rates.require({"a": {"b": 0}}, "a.b", operation="x") == {"a": {"b": 0}}
    with pytest.raises(InvalidResponseError) as caught:
        rates.require({"a": {}}, "a.b", "c", operation="x")
    assert "a.b, c" in str(caught.value)


def test_redirect_is_not_followed_for_json(rates, vendor):
    vendor.route("GET", "/v1/rates/EUR", Reply.empty(302, headers={"Location": "/elsewhere"}))

    with pytest.raises(InvalidResponseError):
        rates.rate("EUR")
    assert vendor.count() == 1


# --- idempotency keys ---------------------------------------------------------------------------


def test_post_idempotency_key_is_the_same_across_retries(rates, vendor, backoff):
    vendor.route(
        "POST",
        "/v1/charges",
        Reply.server_error(),
        Reply.rate_limited(1),
        Reply.json({"id": "ch_1"}),
    )

    rates.post_json("/v1/charges", operation="charge", json={"amount": 10})

    keys = vendor.headers_seen("Idempotency-Key")
    assert len(keys) == 3
    assert len(set(keys)) == 1
    uuid.UUID(keys[0])  # a fresh UUID


def test_each_call_gets_its_own_key(rates, vendor):
    vendor.route("POST", "/v1/charges", Reply.json({"id": "ch_1"}))

    rates.post_json("/v1/charges", operation="charge")
    rates.post_json("/v1/charges", operation="charge")

    first, second = vendor.headers_seen("Idempotency-Key")
    assert first and second and first != second


def test_caller_supplied_key_is_kept_across_retries_and_calls(rates, vendor, backoff):
    vendor.route("POST", "/v1/charges", Reply.server_error(), Reply.json({"id": "ch_1"}))

    rates.post_json("/v1/charges", operation="charge", idempotency_key="order-42-charge")
    # A Celery task retried later derives the same key from the same business id.
    rates.post_json("/v1/charges", operation="charge", idempotency_key="order-42-charge")

    assert vendor.headers_seen("Idempotency-Key") == ["order-42-charge"] * 3


def test_which_methods_get_a_key(rates, vendor):
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        vendor.route(method, "/v1/x", Reply.json({}))

    rates.get_json("/v1/x", operation="get")
    rates.put_json("/v1/x", operation="put")
    rates.patch_json("/v1/x", operation="patch")
    rates.delete("/v1/x", operation="delete")
    rates.delete("/v1/x", operation="delete", idempotency_key="del-1")
    rates.put_json("/v1/x", operation="put", idempotency_key="put-1")

    seen = dict(
        zip(
            [r.method + str(i) for i, r in enumerate(vendor.requests)],
            vendor.headers_seen("Idempotency-Key"),
            strict=True,
        )
    )
    assert seen["GET0"] is None
    assert seen["PUT1"] is None
    assert seen["PATCH2"] is not None
    assert seen["DELETE3"] is None
    assert seen["DELETE4"] == "del-1"
    assert seen["PUT5"] == "put-1"


def test_a_service_can_rename_the_idempotency_header(vendor, settings):
    class Acme(ServiceClient):
        service = "acme"
        idempotency_header = "X-Request-Id"

    vendor.route("POST", "/v1/x", Reply.json({}))
    Acme(base_url=vendor.url).post_json("/v1/x", operation="x", idempotency_key="k1")

    [request] = vendor.requests
    assert request.header("X-Request-Id") == "k1"
    assert request.header("Idempotency-Key") is None


# --- no credentials in errors or logs -----------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        Reply.server_error(),
        Reply.error(401, {"error": f"bad key {API_KEY}"}),
        Reply.rate_limited(500),
        Reply.garbage(f"<html>{API_KEY}</html>".encode()),
        Reply.disconnect(),
    ],
    ids=["5xx", "401", "429", "garbage", "disconnect"],
)
def test_errors_and_logs_contain_no_credentials(rates, vendor, caplog, reply):
    vendor.route("GET", "/v1/rates/EUR", reply)

    with caplog.at_level(logging.DEBUG), pytest.raises(IntegrationError) as caught:
        rates.get_json(
            "/v1/rates/EUR",
            operation="rate",
            params={"api_key": API_KEY},
            headers={"X-Api-Key": API_KEY},
        )

    assert vendor.requests[0].header("X-Api-Key") == API_KEY  # it was really sent
    error = caught.value
    for text in (str(error), repr(error), error.message, caplog.text):
        assert API_KEY not in text
        assert "api_key" not in text
    for record in caplog.records:
        assert API_KEY not in str(record.__dict__)


def test_timeout_error_contains_no_credentials(vendor, settings, caplog):
    configure(settings, vendor.url, TIMEOUT={"READ": 0.1}, RETRY={"MAX_ATTEMPTS": 1})
    vendor.route("GET", "/v1/rates/EUR", Reply.hang())

    with caplog.at_level(logging.DEBUG), pytest.raises(IntegrationTimeout) as caught:
        Rates().get_json("/v1/rates/EUR", operation="rate", params={"token": API_KEY})

    assert API_KEY not in str(caught.value)
    assert API_KEY not in caplog.text


# --- settings precedence ------------------------------------------------------------------------


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


# --- the circuit breaker ------------------------------------------------------------------------


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


def test_client_errors_do_not_trip_the_breaker(vendor, settings):
    configure(settings, vendor.url, BREAKER={"FAILURE_THRESHOLD": 2})
    vendor.route("GET", "/v1/rates/EUR", Reply.error(404))

    for _ in range(5):
        with pytest.raises(ClientRequestError):
            Rates().rate("EUR")

    assert vendor.count() == 5
    assert CircuitBreaker.objects.get(name="rates").state == "closed"


def test_consecutive_5xx_trip_the_breaker(vendor, settings, backoff):
    configure(settings, vendor.url, BREAKER={"FAILURE_THRESHOLD": 3}, RETRY={"MAX_ATTEMPTS": 1})
    vendor.route("GET", "/v1/rates/EUR", Reply.server_error())

    for _ in range(3):
        with pytest.raises(IntegrationUnavailable) as caught:
            Rates().rate("EUR")
        assert type(caught.value) is IntegrationUnavailable

    assert CircuitBreaker.objects.get(name="rates").state == "open"
    with pytest.raises(CircuitOpenError) as caught:
        Rates().rate("EUR")
    assert caught.value.retry_after is not None and caught.value.retry_after > 0
    assert vendor.count() == 3  # the fourth call never reached the vendor


def test_each_attempt_counts_and_an_open_breaker_stops_the_retries(vendor, settings, backoff):
    configure(settings, vendor.url, BREAKER={"FAILURE_THRESHOLD": 2}, RETRY={"MAX_ATTEMPTS": 5})
    vendor.route("GET", "/v1/rates/EUR", Reply.server_error())

    with pytest.raises(CircuitOpenError) as caught:
        Rates().rate("EUR")

    assert vendor.count() == 2  # attempts 1 and 2 failed and opened it; attempt 3 was refused
    assert caught.value.attempts == 2
    assert isinstance(caught.value.__cause__, IntegrationUnavailable)


def test_a_success_resets_the_consecutive_count(vendor, settings, backoff):
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
            outcomes.append(Rates().rate("EUR"))
        except IntegrationUnavailable:
            outcomes.append("down")

    assert outcomes == ["down", "down", 1, "down", "down", 1]
    assert CircuitBreaker.objects.get(name="rates").state == "closed"


def test_full_cycle_through_the_client(vendor, settings):
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
            Rates().rate("EUR")
    with pytest.raises(CircuitOpenError) as caught:
        Rates().rate("EUR")
    assert 0 < caught.value.retry_after <= 0.3
    time.sleep(0.35)
    assert Rates().rate("EUR") == 4  # the half-open probe succeeds and closes the breaker

    assert vendor.count() == 3
    row = CircuitBreaker.objects.get(name="rates")
    assert row.state == "closed"
    steps = list(row.transitions.order_by("created_at", "id").values_list("from_state", "to_state"))
    assert steps == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_invalid_responses_count_against_the_breaker(vendor, settings):
    configure(settings, vendor.url, BREAKER={"FAILURE_THRESHOLD": 2})
    vendor.route("GET", "/v1/rates/EUR", Reply.garbage())

    for _ in range(2):
        with pytest.raises(InvalidResponseError):
            Rates().rate("EUR")

    assert CircuitBreaker.objects.get(name="rates").state == "open"


def test_disabled_breaker_lets_calls_through(rates, vendor):
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": 1}))
    force_breaker("rates", "disabled")

    assert rates.rate("EUR") == 1
    assert vendor.count() == 1


# --- logging and signals ------------------------------------------------------------------------


def test_success_is_logged_with_extras(rates, vendor, caplog):
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": 1}))

    with caplog.at_level(logging.INFO, logger="integrations.calls"):
        rates.rate("EUR")

    [record] = [r for r in caplog.records if r.name == "integrations.calls"]
    assert record.levelno == logging.INFO
    assert record.service == "rates"
    assert record.operation == "rate"
    assert record.status == "success"
    assert record.attempts == 1
    assert 0 < record.duration < 5
    assert record.breaker_state == "closed"


def test_the_log_line_of_a_call_whose_snapshot_expired_makes_no_query(vendor, settings, caplog):
    # The snapshot is fresh when the call starts and has expired when it ends: the log line
    # must report the state this process last saw, not re-read it from the database.
    configure(settings, vendor.url, BREAKER={"CACHE_TTL": 0.3})
    vendor.route("GET", "/v1/rates/EUR", Reply.slow(0.6, Reply.json({"rate": 1})))
    client = Rates()
    get_breaker("rates").snapshot(fresh=True)  # creates the row; fresh for 0.3 s

    with (
        caplog.at_level(logging.INFO, logger="integrations.calls"),
        CaptureQueriesContext(connection) as ctx,
    ):
        assert client.rate("EUR") == 1

    assert [q["sql"] for q in ctx.captured_queries] == []
    [record] = [r for r in caplog.records if r.name == "integrations.calls"]
    assert record.breaker_state == "closed"
    assert record.duration >= 0.6


def test_failure_and_retries_are_logged(rates, vendor, caplog, backoff):
    vendor.route("GET", "/v1/rates/EUR", Reply.server_error(502))

    with (
        caplog.at_level(logging.INFO, logger="integrations.calls"),
        pytest.raises(IntegrationUnavailable),
    ):
        rates.rate("EUR")

    records = [r for r in caplog.records if r.name == "integrations.calls"]
    retried = [r for r in records if r.levelno == logging.INFO]
    [finished] = [r for r in records if r.levelno == logging.WARNING]
    assert [r.attempt for r in retried] == [1, 2]
    assert all(r.status_code == 502 for r in retried)
    assert finished.status == "integration_unavailable"
    assert finished.status_code == 502
    assert finished.attempts == 3


def test_signals_report_retries_and_the_finished_call(rates, vendor, backoff):
    vendor.route("GET", "/v1/rates/EUR", Reply.server_error(), Reply.json({"rate": 1}))
    finished, retried = [], []

    def on_finished(sender, **kwargs):
        finished.append((sender, kwargs))

    def on_retried(sender, **kwargs):
        retried.append((sender, kwargs))

    call_finished.connect(on_finished)
    call_retried.connect(on_retried)
    try:
        rates.rate("EUR")
    finally:
        call_finished.disconnect(on_finished)
        call_retried.disconnect(on_retried)

    [(sender, info)] = finished
    assert sender == "rates"
    assert info["operation"] == "rate"
    assert info["outcome"] == "success"
    assert info["attempts"] == 2
    assert info["duration"] > 0
    [(sender, info)] = retried
    assert sender == "rates"
    assert info["attempt"] == 1
    assert info["delay"] == backoff.sleeps[0]
    assert isinstance(info["error"], IntegrationUnavailable)


def test_circuit_open_outcome_in_signal(rates, vendor):
    force_breaker("rates", "forced_open")
    outcomes = []

    def on_finished(sender, **kwargs):
        outcomes.append((kwargs["outcome"], kwargs["attempts"]))

    call_finished.connect(on_finished)
    try:
        with pytest.raises(CircuitOpenError):
            rates.rate("EUR")
    finally:
        call_finished.disconnect(on_finished)
    assert outcomes == [("circuit_open_error", 0)]
