"""Client-side adaptive throttling (``integrations.throttle``): the probability at exact points
(an injected clock and random draw), local rejections that never reach the FakeVendor nor the
breaker, settings and checks, and the operator's status view; the sync and async clients alike.
The metric: ``tests/test_metrics.py``."""

from __future__ import annotations

import logging
import math
import threading
from io import StringIO
from itertools import repeat

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from integrations.checks import check_integrations_settings
from integrations.exceptions import (
    ClientRequestError,
    IntegrationTimeout,
    IntegrationUnavailable,
    RateLimitedError,
    Throttled,
)
from integrations.fleet_status import fleet_status
from integrations.models import CircuitBreaker
from integrations.resilience import use_backoff_clock
from integrations.signals import call_throttled
from integrations.testing import ManualBackoff, Reply
from integrations.throttle import (
    AdaptiveThrottle,
    ClientThrottle,
    is_overload,
    throttle_for,
    use_throttle_random,
)
from tests.integrations.rates import configure

PATH = "/v1/rates/EUR"


def unavailable() -> IntegrationUnavailable:
    return IntegrationUnavailable("rates", "rate", "answered 503", status_code=503)


# -- the probability at exact points ------------------------------------------------------------


def test_the_probability_is_zero_while_accepts_keep_up():
    throttle = ClientThrottle("rates", AdaptiveThrottle(k=2.0, window=10.0))
    for _ in range(10):
        throttle.record(0.5, None)
    assert throttle.probability(0.5) == 0.0
    # Half the attempts refused: requests (20) = K * accepts (10 * 2), still 0.
    for _ in range(10):
        throttle.record(0.7, unavailable())
    assert throttle.counts(0.7) == (20, 10)
    assert throttle.probability(0.7) == 0.0
    assert throttle.decide(0.7, 0.0) is None  # p = 0: even the lowest draw goes out


def test_the_probability_rises_as_the_vendor_answers_503():
    throttle = ClientThrottle("rates", AdaptiveThrottle(k=2.0, window=10.0))
    for _ in range(10):
        throttle.record(0.5, None)
    for _ in range(20):
        throttle.record(5.2, unavailable())
    # requests 30, accepts 10: (30 - 20) / 31
    assert throttle.probability(5.2) == pytest.approx(10 / 31)
    assert throttle.decide(5.2, 10 / 31 + 0.001) is None  # a draw at or above p goes out
    assert throttle.counts(5.2) == (30, 10)  # not counted yet: its outcome will be
    assert throttle.decide(5.2, 0.3) == pytest.approx(10 / 31)  # rejected, with p
    assert throttle.counts(5.2) == (31, 10)  # a rejection counts as a request
    assert throttle.probability(5.2) == pytest.approx(11 / 32)
    assert throttle.rejected == 1


def test_the_probability_falls_back_as_the_window_slides():
    throttle = ClientThrottle("rates", AdaptiveThrottle(k=2.0, window=10.0))
    for _ in range(10):
        throttle.record(0.5, None)
    for _ in range(20):
        throttle.record(5.2, unavailable())
    assert throttle.probability(9.9) == pytest.approx(10 / 31)
    # At 10.4 the bucket of second 0 (the accepts) has left the window: 20 refusals remain.
    assert throttle.counts(10.4) == (20, 0)
    assert throttle.probability(10.4) == pytest.approx(20 / 21)
    # At 15.0 the refusals of second 5 have left too.
    assert throttle.counts(15.0) == (0, 0)
    assert throttle.probability(15.0) == 0.0


def test_k_sets_how_many_refusals_are_tolerated():
    lenient = ClientThrottle("rates", AdaptiveThrottle(k=4.0, window=60.0))
    for _ in range(10):
        lenient.record(1.0, None)
    for _ in range(30):
        lenient.record(1.0, unavailable())
    assert lenient.probability(1.0) == 0.0  # 40 requests = 4 * 10 accepts
    lenient.record(1.0, unavailable())
    assert lenient.probability(1.0) == pytest.approx(1 / 42)


def test_the_counts_stay_bounded_whatever_the_traffic():
    throttle = ClientThrottle("rates", AdaptiveThrottle(k=2.0, window=30.0))
    now = 0.0
    for _ in range(10_000):
        now += 0.05
        throttle.record(now, None)
    assert len(throttle._buckets) <= 30
    assert throttle.counts(now)[0] == pytest.approx(30 / 0.05, abs=21)


def test_a_window_shorter_than_a_second():
    throttle = ClientThrottle("rates", AdaptiveThrottle(k=2.0, window=0.5))
    for _ in range(3):
        throttle.record(0.1, unavailable())
    assert throttle.probability(0.4) == pytest.approx(3 / 4)
    assert throttle.probability(0.6) == 0.0


def test_threads_share_one_throttle():
    throttle = ClientThrottle("rates", AdaptiveThrottle(k=2.0, window=60.0))

    def work():
        for _ in range(2_000):
            throttle.record(5.0, None)
            throttle.record(5.0, unavailable())

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert throttle.counts(5.0) == (32_000, 16_000)


def test_the_overload_signal_is_the_hierarchys_retryable():
    assert is_overload(unavailable())
    assert is_overload(IntegrationTimeout("rates", "rate"))
    assert is_overload(RateLimitedError("rates", "rate"))
    assert is_overload(ClientRequestError("rates", "rate", status_code=408))
    assert not is_overload(ClientRequestError("rates", "rate", status_code=404))
    assert not is_overload(ValueError("our own bug"))
    assert not is_overload(None)


# -- through the clients: nothing reaches the vendor, nor the breaker --------------------------


@pytest.fixture
def clock():
    with use_backoff_clock(ManualBackoff()) as manual:
        yield manual


@pytest.fixture
def half():
    """Every draw is 0.5: an attempt is rejected exactly when its probability is above 0.5."""
    with use_throttle_random(repeat(0.5).__next__) as draw:
        yield draw


@pytest.mark.django_db
def test_local_rejections_never_reach_the_vendor_nor_the_breaker(
    make_rates, vendor, settings, clock, half
):
    configure(
        settings,
        vendor.url,
        RETRY={"MAX_ATTEMPTS": 1},
        BREAKER={"FAILURE_THRESHOLD": 3},
        ADAPTIVE_THROTTLE={"K": 2, "WINDOW": 60},
    )
    vendor.route("GET", PATH, Reply.server_error(503))
    client = make_rates()
    # 1st: p = 0 -> sent, 503. 2nd: p = 1/2, the draw 0.5 is not below it -> sent, 503.
    # 3rd on: p = 2/3, 3/4, ... -> rejected here.
    outcomes = []
    for _ in range(6):
        with pytest.raises(IntegrationUnavailable) as caught:
            client.rate("EUR")
        outcomes.append(type(caught.value))
    assert outcomes == [IntegrationUnavailable] * 2 + [Throttled] * 4
    assert vendor.count() == 2
    row = CircuitBreaker.objects.get(name="rates")
    assert (row.state, row.consecutive_failures, row.total_failures) == ("closed", 2, 2)
    error = caught.value
    assert isinstance(error, Throttled)
    assert not error.retryable and not error.breaker_failure
    assert error.probability == pytest.approx(5 / 6)
    assert "rates.rate" in str(error) and "probability 0.833" in str(error)
    assert error.attempts == 0

    # The window slides past the refusals: the next call goes out, and the vendor is back.
    vendor.route("GET", PATH, Reply.json({"rate": "1.1"}))
    clock.advance(61)
    assert str(client.rate("EUR")) == "1.1"
    assert vendor.count() == 3


@pytest.mark.django_db
def test_each_retry_meets_the_throttle(make_rates, vendor, settings, clock, half):
    configure(
        settings,
        vendor.url,
        RETRY={"MAX_ATTEMPTS": 3, "BASE_DELAY": 0.01, "MAX_DELAY": 0.01},
        ADAPTIVE_THROTTLE={"K": 2, "WINDOW": 60},
    )
    vendor.route("GET", PATH, Reply.server_error(503))
    with pytest.raises(Throttled) as caught:
        make_rates().rate("EUR")
    # Attempt 1 (p 0) and 2 (p 1/2) sent; attempt 3 (p 2/3) rejected, not retried.
    assert vendor.count() == 2
    assert caught.value.attempts == 2
    assert isinstance(caught.value.__cause__, IntegrationUnavailable)
    assert caught.value.__cause__.status_code == 503


@pytest.mark.django_db
def test_a_rejection_is_logged_and_sent(make_rates, vendor, settings, clock, caplog):
    configure(
        settings, vendor.url, RETRY={"MAX_ATTEMPTS": 1}, ADAPTIVE_THROTTLE={"K": 2, "WINDOW": 60}
    )
    vendor.route("GET", PATH, Reply.server_error(503))
    client = make_rates()
    sent = []

    def receiver(sender, **kwargs):
        sent.append((sender, kwargs["operation"], kwargs["probability"]))

    call_throttled.connect(receiver)
    try:
        with use_throttle_random(repeat(0.99).__next__):
            for _ in range(3):
                with pytest.raises(IntegrationUnavailable):
                    client.rate("EUR")
        caplog.clear()
        with (
            use_throttle_random(repeat(0.0).__next__),
            caplog.at_level(logging.DEBUG, logger="integrations"),
            pytest.raises(Throttled),
        ):
            client.rate("EUR")
    finally:
        call_throttled.disconnect(receiver)
    assert sent == [("rates", "rate", pytest.approx(3 / 4))]
    lines = [r for r in caplog.records if r.name == "integrations.throttle"]
    assert len(lines) == 1 and lines[0].levelno == logging.DEBUG
    assert "rejected locally" in lines[0].getMessage()
    finished = [r for r in caplog.records if r.name == "integrations.calls"]
    assert [r.levelno for r in finished] == [logging.INFO]  # not a warning per shed call
    assert finished[0].status == "throttled"


@pytest.mark.django_db
def test_successes_and_client_errors_keep_the_throttle_at_zero(make_rates, vendor, settings, clock):
    configure(
        settings, vendor.url, RETRY={"MAX_ATTEMPTS": 1}, ADAPTIVE_THROTTLE={"K": 2, "WINDOW": 60}
    )
    vendor.route("GET", PATH, Reply.json({"error": "nope"}, status=404))
    client = make_rates()
    with use_throttle_random(repeat(0.0).__next__):  # any p above 0 would reject
        for _ in range(5):
            with pytest.raises(ClientRequestError):
                client.rate("EUR")
    assert vendor.count() == 5
    throttle = throttle_for("rates")
    assert throttle is not None
    assert throttle.counts(clock.now) == (5, 5)


@pytest.mark.django_db
def test_off_by_default_and_per_service(vendor, settings):
    configure(settings, vendor.url)
    assert throttle_for("rates") is None
    settings.INTEGRATIONS = {
        "ADAPTIVE_THROTTLE": {"K": 3},
        "SERVICES": {"rates": {"BASE_URL": vendor.url}, "quiet": {"ADAPTIVE_THROTTLE": None}},
    }
    rates = throttle_for("rates")
    assert rates is not None and rates.policy == AdaptiveThrottle(k=3.0, window=120.0)
    assert throttle_for("quiet") is None
    settings.INTEGRATIONS = {"SERVICES": {"rates": {"ADAPTIVE_THROTTLE": {"WINDOW": 30}}}}
    assert throttle_for("rates").policy == AdaptiveThrottle(k=2.0, window=30.0)


@pytest.mark.django_db
def test_the_status_view_shows_this_processs_probability(vendor, settings, clock):
    configure(settings, vendor.url, ADAPTIVE_THROTTLE={"K": 2, "WINDOW": 60})
    throttle = throttle_for("rates")
    assert throttle is not None
    for _ in range(3):
        throttle.record(clock.now, unavailable())
    throttle.decide(clock.now, 0.0)
    status = fleet_status("rates")
    assert status.active
    assert status.adaptive_throttle == "K=2 over 60s"
    assert status.throttle_probability == pytest.approx(0.8)  # (4 - 0) / 5
    assert status.throttle_rejected == 1
    assert "throttle p=0.80 here (1 rejected)" in status.summary()
    configure(settings, vendor.url)
    assert not fleet_status("rates").active


# -- settings: checks and call time ---------------------------------------------------------------

BAD = [
    {"K": 1},
    {"K": 0.5},
    {"K": 10.5},
    {"K": -2},
    {"WINDOW": 0},
    {"WINDOW": -1},
    {"WINDOW": 3601},
    {"K": 2, "BURST": 3},
    {"k": 2},
    {"K": "2"},
    {"K": True},
    {"WINDOW": False},
    {"K": None},
    {"K": math.nan},
    {"K": math.inf},
    {"WINDOW": math.nan},
    {"WINDOW": math.inf},
    2.0,
    "K=2",
    True,
    [2, 120],
]


@pytest.mark.parametrize("value", BAD, ids=repr)
def test_bad_settings_are_refused_naming_the_key(value):
    with pytest.raises(ImproperlyConfigured, match=r'"ADAPTIVE_THROTTLE"'):
        AdaptiveThrottle.parse(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ({}, AdaptiveThrottle(2.0, 120.0)),
        ({"K": 2.0, "WINDOW": 120}, AdaptiveThrottle(2.0, 120.0)),
        ({"K": 10, "WINDOW": 3600}, AdaptiveThrottle(10.0, 3600.0)),
        ({"K": 1.01, "WINDOW": 0.5}, AdaptiveThrottle(1.01, 0.5)),
    ],
)
def test_good_settings_parse(value, expected):
    assert AdaptiveThrottle.parse(value) == expected


def ids(settings, integrations):
    settings.INTEGRATIONS = integrations
    return [message.id for message in check_integrations_settings()]


@pytest.mark.parametrize("value", BAD, ids=repr)
def test_checks_refuse_bad_settings_globally_and_per_service(settings, value):
    assert ids(settings, {"ADAPTIVE_THROTTLE": value}) == ["integrations.E013"]
    assert ids(settings, {"SERVICES": {"a": {"ADAPTIVE_THROTTLE": value}}}) == ["integrations.E013"]


def test_checks_accept_good_settings_without_redis(settings):
    assert ids(settings, {"ADAPTIVE_THROTTLE": {"K": 2, "WINDOW": 120}}) == []
    assert ids(settings, {"SERVICES": {"a": {"ADAPTIVE_THROTTLE": None}}}) == []
    settings.INTEGRATIONS = {"SERVICES": {"a": {"ADAPTIVE_THROTTLE": {"K": 1}}}}
    (error,) = check_integrations_settings()
    assert error.msg.startswith("INTEGRATIONS[\"SERVICES\"]['a'][\"ADAPTIVE_THROTTLE\"]['K']")
    assert '"K"' in error.hint


@pytest.mark.django_db
def test_a_bad_setting_is_refused_at_call_time(make_rates, vendor, settings):
    configure(settings, vendor.url, ADAPTIVE_THROTTLE={"K": 2, "WINDOWS": 60})
    where = r"\['rates'\]\[\"ADAPTIVE_THROTTLE\"\].*WINDOWS"
    with pytest.raises(ImproperlyConfigured, match=where):
        make_rates().rate("EUR")
    assert vendor.count() == 0


@pytest.mark.django_db
def test_the_command_lists_this_processs_probability(vendor, settings, clock):
    configure(settings, vendor.url, ADAPTIVE_THROTTLE={"K": 2, "WINDOW": 60})
    throttle = throttle_for("rates")
    assert throttle is not None
    throttle.record(clock.now, unavailable())
    out = StringIO()
    call_command("circuit_breakers", "list", stdout=out, stderr=StringIO())
    assert "fleet: throttle p=0.50 here (0 rejected)" in out.getvalue()
