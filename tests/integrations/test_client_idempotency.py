"""ServiceClient over real HTTP to a FakeVendor on 127.0.0.1. Idempotency keys: one per call, the
same across its retries, on the methods that need one."""

from __future__ import annotations

import uuid

import pytest

from integrations import ServiceClient
from integrations.testing import Reply

pytestmark = pytest.mark.django_db


# --- idempotency keys -------------------------------------------------------------------------


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
