"""Concurrent deliveries of one event store exactly one row and announce it once.

The unique constraint on ``(endpoint, event_id)`` decides, inside PostgreSQL: no
check-then-insert race, no IntegrityError surfacing, no deadlock (dj-stripe issues 409, 1239,
1267; laravel-webhook-client's check-then-insert). For schemes whose id is not signed, the same
signed content under different ids is one event too: the partial unique constraint on
``(endpoint, content_digest)`` decides.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import pytest
from django.db import connection
from django.test import Client

from tests.servers import GunicornServer, UvicornServer
from webhooks.models import WebhookEvent
from webhooks.signals import webhook_duplicate, webhook_received
from webhooks.testing import build_request, send_request

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

DELIVERIES = 24


class Counted:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[int] = []

    def __call__(self, sender, event=None, **kwargs):
        with self.lock:
            self.events.append(event.pk if event is not None else kwargs["event_id"])


@pytest.mark.parametrize("endpoint", ["stripe", "github", "acme", "partner"])
def test_threads_delivering_one_event_at_once(endpoint):
    received, duplicates = Counted(), Counted()
    webhook_received.connect(received, weak=False)
    webhook_duplicate.connect(duplicates, weak=False)
    try:
        for _round in range(3):
            request = build_request(endpoint)
            barrier = threading.Barrier(DELIVERIES)

            def deliver(_, request=request, barrier=barrier):
                client = Client()
                barrier.wait()
                try:
                    response = send_request(client, request)
                    return response.status_code, response.json().get("status")
                finally:
                    connection.close()

            with ThreadPoolExecutor(DELIVERIES) as pool:
                answers = Counter(pool.map(deliver, range(DELIVERIES)))

            assert answers == {(200, "accepted"): 1, (200, "duplicate"): DELIVERIES - 1}
            rows = WebhookEvent.objects.filter(endpoint=endpoint, event_id=request.event_id)
            assert rows.count() == 1
            assert bytes(rows.get().body) == request.body
    finally:
        webhook_received.disconnect(received)
        webhook_duplicate.disconnect(duplicates)
    stored = list(WebhookEvent.objects.values_list("pk", flat=True))
    assert sorted(received.events) == sorted(stored)  # one webhook_received per stored event
    assert len(stored) == 3
    assert len(duplicates.events) == 3 * (DELIVERIES - 1)


HEADER_ID_PARTNER = {
    "PROVIDER": "hmac",
    "SECRETS": ["test-partner-secret"],
    "HEADER": "X-Partner-Signature",
    "EVENT_ID": "header:X-Partner-Event-Id",
    "EVENT_TYPE": "json:type",
}


@pytest.mark.parametrize(
    ("endpoint", "id_header"),
    [("github", "X-GitHub-Delivery"), ("partner-header-id", "X-Partner-Event-Id")],
)
def test_threads_delivering_one_signed_content_under_many_ids_at_once(
    settings, endpoint, id_header
):
    settings.WEBHOOKS = {
        **settings.WEBHOOKS,
        "ENDPOINTS": {**settings.WEBHOOKS["ENDPOINTS"], "partner-header-id": HEADER_ID_PARTNER},
    }
    duplicates: list[dict] = []
    lock = threading.Lock()

    def on_duplicate(sender, **kwargs):
        with lock:
            duplicates.append(kwargs)

    webhook_duplicate.connect(on_duplicate, weak=False)
    try:
        for _round in range(3):
            request = build_request(endpoint, {"type": "order.created", "n": _round})
            barrier = threading.Barrier(DELIVERIES)

            def deliver(_, request=request, barrier=barrier):
                client = Client()
                headers = {**request.headers, id_header: str(uuid.uuid4())}
                barrier.wait()
                try:
                    response = send_request(client, replace(request, headers=headers))
                    return response.status_code, response.json().get("status")
                finally:
                    connection.close()

            with ThreadPoolExecutor(DELIVERIES) as pool:
                answers = Counter(pool.map(deliver, range(DELIVERIES)))

            assert answers == {(200, "accepted"): 1, (200, "duplicate"): DELIVERIES - 1}
            stored = WebhookEvent.objects.get(endpoint=endpoint, body=request.body)
            replays = [d for d in duplicates if d["replay_of"] == stored.event_id]
            assert len(replays) == DELIVERIES - 1
    finally:
        webhook_duplicate.disconnect(on_duplicate)
    assert WebhookEvent.objects.count() == 3
    assert len(duplicates) == 3 * (DELIVERIES - 1)


def _gunicorn() -> GunicornServer:
    return GunicornServer(workers=4, threads=6)


def _uvicorn() -> UvicornServer:
    return UvicornServer(workers=4)


@pytest.mark.multiprocess
@pytest.mark.parametrize("start_server", [_gunicorn, _uvicorn], ids=["sync", "async"])
def test_processes_delivering_one_event_at_once(start_server):
    """Four worker processes, 24 simultaneous connections per event: gunicorn's with threads
    (the sync view), uvicorn's with their event loops (the async view)."""
    with start_server() as server:
        limits = httpx.Limits(max_connections=DELIVERIES)
        with httpx.Client(base_url=server.url, limits=limits, timeout=30) as http:
            for _round in range(3):
                request = build_request("stripe")
                barrier = threading.Barrier(DELIVERIES)

                def deliver(_, request=request, barrier=barrier):
                    barrier.wait()
                    response = send_request(http, request)
                    return response.status_code, response.json().get("status")

                with ThreadPoolExecutor(DELIVERIES) as pool:
                    answers = Counter(pool.map(deliver, range(DELIVERIES)))
                assert answers == {(200, "accepted"): 1, (200, "duplicate"): DELIVERIES - 1}, (
                    server.log()
                )
                assert WebhookEvent.objects.filter(event_id=request.event_id).count() == 1
        assert "Traceback" not in server.log()
