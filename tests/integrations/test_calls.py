"""``CallPolicy``: one resolution of a service's call policies, shared by every vendor client.

``ServiceClient`` and ``StripeService`` resolve it the same way (settings, then class attributes,
then constructor arguments) and run every call under it."""

from __future__ import annotations

import pytest
from django.test import override_settings

from integrations import ServiceClient
from integrations.breaker import PROBE_LEASE_MARGIN
from integrations.calls import CallPolicy, PolicyOverrides
from integrations.conf import DEFAULTS
from integrations.exceptions import IntegrationUnavailable, InvalidResponseError
from integrations.models import CircuitBreaker
from integrations.policies import BreakerPolicy, RetryPolicy, Timeout
from integrations.resilience import AttemptInfo
from integrations.testing import Reply
from integrations.testing.stripe import FakeStripe
from integrations.transport import current_bounds
from integrations.vendors.stripe import StripeService
from tests.integrations.vendors.conftest import API_KEY, stripe_settings

SETTINGS = {
    "TIMEOUT": {"CONNECT": 1.0, "READ": 20.0},
    "RETRY": {"MAX_ATTEMPTS": 2, "DEADLINE": 12.0},
    "BREAKER": {"RESET_TIMEOUT": 60.0},
    "MAX_RESPONSE_BYTES": 4096,
    "SERVICES": {
        "rates": {
            "TIMEOUT": {"READ": 2.0},
            "RETRY": {"MAX_ATTEMPTS": 4},
            "BREAKER": {"FAILURE_THRESHOLD": 2},
        },
        "stripe": {
            "API_KEY": API_KEY,
            "TIMEOUT": {"READ": 2.0},
            "RETRY": {"MAX_ATTEMPTS": 4},
            "BREAKER": {"FAILURE_THRESHOLD": 2},
        },
    },
}


class Rates(ServiceClient):
    service = "rates"
    base_url = "http://127.0.0.1:9"
    timeout = {"WRITE": 3.0}
    retry = {"BASE_DELAY": 0.1}
    breaker = BreakerPolicy(failure_threshold=7)
    max_response_bytes = 2048


class Stripe(StripeService):
    timeout = {"WRITE": 3.0}
    retry = {"BASE_DELAY": 0.1}
    breaker = BreakerPolicy(failure_threshold=7)
    max_response_bytes = 2048


def test_settings_then_the_service_entry(settings):
    settings.INTEGRATIONS = SETTINGS
    policy = CallPolicy.resolve("rates")
    assert policy == CallPolicy(
        service="rates",
        timeout=Timeout(connect=1.0, read=2.0, write=10.0, pool=5.0),
        retry=RetryPolicy(max_attempts=4, base_delay=0.5, max_delay=8.0, deadline=12.0),
        breaker=BreakerPolicy(failure_threshold=2, reset_timeout=60.0),
        max_response_bytes=4096,
    )
    assert policy.probe_lease == 12.0 + PROBE_LEASE_MARGIN
    assert CallPolicy.resolve("other").retry.max_attempts == 2  # the global dicts only
    settings.INTEGRATIONS = {}
    assert CallPolicy.resolve("rates").max_response_bytes == DEFAULTS["MAX_RESPONSE_BYTES"]


def test_each_source_overrides_the_ones_before_it(settings):
    settings.INTEGRATIONS = SETTINGS
    constructor = PolicyOverrides(
        timeout={"connect": 0.5}, retry=RetryPolicy(max_attempts=1), breaker=None
    )
    policy = CallPolicy.resolve("rates", Rates, constructor)
    assert policy.timeout == Timeout(connect=0.5, read=2.0, write=3.0, pool=5.0)
    assert policy.retry == RetryPolicy(max_attempts=1)  # a whole policy replaces what is below
    assert policy.breaker == BreakerPolicy(failure_threshold=7)
    assert policy.max_response_bytes == 2048


@pytest.mark.parametrize("overrides", [{}, {"timeout": {"POOL": 0.25}, "retry": {"DEADLINE": 5}}])
def test_both_clients_resolve_the_same_policy(settings, overrides):
    settings.INTEGRATIONS = SETTINGS
    client = Rates(**overrides).call_policy()
    stripe = Stripe(**overrides).call_policy()
    assert (client.service, stripe.service) == ("rates", "stripe")
    for field in ("timeout", "retry", "breaker", "max_response_bytes", "probe_lease"):
        assert getattr(client, field) == getattr(stripe, field), field
    # What the client's own accessors say is what its calls run under.
    rates = Rates(**overrides)
    assert rates.get_timeout() == client.timeout
    assert rates.get_retry_policy() == client.retry
    assert rates.get_breaker_policy() == client.breaker
    assert rates.get_max_response_bytes() == client.max_response_bytes


@pytest.mark.django_db
def test_the_breaker_has_the_policy_and_a_lease_past_the_deadline(settings):
    settings.INTEGRATIONS = SETTINGS
    for policy in (Rates().call_policy(), Stripe().call_policy()):
        breaker = policy.get_breaker()
        assert breaker.name == policy.service
        assert breaker.policy == BreakerPolicy(failure_threshold=7)
        assert breaker.probe_lease() == policy.retry.deadline + PROBE_LEASE_MARGIN


@pytest.mark.django_db
def test_run_bounds_each_attempt_and_counts_it(settings, backoff):
    settings.INTEGRATIONS = {"RETRY": {"DEADLINE": 7.0}, "MAX_RESPONSE_BYTES": 1234}
    policy = CallPolicy.resolve("rates")
    seen: list[tuple[int, float]] = []

    def attempt(info: AttemptInfo) -> str:
        bounds = current_bounds()
        assert bounds is not None
        seen.append((bounds.max_response_bytes, bounds.time_left()))
        if info.number == 1:
            raise IntegrationUnavailable("rates", "rate", "server error", status_code=503)
        return "done"

    assert policy.run(attempt, operation="rate") == "done"
    assert [limit for limit, _left in seen] == [1234, 1234]
    assert all(0 < left <= 7.0 for _limit, left in seen)
    assert current_bounds() is None  # only in force during an attempt
    row = CircuitBreaker.objects.get(name="rates")
    assert (row.total_failures, row.consecutive_failures) == (1, 0)  # the success reset it


# --- StripeService takes its class attributes too, like every ServiceClient ---------------------


@pytest.fixture
def fake_stripe():
    with (
        FakeStripe(api_key=API_KEY) as fake,
        override_settings(INTEGRATIONS=stripe_settings(fake.base_url)),
    ):
        yield fake


class OneTry(StripeService):
    retry = {"MAX_ATTEMPTS": 1}


class SmallAnswers(StripeService):
    max_response_bytes = 4096


@pytest.mark.django_db
def test_a_stripe_subclass_retry_policy_applies(fake_stripe, backoff):
    fake_stripe.fail("server_error", times=None)
    with pytest.raises(IntegrationUnavailable) as caught:
        OneTry().create_customer("ada@example.com")
    assert caught.value.attempts == 1
    assert fake_stripe.count() == 1
    with pytest.raises(IntegrationUnavailable) as caught:
        OneTry(retry={"MAX_ATTEMPTS": 2}).create_customer("ada@example.com")  # constructor wins
    assert caught.value.attempts == 2


@pytest.mark.django_db
def test_a_stripe_subclass_response_limit_applies(fake_stripe):
    fake_stripe.route("POST", "/v1/customers", Reply.large(64 * 1024, chunked=True))
    with pytest.raises(InvalidResponseError, match=r"over MAX_RESPONSE_BYTES \(4096 bytes\)"):
        SmallAnswers().create_customer("ada@example.com")
