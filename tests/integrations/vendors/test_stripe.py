"""StripeService over real HTTP: the stripe SDK pointed at a FakeStripe on 127.0.0.1.

Nothing is patched: the SDK sends real requests, the fake answers as Stripe does, the shared
runner retries and the database breaker counts.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import time
import uuid
import warnings
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import stripe
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from integrations.breaker import get_breaker
from integrations.exceptions import (
    MAX_RETRY_AFTER,
    CircuitOpenError,
    ClientRequestError,
    IntegrationTimeout,
    IntegrationUnavailable,
    InvalidResponseError,
    RateLimitedError,
)
from integrations.models import CircuitBreaker
from integrations.testing import Reply, unused_port_url
from integrations.testing.stripe import FakeStripe, form_params, query_params
from integrations.vendors.stripe import (
    Customer,
    EventPage,
    PaymentIntent,
    Refund,
    StripeService,
    list_undelivered_events,
)
from tests.forking import in_a_child
from tether.vendor_events import ListingFailed, event_lister

from .conftest import API_KEY, stripe_settings

pytestmark = pytest.mark.django_db


# --- happy paths ------------------------------------------------------------------------------


def test_create_customer_returns_a_customer(service, fake_stripe):
    customer = service.create_customer("ada@example.com", name="Ada Lovelace")

    assert isinstance(customer, Customer)
    assert customer.id.startswith("cus_")
    assert (customer.email, customer.name) == ("ada@example.com", "Ada Lovelace")
    assert fake_stripe.customers[customer.id]["email"] == "ada@example.com"
    [request] = fake_stripe.requests
    assert (request.method, request.path) == ("POST", "/v1/customers")
    assert form_params(request) == {"email": "ada@example.com", "name": "Ada Lovelace"}
    assert request.header("Content-Type") == "application/x-www-form-urlencoded"
    assert request.header("Authorization") == f"Bearer {API_KEY}"
    uuid.UUID(request.header("Idempotency-Key"))  # one made for this call


def test_create_customer_without_name_sends_no_name(service, fake_stripe):
    customer = service.create_customer("bob@example.com")

    assert customer.name is None
    assert form_params(fake_stripe.requests[0]) == {"email": "bob@example.com"}


def test_retrieve_customer(service, fake_stripe):
    seeded = fake_stripe.add_customer(email="grace@example.com", name="Grace")

    customer = service.retrieve_customer(seeded["id"])

    assert customer == Customer(id=seeded["id"], email="grace@example.com", name="Grace")
    [request] = fake_stripe.requests
    assert (request.method, request.path) == ("GET", f"/v1/customers/{seeded['id']}")
    assert request.header("Idempotency-Key") is None  # a read needs none


def test_create_payment_intent(service, fake_stripe):
    customer = service.create_customer("ada@example.com")

    intent = service.create_payment_intent(2000, "eur", customer=customer.id)

    assert isinstance(intent, PaymentIntent)
    assert intent.id.startswith("pi_")
    assert (intent.amount, intent.currency, intent.status, intent.customer) == (
        2000,
        "eur",
        "requires_payment_method",
        customer.id,
    )
    assert form_params(fake_stripe.requests[-1]) == {
        "amount": "2000",
        "currency": "eur",
        "customer": customer.id,
    }


def test_create_payment_intent_without_customer(service, fake_stripe):
    intent = service.create_payment_intent(1099, "usd")

    assert intent.customer is None
    assert "customer" not in form_params(fake_stripe.requests[-1])


def test_refund_in_full_and_in_part(service, fake_stripe):
    intent = service.create_payment_intent(2000, "usd")
    fake_stripe.confirm_payment_intent(intent.id)

    partial = service.refund(intent.id, amount=500)
    rest = service.refund(intent.id)

    assert isinstance(partial, Refund)
    assert partial.id.startswith("re_")
    assert (partial.amount, partial.status, partial.payment_intent) == (500, "succeeded", intent.id)
    assert (rest.amount, rest.payment_intent) == (1500, intent.id)
    assert form_params(fake_stripe.requests[-2]) == {"payment_intent": intent.id, "amount": "500"}
    assert form_params(fake_stripe.requests[-1]) == {"payment_intent": intent.id}


def test_results_are_frozen_dataclasses(service):
    customer = service.create_customer("ada@example.com")

    with pytest.raises(dataclasses.FrozenInstanceError):
        customer.email = "other@example.com"  # type: ignore[misc]


def test_stripe_validation_errors_come_back_as_client_errors(service, fake_stripe):
    intent = service.create_payment_intent(1000, "usd")  # not paid yet

    with pytest.raises(ClientRequestError) as unpaid:
        service.refund(intent.id)
    fake_stripe.confirm_payment_intent(intent.id)
    with pytest.raises(ClientRequestError) as too_much:
        service.refund(intent.id, amount=5000)
    with pytest.raises(ClientRequestError) as too_small:
        service.create_payment_intent(0, "usd")
    with pytest.raises(ClientRequestError) as unknown_customer:
        service.create_payment_intent(100, "usd", customer="cus_nope")

    assert unpaid.value.status_code == 400
    assert "amount_too_large" in str(too_much.value)
    assert "amount_too_small" in str(too_small.value)
    assert "resource_missing" in str(unknown_customer.value)
    assert fake_stripe.count() == 5  # one each: never retried


def test_missing_and_deleted_customers_are_404_client_errors(service, fake_stripe):
    seeded = fake_stripe.add_customer(email="gone@example.com")
    fake_stripe.delete_customer(seeded["id"])

    with pytest.raises(ClientRequestError) as missing:
        service.retrieve_customer("cus_doesnotexist")
    with pytest.raises(ClientRequestError) as deleted:
        service.retrieve_customer(seeded["id"])

    assert missing.value.status_code == 404
    assert isinstance(missing.value.__cause__, stripe.InvalidRequestError)
    assert deleted.value.status_code == 404
    assert "deleted" in str(deleted.value)


def test_no_deprecation_warning_from_the_http_client(service):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        service.create_customer("ada@example.com")

    assert [w for w in caught if issubclass(w.category, DeprecationWarning)] == []


# --- every Stripe error the four endpoints can produce, over HTTP -----------------------------

OVER_HTTP = [
    # (failure scripted on the fake, SDK class, our class, status_code, requests seen)
    ("card_declined", stripe.CardError, ClientRequestError, 402, 1),
    ("invalid_request", stripe.InvalidRequestError, ClientRequestError, 400, 1),
    ("resource_missing", stripe.InvalidRequestError, ClientRequestError, 404, 1),
    ("authentication", stripe.AuthenticationError, ClientRequestError, 401, 1),
    ("permission", stripe.PermissionError, ClientRequestError, 403, 1),
    ("idempotency", stripe.IdempotencyError, ClientRequestError, 400, 1),
    ("conflict", stripe.APIError, ClientRequestError, 409, 1),
    ("rate_limited", stripe.RateLimitError, RateLimitedError, None, 3),
    ("server_error", stripe.APIError, IntegrationUnavailable, 500, 3),
    ("bad_gateway", stripe.APIError, IntegrationUnavailable, 502, 3),
    ("garbage", stripe.APIError, InvalidResponseError, None, 1),
    ("drop", stripe.APIConnectionError, IntegrationUnavailable, None, 3),
    ("hang", stripe.APIConnectionError, IntegrationTimeout, None, 3),
]


@pytest.mark.parametrize(
    ("failure", "sdk_error", "our_error", "status_code", "requests_seen"),
    OVER_HTTP,
    ids=[case[0] for case in OVER_HTTP],
)
def test_stripe_errors_are_mapped(
    service,
    configure,
    fake_stripe,
    backoff,
    failure,
    sdk_error,
    our_error,
    status_code,
    requests_seen,
):
    configure(TIMEOUT={"READ": 0.3})
    fake_stripe.fail(failure, times=None, retry_after=0.01)

    with pytest.raises(our_error) as caught:
        service.create_customer("ada@example.com")

    error = caught.value
    assert type(error) is our_error
    assert type(error.__cause__) is sdk_error
    assert (error.service, error.operation) == ("stripe", "create_customer")
    assert error.attempts == requests_seen
    assert fake_stripe.count("POST", "/v1/customers") == requests_seen
    assert error.retryable is (requests_seen > 1)
    if status_code is not None:
        assert error.status_code == status_code
    if our_error is ClientRequestError:
        assert error.breaker_failure is False
    if our_error is RateLimitedError:
        assert error.retry_after == pytest.approx(0.01)
        assert backoff.sleeps == [pytest.approx(0.01)] * 2


def test_stripe_should_retry_false_is_not_retried(service, fake_stripe, backoff):
    # Stripe saved this 500 for the idempotency key: a retry would only replay it.
    fake_stripe.fail("server_error", times=None, should_retry=False)

    with pytest.raises(IntegrationUnavailable) as caught:
        service.create_customer("ada@example.com")

    assert caught.value.retryable is False
    assert caught.value.breaker_failure is True
    assert fake_stripe.count() == 1


def test_stripe_should_retry_true_retries_a_conflict(service, fake_stripe, backoff):
    fake_stripe.fail("conflict", times=1, should_retry=True)

    customer = service.create_customer("ada@example.com")

    assert customer.id in fake_stripe.customers
    assert fake_stripe.count() == 2
    assert CircuitBreaker.objects.get(name="stripe").consecutive_failures == 0


def test_refused_connection_is_unavailable_and_retried(configure, backoff):
    configure(BASE_URL=unused_port_url())
    service = StripeService()

    with pytest.raises(IntegrationUnavailable) as caught:
        service.create_customer("ada@example.com")

    assert type(caught.value) is IntegrationUnavailable
    assert isinstance(caught.value.__cause__, stripe.APIConnectionError)
    assert isinstance(caught.value.__cause__.__cause__, httpx.ConnectError)
    assert caught.value.attempts == 3


def test_the_sdk_does_not_retry_on_its_own(service, configure, fake_stripe):
    configure(RETRY={"MAX_ATTEMPTS": 1})
    fake_stripe.fail("server_error", times=None)
    fake_stripe.fail("drop", times=None, path="/v1/payment_intents")

    with pytest.raises(IntegrationUnavailable):
        service.create_customer("ada@example.com")
    with pytest.raises(IntegrationUnavailable):
        service.create_payment_intent(100, "usd")

    # stripe-python would have retried both (5xx and connection errors) on its own.
    assert fake_stripe.count("POST", "/v1/customers") == 1
    assert fake_stripe.count("POST", "/v1/payment_intents") == 1


def test_invalid_answers_are_not_retried_and_count_against_the_breaker(service, fake_stripe):
    fake_stripe.route("POST", "/v1/customers", Reply.json({"id": "cus_1", "object": "customer"}))
    fake_stripe.route(
        "POST",
        "/v1/payment_intents",
        Reply.json(
            {"id": "pi_1", "amount": "1099", "currency": "usd", "status": "x", "customer": None}
        ),
    )

    with pytest.raises(InvalidResponseError) as missing:
        service.create_customer("ada@example.com")
    with pytest.raises(InvalidResponseError) as wrong_type:
        service.create_payment_intent(1099, "usd")

    assert "'email' missing" in str(missing.value)
    assert "'amount'" in str(wrong_type.value)
    assert fake_stripe.count() == 2
    assert CircuitBreaker.objects.get(name="stripe").consecutive_failures == 2


# --- retries: idempotency keys and Retry-After -------------------------------------------------


def test_idempotency_key_is_constant_across_retries(service, fake_stripe, backoff):
    fake_stripe.fail("server_error", times=2)

    customer = service.create_customer("ada@example.com")

    keys = fake_stripe.idempotency_keys("POST", "/v1/customers")
    assert len(keys) == 3
    assert len(set(keys)) == 1
    uuid.UUID(keys[0])
    assert list(fake_stripe.customers) == [customer.id]
    assert len(backoff.sleeps) == 2


def test_each_call_gets_its_own_key(service, fake_stripe):
    service.create_customer("ada@example.com")
    service.create_customer("ada@example.com")

    first, second = fake_stripe.idempotency_keys()
    assert first != second
    assert len(fake_stripe.customers) == 2


def test_a_timed_out_create_is_retried_with_the_same_key_and_not_duplicated(
    service, configure, fake_stripe
):
    # Stripe creates the object, but its answer comes after our read timeout.
    configure(TIMEOUT={"READ": 0.3})
    fake_stripe.fail("slow", delay=1.0, path="/v1/payment_intents")

    intent = service.create_payment_intent(1500, "usd")

    assert list(fake_stripe.payment_intents) == [intent.id]
    first, second = fake_stripe.idempotency_keys("POST", "/v1/payment_intents")
    assert first == second


def test_a_callers_key_is_sent_as_is_and_deduplicates_later_calls(configure, fake_stripe):
    # A Celery task retried later builds a new service and passes the same business key.
    key = "order-42-charge"
    first = StripeService().create_payment_intent(4200, "usd", idempotency_key=key)
    again = StripeService().create_payment_intent(4200, "usd", idempotency_key=key)

    assert again == first
    assert fake_stripe.idempotency_keys() == [key, key]
    assert list(fake_stripe.payment_intents) == [first.id]


def test_a_callers_key_reused_with_other_parameters_is_a_client_error(service, fake_stripe):
    service.create_customer("ada@example.com", idempotency_key="signup-7")

    with pytest.raises(ClientRequestError) as caught:
        service.create_customer("eve@example.com", idempotency_key="signup-7")

    assert isinstance(caught.value.__cause__, stripe.IdempotencyError)
    assert caught.value.status_code == 400
    assert fake_stripe.count() == 2


def test_refund_keys(service, fake_stripe, backoff):
    intent = fake_stripe.add_payment_intent(amount=800)
    fake_stripe.fail("server_error", times=1, path="/v1/refunds")

    service.refund(intent["id"], idempotency_key="refund-order-9")

    assert fake_stripe.idempotency_keys("POST", "/v1/refunds") == ["refund-order-9"] * 2
    assert len(fake_stripe.refunds) == 1


@pytest.mark.parametrize("key", ["", "k" * 256])
def test_unusable_idempotency_keys_are_refused_before_any_request(service, fake_stripe, key):
    with pytest.raises(ValueError, match="idempotency_key"):
        service.create_customer("ada@example.com", idempotency_key=key)

    assert fake_stripe.count() == 0


def test_retry_after_is_honoured(service, fake_stripe, backoff):
    fake_stripe.fail("rate_limited", times=2, retry_after=2)

    customer = service.create_customer("ada@example.com")

    assert customer.id in fake_stripe.customers
    assert backoff.sleeps == [2.0, 2.0]
    assert fake_stripe.count() == 3


def test_retry_after_as_an_http_date(service, configure, fake_stripe):
    configure(RETRY={"MAX_ATTEMPTS": 1})
    when = datetime.now(UTC) + timedelta(seconds=30)
    fake_stripe.fail("rate_limited", retry_after=email.utils.format_datetime(when, usegmt=True))

    with pytest.raises(RateLimitedError) as caught:
        service.create_customer("ada@example.com")

    assert 27 <= caught.value.retry_after <= 30


def test_retry_after_beyond_the_deadline_fails_at_once(service, configure, fake_stripe, backoff):
    configure(RETRY={"DEADLINE": 5.0})
    fake_stripe.fail("rate_limited", times=None, retry_after=60)

    with pytest.raises(RateLimitedError) as caught:
        service.create_customer("ada@example.com")

    assert caught.value.retry_after == 60
    assert fake_stripe.count() == 1
    assert backoff.sleeps == []


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("1e308", MAX_RETRY_AFTER),
        ("inf", MAX_RETRY_AFTER),
        ("nan", None),
        ("-5", 0.0),
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER),
    ],
)
def test_a_hostile_retry_after_from_stripe_is_capped(
    service, configure, fake_stripe, header, expected
):
    configure(RETRY={"MAX_ATTEMPTS": 1})
    fake_stripe.fail("rate_limited", retry_after=header)

    with pytest.raises(RateLimitedError) as caught:
        service.create_customer("ada@example.com")

    assert caught.value.retry_after == expected


# --- timeouts ---------------------------------------------------------------------------------


def test_a_hanging_stripe_is_a_timeout_in_bounded_time(service, configure, fake_stripe):
    configure(TIMEOUT={"READ": 0.3}, RETRY={"MAX_ATTEMPTS": 2})
    fake_stripe.fail("hang", times=None)

    started = time.monotonic()
    with pytest.raises(IntegrationTimeout) as caught:
        service.create_customer("ada@example.com")
    elapsed = time.monotonic() - started

    assert elapsed < 2.0
    assert caught.value.attempts == 2
    assert fake_stripe.count() == 2
    assert isinstance(caught.value.__cause__.__cause__, httpx.ReadTimeout)


def test_the_deadline_caps_each_attempts_timeout(service, configure, fake_stripe):
    # A 10 s read timeout, but only 0.5 s left in the call: the attempt gives up at the deadline.
    configure(TIMEOUT={"READ": 10.0}, RETRY={"DEADLINE": 0.5})
    fake_stripe.fail("hang", times=None)

    started = time.monotonic()
    with pytest.raises(IntegrationTimeout):
        service.create_customer("ada@example.com")

    assert time.monotonic() - started < 2.0


def test_a_trickling_stripe_is_cut_at_the_deadline(service, configure, fake_stripe):
    # Stripe's answer starts at once, then one byte every 20 ms: no read ever waits 5 s, the
    # whole body would take about 16 s. The call's 1 s deadline cuts it.
    configure(TIMEOUT={"READ": 5.0}, RETRY={"DEADLINE": 1.0, "MAX_ATTEMPTS": 1})
    fake_stripe.fail("trickle", delay=0.02)

    started = time.monotonic()
    with pytest.raises(IntegrationTimeout):
        service.create_customer("ada@example.com")

    assert time.monotonic() - started < 1.5
    [answer] = fake_stripe.answers
    assert not answer.completed


def test_a_stripe_answer_over_the_size_limit_is_refused(service, configure, fake_stripe):
    configure(MAX_RESPONSE_BYTES=65_536)
    fake_stripe.route("POST", "/v1/customers", Reply.large(1024 * 1024, chunked=True))

    with pytest.raises(InvalidResponseError) as caught:
        service.create_customer("ada@example.com")

    assert "over MAX_RESPONSE_BYTES (65536 bytes)" in str(caught.value)
    assert caught.value.attempts == 1  # not retried
    assert fake_stripe.count() == 1
    assert CircuitBreaker.objects.get(name="stripe").consecutive_failures == 1


# --- the circuit breaker ----------------------------------------------------------------------


def test_breaker_opens_after_consecutive_failures_then_fails_fast(service, configure, fake_stripe):
    configure(RETRY={"MAX_ATTEMPTS": 1}, BREAKER={"FAILURE_THRESHOLD": 3})
    fake_stripe.fail("server_error", times=None)

    for _ in range(3):
        with pytest.raises(IntegrationUnavailable):
            service.create_customer("ada@example.com")
    assert fake_stripe.count() == 3

    with pytest.raises(CircuitOpenError) as caught:
        service.retrieve_customer("cus_123")
    with pytest.raises(CircuitOpenError):
        service.create_payment_intent(100, "usd")

    assert fake_stripe.count() == 3  # failed fast, nothing sent
    assert caught.value.retry_after is not None and caught.value.retry_after > 0
    assert get_breaker("stripe").state == "open"


def test_every_attempt_counts_against_the_breaker(service, configure, fake_stripe, backoff):
    configure(RETRY={"MAX_ATTEMPTS": 3}, BREAKER={"FAILURE_THRESHOLD": 3})
    fake_stripe.fail("drop", times=None)

    with pytest.raises(IntegrationUnavailable):
        service.create_customer("ada@example.com")
    with pytest.raises(CircuitOpenError):
        service.create_customer("ada@example.com")

    assert fake_stripe.count() == 3


def test_card_errors_do_not_trip_the_breaker(service, configure, fake_stripe):
    configure(BREAKER={"FAILURE_THRESHOLD": 2})
    fake_stripe.fail("card_declined", times=None)

    for _ in range(5):
        with pytest.raises(ClientRequestError):
            service.create_payment_intent(100, "usd")
    fake_stripe.heal()

    assert fake_stripe.count() == 5
    assert get_breaker("stripe").state == "closed"
    assert service.create_payment_intent(100, "usd").amount == 100


def test_breaker_recovers_through_a_probe(service, configure, fake_stripe):
    configure(RETRY={"MAX_ATTEMPTS": 1}, BREAKER={"FAILURE_THRESHOLD": 1, "RESET_TIMEOUT": 0.3})
    fake_stripe.fail("server_error", times=1)
    with pytest.raises(IntegrationUnavailable):
        service.create_customer("ada@example.com")
    with pytest.raises(CircuitOpenError):
        service.create_customer("ada@example.com")

    time.sleep(0.5)
    customer = service.create_customer("ada@example.com")

    assert customer.id in fake_stripe.customers
    assert get_breaker("stripe").state == "closed"


# --- secrets ----------------------------------------------------------------------------------


def _log_text(caplog) -> str:
    formatter = logging.Formatter()
    parts = [caplog.text]
    parts += [formatter.formatException(r.exc_info) for r in caplog.records if r.exc_info]
    parts += [repr(r.__dict__) for r in caplog.records]
    return "\n".join(parts)


def test_the_api_key_never_appears_in_errors_or_logs(configure, fake_stripe, backoff, caplog):
    caplog.set_level(logging.DEBUG)
    configure(TIMEOUT={"READ": 0.3}, BREAKER={"FAILURE_THRESHOLD": 50})
    wrong_key = "sk_live_51WrongKeyThatMustNotLeak9876543210fedcba"
    errors = []

    with pytest.raises(ClientRequestError) as unauthorized:
        StripeService(api_key=wrong_key).create_customer("ada@example.com")
    errors.append(unauthorized.value)
    service = StripeService()
    for failure, expected in [
        ("server_error", IntegrationUnavailable),
        ("hang", IntegrationTimeout),
        ("rate_limited", RateLimitedError),
        ("permission", ClientRequestError),
    ]:
        fake_stripe.fail(failure, times=None, retry_after=0.01)
        with pytest.raises(expected) as caught:
            service.create_customer("ada@example.com")
        errors.append(caught.value)
        fake_stripe.heal()

    assert unauthorized.value.status_code == 401
    assert fake_stripe.requests[0].header("Authorization") == f"Bearer {wrong_key}"
    text = _log_text(caplog) + "".join(f"{e}{e!r}" for e in errors)
    text += CircuitBreaker.objects.get(name="stripe").last_error
    assert caplog.records  # something was logged
    for key in (API_KEY, wrong_key):
        assert key not in text
        assert key[8:] not in text


def test_a_key_echoed_by_the_vendor_is_redacted_from_our_message(configure, fake_stripe):
    echoed = {"error": {"type": "invalid_request_error", "message": f"Bad key {API_KEY} here"}}
    fake_stripe.route("POST", "/v1/customers", Reply.json(echoed, status=401))

    with pytest.raises(ClientRequestError) as caught:
        StripeService().create_customer("ada@example.com")

    assert API_KEY not in str(caught.value)
    assert "[redacted]" in str(caught.value)


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "integrations",
    [
        {},
        {"SERVICES": {"stripe": {"BASE_URL": "http://127.0.0.1:9"}}},
        {"SERVICES": {"stripe": {"API_KEY": "", "BASE_URL": "http://127.0.0.1:9"}}},
    ],
)
def test_a_missing_key_is_improperly_configured(integrations):
    with override_settings(INTEGRATIONS=integrations):
        service = StripeService()  # settings are read at call time, not here
        with pytest.raises(ImproperlyConfigured, match=r"\['stripe'\]\['API_KEY'\]"):
            service.create_customer("ada@example.com")


def test_constructor_arguments_win_over_settings(fake_stripe):
    with (
        FakeStripe(api_key="sk_test_other") as other,
        override_settings(INTEGRATIONS=stripe_settings(fake_stripe.base_url)),
    ):
        customer = StripeService(api_key="sk_test_other", base_url=other.base_url + "/")
        customer = customer.create_customer("ada@example.com")

        assert customer.id in other.customers
        assert fake_stripe.count() == 0


def test_settings_are_read_at_each_call(fake_stripe):
    service = StripeService()
    with FakeStripe(api_key=API_KEY) as other:
        with override_settings(INTEGRATIONS=stripe_settings(fake_stripe.base_url)):
            service.create_customer("ada@example.com")
        with override_settings(INTEGRATIONS=stripe_settings(other.base_url)):
            service.create_customer("ada@example.com")
    service.close()

    assert (fake_stripe.count(), other.count()) == (1, 1)


def test_a_forked_child_opens_its_own_connections(configure, backoff, fake_stripe):
    """A child (gunicorn, Celery prefork) must not send on its parent's pooled sockets (the
    sync pool: an event loop's connections die with the loop)."""
    service = StripeService()
    service.create_customer("parent@example.com")

    assert in_a_child(lambda: service.create_customer("child@example.com").email) == (
        "child@example.com"
    )
    service.create_customer("parent-again@example.com")

    service.close()

    parent, child, parent_again = (r.client_port for r in fake_stripe.requests)
    assert child != parent
    assert parent_again == parent  # the parent keeps its pool


def test_the_readme_example():
    from integrations.testing import instant_backoff

    with (
        FakeStripe(api_key="sk_test_x") as fake,
        instant_backoff(),
        override_settings(
            INTEGRATIONS={
                "SERVICES": {"stripe": {"API_KEY": "sk_test_x", "BASE_URL": fake.base_url}}
            }
        ),
    ):
        fake.fail("server_error", times=2)
        intent = StripeService().create_payment_intent(1000, "usd")
    assert fake.count("POST", "/v1/payment_intents") == 3
    assert len(set(fake.idempotency_keys())) == 1
    assert intent.id in fake.payment_intents


def test_a_breaker_forced_open_by_an_operator_stops_stripe_calls(service, fake_stripe):
    from integrations.testing import force_breaker

    force_breaker("stripe", "forced_open", reason="Stripe incident")

    with pytest.raises(CircuitOpenError) as caught:
        service.refund("pi_123")

    assert caught.value.retry_after is None  # a person holds it open
    assert fake_stripe.count() == 0


def test_an_empty_customer_id_is_refused_before_any_request(service, fake_stripe):
    with pytest.raises(ValueError, match="customer_id"):
        service.retrieve_customer("")

    assert fake_stripe.count() == 0


# --- listing events (reconcile) ---------------------------------------------------------------


def test_list_events_sends_the_filters_and_returns_the_page(service, fake_stripe):
    for n in range(3):
        fake_stripe.add_event("invoice.paid", created=1_000 + n)
    fake_stripe.add_event("invoice.paid", created=5_000, delivered=True)

    page = service.list_events(
        created_gte=1_001, delivery_success=False, types=["invoice.paid"], limit=1
    )

    assert isinstance(page, EventPage)
    assert page.has_more is True
    [event] = page.events
    assert (event["type"], event["created"]) == ("invoice.paid", 1_002)
    [request] = fake_stripe.requests
    assert (request.method, request.path) == ("GET", "/v1/events")
    assert dict(query_params(request)) == {
        "limit": "1",
        "created[gte]": "1001",
        "delivery_success": "false",
        "types[0]": "invoice.paid",
    }
    assert request.header("Idempotency-Key") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"types": ["t"] * 21}, "20")],
)
def test_list_events_refuses_what_stripe_would(service, fake_stripe, kwargs, message):
    with pytest.raises(ValueError, match=message):
        service.list_events(**kwargs)
    assert fake_stripe.requests == []


def test_undelivered_events_follow_every_page(service, fake_stripe):
    ids = {fake_stripe.add_event(created=2_000 + n)["id"] for n in range(205)}
    fake_stripe.add_event(created=1_000)  # before since

    listed = list(
        list_undelivered_events(since=datetime.fromtimestamp(2_000, UTC), service=service)
    )

    assert {e["id"] for e in listed} == ids
    assert fake_stripe.count("GET", "/v1/events") == 3


def test_undelivered_events_raise_listing_failed(service, fake_stripe):
    fake_stripe.add_event()
    fake_stripe.fail("permission", times=None, path="/v1/events")
    with pytest.raises(ListingFailed) as caught:
        list(list_undelivered_events(since=datetime.fromtimestamp(0, UTC), service=service))
    assert caught.value.retryable is False
    assert "HTTP 403" in str(caught.value)
    assert API_KEY not in str(caught.value)
    assert isinstance(caught.value.__cause__, ClientRequestError)


def test_integrations_registers_the_stripe_lister():
    assert event_lister("stripe") is list_undelivered_events
