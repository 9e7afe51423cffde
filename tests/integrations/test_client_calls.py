"""ServiceClient over real HTTP to a FakeVendor on 127.0.0.1. Healthy calls: parsed JSON,
parameters and bodies, every method, pooled connections, threads."""

from __future__ import annotations

import threading
from decimal import Decimal

import httpx
import pytest
from django.db import connection

from integrations.testing import Reply
from tests.forking import in_a_child
from tests.integrations.rates import API_KEY, Rates

pytestmark = pytest.mark.django_db


# --- healthy calls ----------------------------------------------------------------------------


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


def test_a_forked_child_opens_connections_of_its_own(sync_rates, vendor):
    """A child (gunicorn, Celery prefork) must not send on its parent's pooled sockets (the
    sync pool: an event loop's connections die with the loop, which a child does not run)."""
    rates = sync_rates
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": 1}))
    rates.rate("EUR")  # the parent's pooled keep-alive connection

    assert in_a_child(lambda: str(Rates().rate("EUR"))) == "1"
    rates.rate("EUR")

    parent, child, parent_again = (r.client_port for r in vendor.requests)
    assert child != parent
    assert parent_again == parent  # the parent keeps its pool


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
