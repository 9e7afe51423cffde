"""``POST /webhooks/<endpoint>/``: every row of DESIGN.md's response table, the order of the
checks, body size limits (declared, lying, chunked), the database and the broker down.

Every test of the contract runs against both views (the ``view`` fixture): the sync one through
Django's test ``Client`` (WSGI), the async one through ``tests.asgi.AsgiClient`` (Django's ASGI
handler, where ``WEBHOOKS["RECEIVE_VIEW"] = "auto"`` picks it), and, for tests that call the view
directly, ``receive`` or ``receive_async`` on a ``RequestFactory`` request. In-process tests run
on PostgreSQL; those that need a real server (a raw socket, a database or broker that is really
unreachable) run the sandbox under gunicorn (sync) and under uvicorn (async).
"""

from __future__ import annotations

import io
import json
import logging
import time

import httpx
import pytest
from asgiref.sync import async_to_sync
from django.db import connection, transaction
from django.test import Client, RequestFactory

from tests import postgres
from tests.asgi import AsgiClient
from tests.celery_worker import purge_broker, queued_messages
from tests.servers import GunicornServer, UvicornServer, free_port, wait_until
from tests.webhooks.providers.gunicorn_server import chunked, http_request
from tests.webhooks.providers.gunicorn_server import raw_request as send_raw
from tests.webhooks.providers.signal_log import signals  # noqa: F401  (fixture)
from webhooks import dispatch
from webhooks.exceptions import (
    DeliveryRefused,
    InvalidSignature,
    MalformedPayload,
    PayloadTooLarge,
    StorageUnavailable,
    UnknownEndpoint,
    WebhookConfigurationError,
)
from webhooks.models import WebhookEvent
from webhooks.providers import get_provider
from webhooks.signals import webhook_duplicate, webhook_received, webhook_rejected
from webhooks.storage import insert_once, insert_once_with_savepoint, insert_or_compare
from webhooks.testing import build_request, post_webhook, send_request, sign_request
from webhooks.views import receive, receive_async

pytestmark = pytest.mark.django_db

SECRETS = ("whsec_test_stripe_secret", "test-github-secret", "test-partner-secret")


def post(client, request, **extra):
    return send_request(client, request) if not extra else client.post(request.path, **extra)


@pytest.fixture(params=["sync", "async"])
def view(request):
    """Which receive view the test runs against."""
    return request.param


@pytest.fixture
def make_client(view):
    """A test client whose requests reach the ``view`` under test."""
    return Client if view == "sync" else AsgiClient


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture
def call_view(view):
    """Call the view under test directly: ``call_view(request, endpoint)``."""
    if view == "sync":
        return receive
    return async_to_sync(receive_async)


#: The real servers: the sync view under gunicorn, the async one under uvicorn.
SERVERS = {"sync": GunicornServer, "async": UvicornServer}


# -- the response table, row by row -----------------------------------------------------------


def test_verified_new_event_is_accepted(client):
    request = build_request("stripe", event_type="invoice.paid")
    response = send_request(client, request)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"status": "accepted", "event_id": request.event_id}
    event = WebhookEvent.objects.get()
    assert (event.event_type, event.status, event.attempts) == ("invoice.paid", "received", 0)
    assert event.payload == json.loads(request.body)


def test_verified_known_event_is_a_duplicate(client, signals):  # noqa: F811
    request = build_request("github", event_type="push")
    assert send_request(client, request).json()["status"] == "accepted"
    response = send_request(client, request)
    assert response.status_code == 200
    assert response.json() == {"status": "duplicate", "event_id": request.event_id}
    assert WebhookEvent.objects.count() == 1
    assert signals.of(webhook_duplicate) == [
        {"endpoint": "github", "event_id": request.event_id, "replay_of": None}
    ]


def test_known_id_with_another_body_is_a_duplicate_kept_as_stored(client, caplog):
    first = build_request("stripe", {"id": "evt_same", "type": "invoice.paid", "n": 1})
    second = build_request("stripe", {"id": "evt_same", "type": "invoice.paid", "n": 2})
    assert send_request(client, first).json()["status"] == "accepted"
    with caplog.at_level(logging.WARNING, logger="webhooks"):
        response = send_request(client, second)
    assert response.json() == {"status": "duplicate", "event_id": "evt_same"}
    event = WebhookEvent.objects.get()
    assert bytes(event.body) == first.body
    assert event.payload["n"] == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "different body" in warnings[0].getMessage()
    assert "evt_same" in warnings[0].getMessage()


@pytest.mark.parametrize("endpoint", ["stripe", "github", "acme", "partner"])
def test_bad_signature_is_400_and_nothing_is_stored(client, endpoint, signals):  # noqa: F811
    response = send_request(client, build_request(endpoint, bad_signature=True))
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_signature"}
    assert not WebhookEvent.objects.exists()
    assert signals.of(webhook_rejected) == [{"endpoint": endpoint, "reason": "invalid_signature"}]


def test_stale_signature_is_400(client):
    request = build_request("stripe", timestamp=int(time.time()) - 3600)
    assert send_request(client, request).json() == {"error": "invalid_signature"}


def test_missing_signature_is_400(client):
    response = client.post("/webhooks/stripe/", data=b"{}", content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {"error": "invalid_signature"}


@pytest.mark.parametrize(
    "body", [b"not json", b"", b"[]", b'"text"', b"\xff\xfe", b'{"type": "no id here"}']
)
def test_verified_but_unusable_body_is_malformed(client, body):
    headers = sign_request("partner", body)
    response = client.post(
        "/webhooks/partner/",
        data=body,
        content_type="application/json",
        headers={k: v for k, v in headers.items() if k != "Content-Type"},
    )
    assert response.status_code == 400
    assert response.json() == {"error": "malformed_payload"}
    assert not WebhookEvent.objects.exists()


@postgres.DATA_ERRORS
def test_payload_that_postgresql_cannot_store_is_malformed(client):
    # Valid JSON, but PostgreSQL's jsonb refuses \u0000: a DataError, answered 400, not 500.
    body = b'{"id": "evt_nul", "type": "a.b", "note": "x\\u0000y"}'
    response = client.post(
        "/webhooks/partner/",
        data=body,
        content_type="application/json",
        headers={"X-Partner-Signature": sign_request("partner", body)["X-Partner-Signature"]},
    )
    assert response.json() == {"error": "malformed_payload"}
    assert not WebhookEvent.objects.exists()
    # The test's transaction is still usable: the failed insert ran in a savepoint.
    assert send_request(client, build_request("partner")).status_code == 200


def test_unknown_endpoint_is_404(client, signals):  # noqa: F811
    response = client.post("/webhooks/nope/", data=b"{}", content_type="application/json")
    assert response.status_code == 404
    assert response.json() == {"error": "unknown_endpoint"}
    assert signals.of(webhook_rejected) == [{"endpoint": "nope", "reason": "unknown_endpoint"}]


@pytest.mark.parametrize(
    ("refusal", "status", "code"),
    [
        (UnknownEndpoint, 404, "unknown_endpoint"),
        (PayloadTooLarge, 413, "payload_too_large"),
        (InvalidSignature, 400, "invalid_signature"),
        (MalformedPayload, 400, "malformed_payload"),
        (StorageUnavailable, 503, "unavailable"),
    ],
)
def test_each_refusal_carries_its_answer(refusal, status, code):
    """The status and error code live on the exception class, as DRF's ``APIException``'s."""
    assert issubclass(refusal, DeliveryRefused)
    assert (refusal.status_code, refusal.default_code) == (status, code)


def test_refusals_are_answered_byte_for_byte(client, settings):
    """The exact bodies of the contract's table (the view maps no code by hand)."""
    settings.WEBHOOKS = {**settings.WEBHOOKS, "MAX_BODY_BYTES": 64}
    cases = [
        (client.post("/webhooks/nope/", data=b"{}", content_type="application/json"),
         404, b'{"error": "unknown_endpoint"}'),
        (send_request(client, build_request("stripe", {"id": "evt_big", "pad": "x" * 100})),
         413, b'{"error": "payload_too_large"}'),
        (send_request(client, build_request("partner", {"id": "e", "type": "t"},
                                            bad_signature=True)),
         400, b'{"error": "invalid_signature"}'),
        (send_request(client, build_request("partner", b"not json")),
         400, b'{"error": "malformed_payload"}'),
    ]  # fmt: skip
    for response, status, body in cases:
        assert (response.status_code, response.content) == (status, body)
        assert response["Content-Type"] == "application/json"


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete", "head", "options"])
@pytest.mark.parametrize("endpoint", ["stripe", "nope"])
def test_not_post_is_405_even_for_unknown_endpoints(client, method, endpoint):
    response = getattr(client, method)(f"/webhooks/{endpoint}/")
    assert response.status_code == 405
    assert response.content == b""
    assert response["Allow"] == "POST"


def test_declared_size_over_the_limit_is_413_before_the_signature(client, settings, signals):  # noqa: F811
    settings.WEBHOOKS = {**settings.WEBHOOKS, "MAX_BODY_BYTES": 1000}
    response = client.post("/webhooks/stripe/", data=b"x" * 1001, content_type="application/json")
    assert response.status_code == 413
    assert response.json() == {"error": "payload_too_large"}
    assert signals.of(webhook_rejected)[-1] == {"endpoint": "stripe", "reason": "payload_too_large"}


def test_default_limit_is_one_mebibyte(client):
    body = json.dumps({"id": "evt_big", "type": "a.b", "pad": "x" * (1_048_576 - 40)}).encode()
    assert len(body) > 1_048_576
    assert send_request(client, build_request("partner", body)).status_code == 413
    fits = json.dumps({"id": "evt_fits", "type": "a.b", "pad": "x" * (1_048_576 - 60)}).encode()
    assert len(fits) <= 1_048_576
    assert send_request(client, build_request("partner", fits)).status_code == 200


def test_declared_size_is_checked_before_the_body_is_read(call_view):
    class Unreadable(io.RawIOBase):
        def read(self, size=-1):
            raise AssertionError("the body was read")

    request = RequestFactory().generic(
        "POST", "/webhooks/stripe/", b"", content_type="application/json"
    )
    request.META["CONTENT_LENGTH"] = str(10 * 1024 * 1024)
    request.META["wsgi.input"] = Unreadable()
    request._stream = Unreadable()
    response = call_view(request, "stripe")
    assert response.status_code == 413


def test_unsigned_request_is_refused_before_its_body_is_read(call_view):
    class Unreadable(io.RawIOBase):
        def read(self, size=-1):
            raise AssertionError("the body was read")

    request = RequestFactory().generic(
        "POST", "/webhooks/stripe/", b"{}", content_type="application/json"
    )
    request._stream = Unreadable()
    assert json.loads(call_view(request, "stripe").content) == {"error": "invalid_signature"}


def test_body_without_declared_length_is_cut_off_at_the_limit(settings, call_view):
    settings.WEBHOOKS = {**settings.WEBHOOKS, "MAX_BODY_BYTES": 4096}
    reads = []

    class Endless(io.RawIOBase):
        def read(self, size=-1):
            reads.append(size)
            return b"x" * size

    request = RequestFactory().generic(
        "POST", "/webhooks/partner/", b"", content_type="application/json"
    )
    request.META.pop("CONTENT_LENGTH", None)
    request.META["wsgi.input_terminated"] = True
    request.META["wsgi.input"] = Endless()
    request.META["HTTP_X_PARTNER_SIGNATURE"] = "00"
    response = call_view(request, "partner")
    assert response.status_code == 413
    assert sum(reads) == 4097  # never more than limit + 1 bytes


def test_ordering_of_checks(client, settings):
    settings.WEBHOOKS = {**settings.WEBHOOKS, "MAX_BODY_BYTES": 100}
    big = b"x" * 101
    # 405 before 404
    assert client.get("/webhooks/nope/").status_code == 405
    # 404 before 413
    assert client.post("/webhooks/nope/", big, content_type="text/plain").status_code == 404
    # 413 (declared) before 400 (signature)
    assert client.post("/webhooks/partner/", big, content_type="text/plain").status_code == 413
    # signature before parse: a bad signature on a non-JSON body is invalid_signature
    bad = client.post(
        "/webhooks/partner/",
        b"nope",
        content_type="text/plain",
        headers={"X-Partner-Signature": "00"},
    )
    assert bad.json() == {"error": "invalid_signature"}


def test_limit_is_ours_not_data_upload_max_memory_size(client, settings):
    # The view never touches request.body or request.POST, so Django's limit does not apply:
    # MAX_BODY_BYTES decides, whether it is smaller or larger than Django's.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 100
    request = build_request("stripe")
    assert len(request.body) > 100
    assert send_request(client, request).status_code == 200


def test_misconfigured_endpoint_raises_naming_the_key(client, settings):
    settings.WEBHOOKS = {"ENDPOINTS": {"broken": {"PROVIDER": "stripe", "SECRETS": []}}}
    with pytest.raises(
        WebhookConfigurationError, match=r'WEBHOOKS\["ENDPOINTS"\]\["broken"\]\["SECRETS"\]'
    ):
        client.post("/webhooks/broken/", data=b"{}", content_type="application/json")


def test_no_secret_in_responses_or_logs(client, caplog):
    caplog.set_level(logging.DEBUG)
    responses = [
        send_request(client, build_request(name, bad_signature=bad))
        for name in ("stripe", "github", "acme", "partner")
        for bad in (False, True)
    ]
    text = "\n".join(r.getMessage() for r in caplog.records)
    text += "\n".join(r.content.decode() for r in responses)
    assert {r.status_code for r in responses} == {200, 400}
    for secret in (*SECRETS, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"):
        assert secret not in text


def test_csrf_is_not_required(make_client):
    csrf_client = make_client(enforce_csrf_checks=True)
    assert post_webhook(csrf_client, "stripe").status_code == 200


def test_stored_event_is_ready_for_processing(
    client,
    signals,  # noqa: F811
    django_capture_on_commit_callbacks,
):
    purge_broker()
    with django_capture_on_commit_callbacks(execute=True):
        response = post_webhook(client, "acme")
        assert response.status_code == 200
        # Nothing before the insert commits.
        assert not signals.of(webhook_received)
        assert dispatch.dispatcher.pending == 0
    assert len(signals.of(webhook_received)) == 1
    assert dispatch.flush()
    event = WebhookEvent.objects.get()
    # Through this process's dispatcher (webhooks.dispatch), which publishes batches of keys.
    assert queued_messages() == [("webhooks.process_events", [[event.pk]])]


# -- the insert itself ---------------------------------------------------------------------


def _event(event_id: str, body: bytes = b"{}") -> WebhookEvent:
    return WebhookEvent(
        endpoint="partner", event_id=event_id, event_type="t", body=body, payload={}
    )


def test_insert_once_outside_and_inside_a_transaction(transactional_db):
    assert not connection.in_atomic_block
    first = _event("evt_a")
    assert insert_once(first, "default") is True and first.pk
    assert insert_once(_event("evt_a"), "default") is False
    with transaction.atomic():
        assert insert_once(_event("evt_a"), "default") is False
        assert insert_once(_event("evt_b"), "default") is True
    assert WebhookEvent.objects.count() == 2


def test_portable_savepoint_insert_decides_by_the_constraint_too():
    first = _event("evt_sp")
    assert insert_once_with_savepoint(first, "default") is True and first.pk
    again = _event("evt_sp")
    assert insert_once_with_savepoint(again, "default") is False
    assert again.pk is None
    assert WebhookEvent.objects.filter(event_id="evt_sp").count() == 1


def test_portable_savepoint_insert_decides_replays_by_the_digest_constraint():
    first, replay = _event("evt_sp1"), _event("evt_sp2")
    first.content_digest = replay.content_digest = bytes(range(32))
    assert insert_once_with_savepoint(first, "default") is True
    assert insert_once_with_savepoint(replay, "default") is False
    assert replay.pk is None
    assert list(WebhookEvent.objects.values_list("event_id", flat=True)) == ["evt_sp1"]


@postgres.DATA_ERRORS
def test_malformed_payload_maps_from_data_error():
    from webhooks.providers.base import ParsedEvent
    from webhooks.receiving import store_event

    parsed = ParsedEvent("evt_x", "t", None, {"bad": "\x00"})
    with pytest.raises(MalformedPayload):
        store_event(get_provider("partner"), parsed, b"{}", {})


# -- a real server: lying lengths, chunked bodies, database and broker down -----------------


@pytest.fixture
def live_server_of(view):
    """The real server of the view under test: gunicorn (sync) or uvicorn (async)."""
    return SERVERS[view]


@pytest.fixture
def running_server(transactional_db, live_server_of):
    with live_server_of(webhooks={"MAX_BODY_BYTES": 65536}) as server:
        yield server


@pytest.mark.slow
@pytest.mark.multiprocess
def test_raw_socket_size_limits(running_server, view):
    port = running_server.port

    def raw_request(port, data):
        return send_raw(port, data, half_close=view == "sync")

    request = build_request("partner")

    # Declared over the limit: 413 at once; the body is never sent (the server did not wait).
    data = http_request("POST", request.path, request.headers, content_length=10 * 1024 * 1024)
    assert raw_request(port, data) == (413, b'{"error": "payload_too_large"}')
    if view == "async":
        # Under uvicorn a client waiting on "Expect: 100-continue" is answered 413 at once,
        # never "100 Continue" (WebhookBodyLimit asks for no byte of the body).
        expecting = {**request.headers, "Expect": "100-continue"}
        data = http_request("POST", request.path, expecting, content_length=10 * 1024 * 1024)
        assert raw_request(port, data) == (413, b'{"error": "payload_too_large"}')

    # A body larger than declared: only the declared bytes are read. The declared part is a
    # complete signed event; what follows is never seen by the application.
    extra = b"X" * 200_000
    data = http_request(
        "POST",
        request.path,
        request.headers,
        request.body + extra,
        content_length=len(request.body),
    )
    status, body = raw_request(port, data)
    if view == "sync":
        assert status == 200, running_server.log()
        assert json.loads(body) == {"status": "accepted", "event_id": request.event_id}
        assert bytes(WebhookEvent.objects.get(event_id=request.event_id).body) == request.body
    else:
        # uvicorn parses what follows the declared body as the next request on the connection
        # and answers it 400 (closing the connection, whether or not the first answer was
        # sent): the application never sees a byte past the declared length either way.
        assert status in (200, 400), running_server.log()
        stored = WebhookEvent.objects.filter(event_id=request.event_id)
        assert [bytes(e.body) for e in stored] in ([], [request.body])

    # No declared length (chunked) and over the limit: 413 while reading.
    big = build_request("partner", {"id": "evt_chunked_big", "type": "a", "pad": "y" * 70_000})
    headers = {**big.headers, "Transfer-Encoding": "chunked"}
    status, body = raw_request(
        port, http_request("POST", big.path, headers, chunked(big.body), content_length=None)
    )
    assert (status, body) == (413, b'{"error": "payload_too_large"}'), running_server.log()

    # Chunked and within the limit: read to its end and accepted.
    small = build_request("partner", {"id": "evt_chunked_ok", "type": "a", "pad": "z" * 30_000})
    headers = {**small.headers, "Transfer-Encoding": "chunked"}
    status, body = raw_request(
        port,
        http_request("POST", small.path, headers, chunked(small.body, 1000), content_length=None),
    )
    assert status == 200, running_server.log()
    assert bytes(WebhookEvent.objects.get(event_id="evt_chunked_ok").body) == small.body
    assert not WebhookEvent.objects.filter(event_id="evt_chunked_big").exists()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_database_unreachable_is_503(transactional_db, live_server_of):
    closed = free_port()
    env = {"TETHER_PG_URL": f"postgres://postgres@127.0.0.1:{closed}/test"}
    with live_server_of(env=env) as server, httpx.Client(base_url=server.url) as http:
        response = send_request(http, build_request("stripe"))
        assert response.status_code == 503, server.log()
        assert response.content == b'{"error": "unavailable"}'
        # Refusals that need no database are still answered as usual.
        assert send_request(http, build_request("stripe", bad_signature=True)).status_code == 400
        assert http.post("/webhooks/nope/", content=b"{}").status_code == 404
        log = server.log()
    assert "OperationalError" in log  # logged as the reason, without any secret
    assert "whsec_test_stripe_secret" not in log


@pytest.mark.slow
@pytest.mark.multiprocess
def test_broker_down_still_answers_200_and_the_event_stays_received(
    transactional_db, live_server_of
):
    closed = free_port()
    env = {"TETHER_WORKER_BROKER_URL": f"redis://127.0.0.1:{closed}/0"}
    with live_server_of(env=env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        request = build_request("stripe")
        started = time.monotonic()
        response = send_request(http, request)
        elapsed = time.monotonic() - started
        assert response.status_code == 200, server.log()
        assert response.json() == {"status": "accepted", "event_id": request.event_id}
        # The dispatcher thread publishes after the response, and logs the refusal.
        log = wait_until(lambda: "could not enqueue" in server.log() and server.log(),
                         timeout=10, message="the refusal to be logged")  # fmt: skip
    event = WebhookEvent.objects.get(event_id=request.event_id)
    assert (event.status, event.attempts) == ("received", 0)
    assert elapsed < 10
    assert "redis://" not in log


def test_view_is_not_wrapped_by_atomic_requests(transactional_db, client, monkeypatch):
    monkeypatch.setitem(connection.settings_dict, "ATOMIC_REQUESTS", True)
    seen = []

    def receiver(sender, **kwargs):
        seen.append(connection.in_atomic_block)

    webhook_duplicate.connect(receiver)
    try:
        request = build_request("stripe")
        assert send_request(client, request).json()["status"] == "accepted"
        assert send_request(client, request).json()["status"] == "duplicate"
    finally:
        webhook_duplicate.disconnect(receiver)
    assert seen == [False]


def test_provider_and_secrets_never_show_the_secret_in_repr():
    provider = get_provider("stripe")
    text = repr(provider) + repr(provider.secrets) + repr(vars(provider).get("secrets"))
    assert "whsec_test_stripe_secret" not in text
    assert repr(provider) == "<StripeProvider endpoint='stripe'>"
    assert provider.secrets[0] == "whsec_test_stripe_secret"  # still the value where it is used


@pytest.mark.parametrize("signal", [webhook_rejected, webhook_duplicate])
def test_a_failing_signal_receiver_does_not_change_the_answer(client, caplog, signal):
    def broken(sender, **kwargs):
        raise RuntimeError("metrics are down")

    signal.connect(broken)
    try:
        request = build_request("github")
        with caplog.at_level(logging.ERROR, logger="webhooks"):
            assert send_request(client, request).status_code == 200
            assert send_request(client, request).json()["status"] == "duplicate"
            bad = send_request(client, build_request("github", bad_signature=True))
    finally:
        signal.disconnect(broken)
    assert bad.status_code == 400
    assert any("RuntimeError" in r.getMessage() for r in caplog.records)


def test_a_failing_webhook_received_receiver_keeps_the_event(
    client, django_capture_on_commit_callbacks
):
    from webhooks.signals import webhook_received

    def broken(sender, **kwargs):
        raise RuntimeError("boom")

    webhook_received.connect(broken)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            response = post_webhook(client, "acme")
    finally:
        webhook_received.disconnect(broken)
    assert response.status_code == 200
    assert WebhookEvent.objects.count() == 1


def test_client_gone_mid_body_is_answered_without_a_500(call_view):
    from django.http import UnreadablePostError

    class Broken(io.RawIOBase):
        def read(self, size=-1):
            raise UnreadablePostError("connection reset")

    request = RequestFactory().generic(
        "POST",
        "/webhooks/partner/",
        b"{}",
        content_type="application/json",
        headers={"X-Partner-Signature": "00"},
    )
    request._stream = Broken()
    response = call_view(request, "partner")
    assert response.status_code == 400
    assert json.loads(response.content) == {"error": "malformed_payload"}


@postgres.STATEMENTS
def test_insert_or_compare_reports_duplicates_and_their_bodies(transactional_db):
    assert insert_or_compare(_event("evt_c", b"one"), "default") == (True, None)
    assert insert_or_compare(_event("evt_c", b"one"), "default") == (False, True)
    assert insert_or_compare(_event("evt_c", b"two"), "default") == (False, False)
    assert bytes(WebhookEvent.objects.get(event_id="evt_c").body) == b"one"


@postgres.STATEMENTS
def test_one_statement_per_delivery(transactional_db, client):
    """The receive path's database cost: one statement for a new event, one for a duplicate."""
    from django.test.utils import CaptureQueriesContext

    request = build_request("stripe")
    with CaptureQueriesContext(connection) as new:
        assert send_request(client, request).json()["status"] == "accepted"
    with CaptureQueriesContext(connection) as duplicate:
        assert send_request(client, request).json()["status"] == "duplicate"
    # On PostgreSQL the insert and, for a duplicate, the body comparison are one statement.
    assert [q["sql"].split()[0] for q in new.captured_queries] == ["WITH"]
    assert [q["sql"].split()[0] for q in duplicate.captured_queries] == ["WITH"]


def test_meta_headers_read_as_request_headers_do():
    """The receive view's header view (read from META when asked) answers as Django's
    ``request.headers`` does: case-insensitive, ``_`` for ``-``, the two unprefixed headers,
    and the same mapping when iterated or compared."""
    from django.http.request import HttpHeaders

    from webhooks.receiving import MetaHeaders

    meta = {
        "HTTP_STRIPE_SIGNATURE": "t=1,v1=ab",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "12",
        "HTTP_X_GITHUB_EVENT": "push",
        "wsgi.input": object(),
        "REMOTE_ADDR": "127.0.0.1",
    }
    headers = MetaHeaders(meta)
    assert headers["stripe-signature"] == headers["Stripe_Signature"] == "t=1,v1=ab"
    assert headers.get("Content-Type") == "application/json"
    assert headers.get("content-length") == "12"
    assert headers.get("Remote-Addr") is None and "wsgi.input" not in headers
    assert headers == HttpHeaders(meta)
    assert dict(headers) == dict(HttpHeaders(meta)) and len(headers) == 4


# -- which view serves the URL; the ASGI body limit ------------------------------------------


@pytest.mark.parametrize(
    ("mode", "under_wsgi", "under_asgi"),
    [
        ("auto", receive, receive_async),
        ("sync", receive, receive),
        ("async", receive_async, receive_async),
    ],
)
def test_receive_view_setting_picks_the_view_at_dispatch_time(
    settings, mode, under_wsgi, under_asgi
):
    import asyncio

    from django.urls import resolve, reverse

    settings.WEBHOOKS = {**settings.WEBHOOKS, "RECEIVE_VIEW": mode}

    async def resolved_on_a_loop():
        return resolve("/webhooks/stripe/")

    assert resolve("/webhooks/stripe/").func is under_wsgi
    match = asyncio.run(resolved_on_a_loop())
    assert match.func is under_asgi
    assert (match.kwargs, match.url_name, match.namespace) == ({"endpoint": "stripe"}, "receive",
                                                                "webhooks")  # fmt: skip
    assert reverse("webhooks:receive", args=["stripe"]) == "/webhooks/stripe/"


@pytest.mark.parametrize("mode", ["auto", "sync"])
def test_asgi_requests_reach_the_async_view_unless_sync_is_forced(settings, caplog, mode):
    """Seen from outside: only the async view warns that the ASGI application lacks
    ``WebhookBodyLimit`` (once per process and settings)."""
    settings.WEBHOOKS = {**settings.WEBHOOKS, "RECEIVE_VIEW": mode}
    unguarded = AsgiClient(guarded=False)
    with caplog.at_level(logging.WARNING, logger="webhooks"):
        assert post_webhook(unguarded, "stripe").status_code == 200
        assert post_webhook(unguarded, "stripe").status_code == 200
    warnings = [r.getMessage() for r in caplog.records if "WebhookBodyLimit" in r.getMessage()]
    assert len(warnings) == (1 if mode == "auto" else 0)


@pytest.mark.parametrize("value", ["ASGI", "", None, True, 1])
def test_receive_view_setting_is_validated(settings, value):
    settings.WEBHOOKS = {**settings.WEBHOOKS, "RECEIVE_VIEW": value}
    from django.urls import resolve

    with pytest.raises(WebhookConfigurationError, match=r'WEBHOOKS\["RECEIVE_VIEW"\]'):
        resolve("/webhooks/stripe/")


def _through_body_limit(path, messages, headers=()):
    """Run ``WebhookBodyLimit`` around a small ASGI app that reads the body as Django's handler
    does (until ``more_body`` is false): (the body it read, the scope it got, receive calls)."""
    import asyncio

    from webhooks.asgi import WebhookBodyLimit

    seen = {}
    calls = []

    async def receive():
        calls.append(1)
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        seen.update(body=body, scope=scope)

    async def send(message):
        pass

    scope = {"type": "http", "method": "POST", "path": path, "headers": list(headers)}
    asyncio.run(WebhookBodyLimit(app)(scope, receive, send))
    return seen["body"], seen["scope"], len(calls)


def _chunks(size, count):
    return [{"type": "http.request", "body": b"x" * size, "more_body": True}] * count + [
        {"type": "http.request", "body": b"", "more_body": False}
    ]


def test_asgi_body_limit_cuts_a_body_at_the_limit_plus_one(settings):
    from webhooks.views import BODY_BYTES_KEY

    settings.WEBHOOKS = {**settings.WEBHOOKS, "MAX_BODY_BYTES": 1000}
    body, scope, calls = _through_body_limit("/webhooks/partner/", _chunks(300, 100))
    assert len(body) == 1001 and scope[BODY_BYTES_KEY] == 1001
    assert calls == 4  # 1,200 bytes asked for, of the 30,000 the client would send


@pytest.mark.parametrize("declared", [b"abc", b"-5", b"10", b""])
def test_asgi_body_limit_bounds_a_body_whose_declared_length_is_wrong(settings, declared):
    """A malformed, negative or lying ``Content-Length`` changes nothing: at most the limit
    plus one byte gets through."""
    from webhooks.views import BODY_BYTES_KEY

    settings.WEBHOOKS = {**settings.WEBHOOKS, "MAX_BODY_BYTES": 1000}
    headers = [(b"content-length", declared)]
    body, scope, _ = _through_body_limit("/webhooks/partner/", _chunks(300, 10), headers)
    assert len(body) == 1001 and scope[BODY_BYTES_KEY] == 1001


def test_asgi_body_limit_passes_a_body_within_the_limit_whole(settings):
    from webhooks.views import BODY_BYTES_KEY

    settings.WEBHOOKS = {**settings.WEBHOOKS, "MAX_BODY_BYTES": 1000}
    body, scope, _ = _through_body_limit("/webhooks/partner/", _chunks(250, 4))
    assert len(body) == 1000 and scope[BODY_BYTES_KEY] == 1000


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/webhooks/partner/", [(b"content-length", b"1001")]),  # declared over the limit
        ("/webhooks/partner/", [(b"Content-Length", b"99999999999999999999")]),
        ("/webhooks/nope/", []),  # unknown endpoint: the view answers 404 without reading
    ],
)
def test_asgi_body_limit_reads_nothing_when_the_view_will_not(settings, path, headers):
    from webhooks.views import BODY_BYTES_KEY

    settings.WEBHOOKS = {**settings.WEBHOOKS, "MAX_BODY_BYTES": 1000}
    body, scope, calls = _through_body_limit(path, _chunks(300, 10), headers)
    assert (body, scope[BODY_BYTES_KEY], calls) == (b"", 0, 0)


@pytest.mark.parametrize(
    "path",
    [
        "/health/",  # not the receive view
        "/webhooks/broken/",  # misconfigured: the view raises, Django reports it
    ],
)
def test_asgi_body_limit_leaves_other_requests_alone(settings, path):
    from webhooks.views import BODY_BYTES_KEY

    settings.WEBHOOKS = {
        **settings.WEBHOOKS,
        "MAX_BODY_BYTES": 1000,
        "ENDPOINTS": {
            **settings.WEBHOOKS["ENDPOINTS"],
            "broken": {"PROVIDER": "stripe", "SECRETS": []},
        },
    }
    body, scope, calls = _through_body_limit(path, _chunks(300, 10))
    assert len(body) == 3000 and BODY_BYTES_KEY not in scope and calls == 11


def test_asgi_store_runs_off_the_event_loop(signals):  # noqa: F811
    """Storing (and what it sends) runs in a thread with no event loop, never on the loop."""
    import asyncio
    import threading

    seen = []

    def receiver(sender, **kwargs):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            seen.append(threading.current_thread().name)
        else:
            seen.append("on the event loop")

    webhook_duplicate.connect(receiver)
    try:
        request = build_request("stripe")
        client = AsgiClient()
        assert send_request(client, request).json()["status"] == "accepted"
        assert send_request(client, request).json()["status"] == "duplicate"
    finally:
        webhook_duplicate.disconnect(receiver)
    assert len(seen) == 1 and seen[0] != "on the event loop"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_uvicorn_without_the_body_limit_waits_for_the_body_and_warns(transactional_db):
    """What ``WebhookBodyLimit`` changes: without it Django's ASGI handler waits for (and would
    buffer) a body declared over the limit before the view can refuse it."""
    import socket

    request = build_request("partner")
    data = http_request("POST", request.path, request.headers, content_length=10 * 1024 * 1024)
    with UvicornServer(app="django_application") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
            sock.sendall(data)
            with pytest.raises(TimeoutError):
                sock.recv(100)  # no answer: the handler is still reading the body
        with httpx.Client(base_url=server.url) as http:
            assert send_request(http, build_request("stripe")).status_code == 200
        log = wait_until(lambda: "WebhookBodyLimit" in server.log() and server.log(),
                         timeout=10, message="the warning")  # fmt: skip
    assert log.count("WebhookBodyLimit") == 1
