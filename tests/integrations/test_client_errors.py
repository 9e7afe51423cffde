"""ServiceClient over real HTTP to a FakeVendor on 127.0.0.1. Failures that are not retried (4xx,
invalid answers, redirects), and no credentials in errors or logs."""

from __future__ import annotations

import logging

import pytest

from integrations.exceptions import (
    ClientRequestError,
    IntegrationError,
    IntegrationTimeout,
    InvalidResponseError,
)
from integrations.testing import Reply
from tests.integrations.rates import API_KEY, configure

pytestmark = pytest.mark.django_db


# --- non-retryable failures -------------------------------------------------------------------


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


# --- no credentials in errors or logs ---------------------------------------------------------


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


def test_timeout_error_contains_no_credentials(make_rates, vendor, settings, caplog):
    configure(settings, vendor.url, TIMEOUT={"READ": 0.1}, RETRY={"MAX_ATTEMPTS": 1})
    vendor.route("GET", "/v1/rates/EUR", Reply.hang())

    with caplog.at_level(logging.DEBUG), pytest.raises(IntegrationTimeout) as caught:
        make_rates().get_json("/v1/rates/EUR", operation="rate", params={"token": API_KEY})

    assert API_KEY not in str(caught.value)
    assert API_KEY not in caplog.text
