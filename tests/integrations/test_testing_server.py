"""integrations.testing: the FakeVendor server (driven with plain httpx), instant_backoff and
force_breaker."""

from __future__ import annotations

import email.utils
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from integrations.breaker import get_breaker
from integrations.exceptions import CircuitOpenError
from integrations.models import BreakerTransition, CircuitBreaker
from integrations.testing import (
    FakeVendor,
    Reply,
    force_breaker,
    reset_local_state,
    unused_port_url,
)


def test_replies_in_order_then_the_last_repeats(vendor):
    vendor.route("GET", "/x", Reply.server_error(502), Reply.json({"n": 2}))

    statuses = [httpx.get(f"{vendor.url}/x").status_code for _ in range(4)]

    assert statuses == [502, 200, 200, 200]
    assert vendor.count("GET", "/x") == 4


def test_requests_are_recorded(vendor):
    vendor.route("POST", "/v1/things", Reply.json({"ok": True}, status=201))

    response = httpx.post(
        f"{vendor.url}/v1/things?expand=a&expand=b",
        json={"name": "x"},
        headers={"Idempotency-Key": "k-1", "Authorization": "Bearer t"},
    )

    assert response.status_code == 201
    [request] = vendor.requests
    assert (request.method, request.path) == ("POST", "/v1/things")
    assert request.params == {"expand": ["a", "b"]}
    assert request.header("idempotency-key") == "k-1"
    assert request.header("AUTHORIZATION") == "Bearer t"
    assert request.header("X-Missing", "none") == "none"
    assert request.json() == {"name": "x"}
    assert vendor.headers_seen("Idempotency-Key", "POST", "/v1/things") == ["k-1"]
    assert vendor.requests_to("GET") == []


def test_chunked_request_bodies_are_read(vendor):
    vendor.route("POST", "/up", Reply.json({}))

    def chunks():
        yield b'{"a": '
        yield b"1}"

    httpx.post(f"{vendor.url}/up", content=chunks())
    assert vendor.requests[0].json() == {"a": 1}


def test_unrouted_requests_answer_404_and_are_recorded(vendor):
    response = httpx.delete(f"{vendor.url}/nowhere")
    assert response.status_code == 404
    assert vendor.count() == 1


def test_callable_replies_see_the_request(vendor):
    vendor.route(
        "POST",
        "/echo",
        lambda request: Reply.json({"key": request.header("Idempotency-Key")}),
    )
    response = httpx.post(f"{vendor.url}/echo", headers={"Idempotency-Key": "abc"})
    assert response.json() == {"key": "abc"}


def test_rerouting_replaces_the_script_and_reset_forgets(vendor):
    vendor.route("GET", "/x", Reply.json(1))
    vendor.route("GET", "/x", Reply.json(2))
    assert httpx.get(f"{vendor.url}/x").json() == 2
    vendor.reset()
    assert vendor.count() == 0
    assert httpx.get(f"{vendor.url}/x").status_code == 404


def test_a_route_needs_a_reply(vendor):
    with pytest.raises(ValueError):
        vendor.route("GET", "/x")


def test_rate_limited_headers():
    assert Reply.rate_limited(30).headers[-1] == ("Retry-After", "30")
    assert Reply.rate_limited(1.5).headers[-1] == ("Retry-After", "1.5")
    when = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    name, value = Reply.rate_limited(when).headers[-1]
    assert name == "Retry-After"
    assert email.utils.parsedate_to_datetime(value) == when
    assert ("Retry-After", "later") in Reply.rate_limited("later").headers
    assert all(name != "Retry-After" for name, _ in Reply.rate_limited(None).headers)
    assert Reply.rate_limited(1).status == 429


def test_rate_limited_over_http(vendor):
    when = datetime.now(UTC) + timedelta(minutes=5)
    vendor.route("GET", "/r", Reply.rate_limited(when))
    response = httpx.get(f"{vendor.url}/r")
    assert response.status_code == 429
    assert abs(email.utils.parsedate_to_datetime(response.headers["Retry-After"]) - when) < (
        timedelta(seconds=1)
    )


def test_slow_answers_after_the_delay(vendor):
    vendor.route("GET", "/slow", Reply.slow(0.3, Reply.json({"ok": 1})))
    started = time.monotonic()
    assert httpx.get(f"{vendor.url}/slow").json() == {"ok": 1}
    assert time.monotonic() - started >= 0.3


def test_garbage_truncated_and_disconnect(vendor):
    vendor.route("GET", "/garbage", Reply.garbage())
    vendor.route("GET", "/cut", Reply.truncated(b'{"a": 1', declared_length=50))
    vendor.route("GET", "/drop", Reply.disconnect())

    garbage = httpx.get(f"{vendor.url}/garbage")
    assert garbage.status_code == 200
    assert garbage.headers["Content-Type"] == "application/json"
    with pytest.raises(ValueError):
        garbage.json()
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{vendor.url}/cut")
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(f"{vendor.url}/drop")
    assert vendor.count() == 3


def test_hang_never_answers_until_the_server_closes():
    vendor = FakeVendor().start()
    vendor.route("GET", "/hang", Reply.hang())
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{vendor.url}/hang", timeout=0.3)

    outcome: list[BaseException] = []

    def call() -> None:
        try:
            httpx.get(f"{vendor.url}/hang", timeout=30)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.2)
    started = time.monotonic()
    vendor.stop()
    thread.join(5)

    assert not thread.is_alive()
    assert time.monotonic() - started < 5
    assert isinstance(outcome[0], httpx.RemoteProtocolError | httpx.ReadError)
    assert vendor.count() == 2


def test_trickle_sends_the_body_piece_by_piece(vendor):
    vendor.route("GET", "/t", Reply.trickle(Reply.json({"a": 1}), interval=0.05, piece_size=2))

    arrivals = []
    started = time.monotonic()
    with httpx.stream("GET", f"{vendor.url}/t") as response:
        assert response.headers["Content-Length"] == "8"
        for piece in response.iter_raw():
            arrivals.append((time.monotonic() - started, piece))

    assert b"".join(piece for _, piece in arrivals) == b'{"a": 1}'
    assert len(arrivals) == 4
    assert arrivals[-1][0] >= 0.2  # four pieces, 50 ms before each
    [answer] = vendor.answers
    assert answer.completed and answer.body_bytes_sent == 8


@pytest.mark.parametrize("chunked", [False, True])
def test_large_sends_a_body_of_any_size_without_holding_it(vendor, chunked):
    vendor.route("GET", "/big", Reply.large(3 * 65_536 + 5, fill=b"ab", chunked=chunked))

    response = httpx.get(f"{vendor.url}/big")

    assert len(response.content) == 3 * 65_536 + 5
    assert response.content.startswith(b"abab")
    assert ("Transfer-Encoding" in response.headers) is chunked
    assert ("Content-Length" in response.headers) is not chunked
    assert vendor.answers[0].completed


def test_answers_show_what_a_client_that_went_away_was_sent(vendor):
    vendor.route("GET", "/t", Reply.trickle(Reply.text(b"x" * 100), interval=0.02))

    with httpx.stream("GET", f"{vendor.url}/t") as response:
        next(response.iter_raw())  # one byte, then the client goes away
    time.sleep(0.3)  # the vendor notices on its next writes

    [answer] = vendor.answers
    assert not answer.completed
    assert 1 <= answer.body_bytes_sent < 100
    assert vendor.in_flight == 0


def test_in_flight_counts_requests_being_answered(vendor):
    vendor.route("GET", "/slow", Reply.slow(1.0))
    threads = [threading.Thread(target=httpx.get, args=(f"{vendor.url}/slow",)) for _ in range(3)]
    for thread in threads:
        thread.start()
    waited = time.monotonic()
    while vendor.count() < 3 and time.monotonic() - waited < 5:
        time.sleep(0.01)
    assert vendor.in_flight == 3
    for thread in threads:
        thread.join(5)

    assert vendor.in_flight == 0
    assert vendor.max_in_flight == 3
    vendor.reset()
    assert vendor.max_in_flight == 0


def test_stopped_vendor_refuses_connections_and_can_start_again():
    vendor = FakeVendor()
    with pytest.raises(RuntimeError):
        vendor.url  # noqa: B018 - not started yet
    with vendor:
        vendor.route("GET", "/x", Reply.json(1))
        url = vendor.url
        assert vendor.running
        with httpx.Client() as client:
            assert client.get(f"{url}/x").json() == 1
            vendor.stop()
            with pytest.raises(httpx.ConnectError):
                client.get(f"{url}/x")  # the kept-alive connection was closed too
        vendor.start()
        assert httpx.get(f"{vendor.url}/x").json() == 1
    assert not vendor.running


def test_unused_port_url_refuses():
    with pytest.raises(httpx.ConnectError):
        httpx.get(unused_port_url())


# --- force_breaker ------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("state", ["forced_open", "disabled", "open"])
def test_force_breaker_then_reset(state):
    row = force_breaker("svc", state)

    assert row.state == state
    assert CircuitBreaker.objects.get(name="svc").state == state
    assert get_breaker("svc").state == state  # seen at once by this process
    if state in ("forced_open", "open"):
        with pytest.raises(CircuitOpenError):
            get_breaker("svc").acquire("op")

    assert force_breaker("svc", "closed").state == "closed"
    assert get_breaker("svc").acquire("op") is not None


@pytest.mark.django_db
def test_force_breaker_records_who_and_why():
    until = datetime.now(UTC) + timedelta(hours=1)
    force_breaker("svc", "forced_open", reason="vendor maintenance", until=until)

    transition = BreakerTransition.objects.filter(breaker__name="svc").latest("created_at")
    assert transition.to_state == "forced_open"
    assert transition.reason == "vendor maintenance"
    assert transition.actor == "tests"
    assert CircuitBreaker.objects.get(name="svc").forced_until == until


@pytest.mark.django_db
def test_force_breaker_refuses_unknown_states():
    with pytest.raises(ValueError, match="half_open"):
        force_breaker("svc", "half_open")


@pytest.mark.django_db
def test_reset_local_state_forgets_snapshots_that_outlive_the_database():
    force_breaker("svc", "forced_open")
    assert get_breaker("svc").state == "forced_open"  # read once: now in this process's snapshot
    CircuitBreaker.objects.filter(name="svc").delete()  # what a test's rollback does
    assert get_breaker("svc").state == "forced_open"  # this process's snapshot, still fresh

    reset_local_state()

    assert get_breaker("svc").state == "closed"
