"""The transport under every outbound call (integrations.transport), through ServiceClient over
real HTTP: an answer's size is limited while it streams (after decompression too), and every
attempt ends by the call's deadline even when the vendor trickles its answer, so that a slow
half-open probe never lets a second probe through."""

from __future__ import annotations

import threading
import time
import tracemalloc
import zlib
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from integrations import ServiceClient
from integrations.breaker import PROBE_LEASE_MARGIN, get_breaker
from integrations.conf import DEFAULTS
from integrations.exceptions import CircuitOpenError, IntegrationTimeout, InvalidResponseError
from integrations.models import CircuitBreaker
from integrations.testing import FakeVendor, Reply, force_breaker

pytestmark = pytest.mark.django_db

MiB = 1024 * 1024


class Rates(ServiceClient):
    service = "rates"

    def rate(self, currency: str) -> Decimal:
        data = self.get_json(f"/v1/rates/{currency}", operation="rate", required=["rate"])
        return Decimal(str(data["rate"]))


def configure(settings, vendor: FakeVendor, **service) -> None:
    entry = {
        "BASE_URL": vendor.url,
        "TIMEOUT": {"CONNECT": 1.0, "READ": 5.0, "WRITE": 1.0, "POOL": 1.0},
        "RETRY": {"MAX_ATTEMPTS": 1, "DEADLINE": 10.0},
        "BREAKER": {"FAILURE_THRESHOLD": 50},
    }
    for key, value in service.items():
        entry[key] = {**entry.get(key, {}), **value} if isinstance(value, dict) else value
    settings.INTEGRATIONS = {"SERVICES": {"rates": entry}}


def gzipped(size: int, *, tail: bytes = b"1", wbits: int = 31) -> bytes:
    """``size`` spaces and then ``tail`` (valid JSON: ``1``), compressed without holding the
    decompressed body (``wbits`` 31: gzip, 15: zlib-wrapped deflate, -15: raw deflate)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = b" " * MiB
    parts = [compressor.compress(block) for _ in range(size // MiB)]
    parts.append(compressor.compress(b" " * (size % MiB) + tail))
    parts.append(compressor.flush())
    return b"".join(parts)


def peak_memory(call) -> tuple[int, BaseException | None]:
    """Peak bytes allocated while ``call()`` runs, and what it raised."""
    tracemalloc.start()
    raised = None
    try:
        call()
    except BaseException as exc:
        raised = exc
    finally:
        _current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak, raised


# --- MAX_RESPONSE_BYTES -------------------------------------------------------------------------


def test_the_default_limit_is_10_mib():
    assert DEFAULTS["MAX_RESPONSE_BYTES"] == 10 * MiB


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(vendor, settings):
    configure(settings, vendor, TIMEOUT={"READ": 0.5})
    # Headers at once, then the body's first piece only after a second.
    vendor.route("GET", "/v1/rates/EUR", Reply.large(150 * MiB, interval=1.0))

    started = time.monotonic()
    with pytest.raises(InvalidResponseError) as caught:
        Rates().rate("EUR")

    assert time.monotonic() - started < 0.5  # did not wait for the body
    message = str(caught.value)
    assert "declares 157286400 bytes" in message
    assert f"MAX_RESPONSE_BYTES ({10 * MiB} bytes)" in message
    assert caught.value.attempts == 1  # not retried
    assert isinstance(caught.value.__cause__, Exception)
    # An invalid answer counts against the breaker.
    assert CircuitBreaker.objects.get(name="rates").consecutive_failures == 1


def test_an_undeclared_body_is_cut_at_the_limit_without_holding_it(vendor, settings):
    configure(settings, vendor)
    vendor.route("GET", "/v1/rates/EUR", Reply.large(150 * MiB, chunked=True))

    peak, raised = peak_memory(lambda: Rates().rate("EUR"))

    assert isinstance(raised, InvalidResponseError)
    assert f"is larger, over MAX_RESPONSE_BYTES ({10 * MiB} bytes)" in str(raised)
    assert peak < 40 * MiB  # the limit and some buffers, not 150 MiB (read whole: 300+)
    [answer] = vendor.answers
    assert not answer.completed
    assert answer.body_bytes_sent < 100 * MiB


def test_a_compression_bomb_is_cut_at_the_limit_after_decompression(vendor, settings):
    configure(settings, vendor, MAX_RESPONSE_BYTES=1 * MiB)
    bomb = gzipped(32 * MiB)  # about 32 KiB on the wire, valid JSON once inflated
    assert len(bomb) < MiB
    vendor.route("GET", "/v1/rates/EUR", Reply.text(bomb, headers={"Content-Encoding": "gzip"}))

    peak, raised = peak_memory(lambda: Rates().get_json("/v1/rates/EUR", operation="rate"))

    assert isinstance(raised, InvalidResponseError)
    assert f"over MAX_RESPONSE_BYTES ({MiB} bytes)" in str(raised)
    assert peak < 8 * MiB


@pytest.mark.parametrize(
    ("encoding", "wbits"), [("gzip", 31), ("x-gzip", 31), ("deflate", 15), ("deflate", -15)]
)
def test_compressed_answers_within_the_limit_are_decoded(vendor, settings, encoding, wbits):
    configure(settings, vendor, MAX_RESPONSE_BYTES=MiB)
    body = gzipped(MiB - 100, tail=b'{"rate": "1.25"}', wbits=wbits)
    vendor.route("GET", "/v1/rates/EUR", Reply.text(body, headers={"Content-Encoding": encoding}))

    assert Rates().rate("EUR") == Decimal("1.25")
    assert vendor.requests[0].header("Accept-Encoding") == "gzip, deflate"


def test_an_answer_in_a_coding_we_did_not_ask_for_is_refused(vendor, settings):
    configure(settings, vendor)
    vendor.route(
        "GET", "/v1/rates/EUR", Reply.text(b"\x1b\x00", headers={"Content-Encoding": "br"})
    )

    with pytest.raises(InvalidResponseError, match="content coding we did not ask for"):
        Rates().rate("EUR")


def test_the_limit_is_per_service_and_per_class(vendor, settings):
    configure(settings, vendor, MAX_RESPONSE_BYTES=1000)
    vendor.route("GET", "/v1/exact", Reply.large(1000, fill=b" ", chunked=True))
    vendor.route("GET", "/v1/over", Reply.large(1001, fill=b" ", chunked=True))

    class Roomy(Rates):
        max_response_bytes = 2000

    assert Rates().request("GET", "/v1/exact", operation="x").content == b" " * 1000
    with pytest.raises(InvalidResponseError, match=r"MAX_RESPONSE_BYTES \(1000 bytes\)"):
        Rates().request("GET", "/v1/over", operation="x")
    assert len(Roomy().request("GET", "/v1/over", operation="x").content) == 1001


def test_a_refused_answer_does_not_leave_its_connection_in_the_pool(vendor, settings):
    configure(settings, vendor, MAX_RESPONSE_BYTES=1000)
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": "1"}))
    vendor.route("GET", "/v1/big", Reply.large(MiB, chunked=True))
    client = Rates()

    client.rate("EUR")
    client.rate("EUR")
    with pytest.raises(InvalidResponseError):
        client.request("GET", "/v1/big", operation="big")
    client.rate("EUR")

    ports = [request.client_port for request in vendor.requests]
    assert ports[0] == ports[1] == ports[2]  # keep-alive until the refusal
    assert ports[3] != ports[2]  # the half-read connection was closed, not reused


def test_proxies_from_the_environment_are_still_used(vendor, settings, monkeypatch):
    # The bounded client is built with its own transport; HTTP_PROXY must still apply (here the
    # fake vendor plays the proxy: it gets the request for the unresolvable host).
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", vendor.url)
    configure(settings, vendor, BASE_URL="http://rates.invalid")
    vendor.route("GET", "/v1/rates/EUR", Reply.json({"rate": "2"}))

    assert Rates().rate("EUR") == Decimal("2")
    assert vendor.requests[0].header("Host") == "rates.invalid"


# --- the deadline bounds each attempt as a whole -----------------------------------------------


def trickled_rate(interval: float = 0.2) -> Reply:
    """A healthy answer whose body (16 bytes) arrives one byte every ``interval`` seconds: no
    single read waits long, the whole takes 16 intervals."""
    return Reply.trickle(Reply.json({"rate": "1.08"}), interval=interval)


def test_a_trickled_answer_is_cut_at_the_deadline(vendor, settings):
    configure(settings, vendor, RETRY={"DEADLINE": 1.0})  # READ is 5 s: never tripped
    vendor.route("GET", "/v1/rates/EUR", trickled_rate())

    started = time.monotonic()
    with pytest.raises(IntegrationTimeout):
        Rates().rate("EUR")
    elapsed = time.monotonic() - started

    assert 0.9 <= elapsed < 1.5
    [answer] = vendor.answers
    assert not answer.completed


def test_the_deadline_is_shared_by_the_retries(vendor, settings, backoff):
    configure(settings, vendor, RETRY={"DEADLINE": 1.5, "MAX_ATTEMPTS": 3, "BASE_DELAY": 0})
    vendor.route("GET", "/v1/rates/EUR", Reply.hang(), trickled_rate())

    started = time.monotonic()
    with pytest.raises(IntegrationTimeout):
        Rates().rate("EUR")

    assert time.monotonic() - started < 2.0


@pytest.mark.django_db(transaction=True)  # the threads use their own database connections
def test_a_slow_probe_never_lets_a_second_probe_through(vendor, settings):
    deadline = 1.0
    configure(
        settings,
        vendor,
        RETRY={"DEADLINE": deadline},
        BREAKER={"FAILURE_THRESHOLD": 5, "RESET_TIMEOUT": 30.0, "HALF_OPEN_MAX_CALLS": 1},
    )
    vendor.route("GET", "/v1/rates/EUR", trickled_rate())  # 3.2 s: outlives the deadline
    force_breaker("rates", "open")
    CircuitBreaker.objects.filter(name="rates").update(
        opened_at=timezone.now() - timedelta(seconds=31)
    )
    outcome: dict[str, object] = {}

    def probe() -> None:
        started = time.monotonic()
        try:
            Rates().rate("EUR")
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            outcome["elapsed"] = time.monotonic() - started
            connection.close()

    first = threading.Thread(target=probe)
    first.start()
    waited = time.monotonic()
    while vendor.in_flight == 0 and time.monotonic() - waited < 5:
        time.sleep(0.01)
    assert vendor.in_flight == 1, "the first probe never reached the vendor"
    lease_until = CircuitBreaker.objects.get(name="rates").probe_lease_until
    assert lease_until >= timezone.now() + timedelta(seconds=deadline + PROBE_LEASE_MARGIN - 0.5)

    # A second caller keeps trying while the first probe is in flight, and a while after.
    second: list[str] = []
    until = time.monotonic() + 3.5
    try:
        while time.monotonic() < until:
            try:
                Rates().rate("EUR")
            except CircuitOpenError:
                second.append("refused")
            except BaseException as exc:
                second.append(type(exc).__name__)
            else:
                second.append("sent")
            time.sleep(0.05)
    finally:
        first.join(10)

    assert vendor.max_in_flight == 1  # never two probes at once
    assert second and set(second) == {"refused"}
    assert vendor.count() == 1
    assert isinstance(outcome.get("error"), IntegrationTimeout)
    assert outcome["elapsed"] < deadline + 0.5
    assert get_breaker("rates").snapshot(fresh=True).state == "open"  # the probe failed
