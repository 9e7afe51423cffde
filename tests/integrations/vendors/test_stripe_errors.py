"""``map_stripe_error`` for every error class of ``stripe._error``.

The classes the four v1 endpoints can raise are also driven over real HTTP in test_stripe.py;
the v2-only classes and the inbound ``SignatureVerificationError`` cannot come from those
endpoints, so they are built here with the SDK's own constructors, as its requestor builds them.
"""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta

import pytest
import stripe
import stripe._error as stripe_errors
import stripe.oauth_error

from integrations.exceptions import (
    ClientRequestError,
    IntegrationTimeout,
    IntegrationUnavailable,
    InvalidResponseError,
    RateLimitedError,
)
from integrations.vendors.stripe import map_stripe_error

KEY = "sk_test_51MapperSecretKeyNeverInMessages000000"


def body(type_: str | None, message: str = "Something went wrong.", **more: str) -> dict:
    error = {"message": message, **more}
    if type_:
        error["type"] = type_
    return {"error": error}


def make(cls: type[stripe.StripeError], status: int | None, type_: str | None = None):
    json_body = body(type_) if type_ else None
    if cls is stripe.CardError:
        return cls(
            "Your card was declined.",
            "",
            "card_declined",
            http_status=status,
            json_body=body("card_error", code="card_declined"),
        )
    if cls is stripe.InvalidRequestError:
        return cls(
            "Missing required param: currency.",
            "currency",
            "parameter_missing",
            http_status=status,
            json_body=json_body,
        )
    if cls is stripe.SignatureVerificationError:
        return cls("No signatures found matching the expected signature", "t=1,v1=bad")
    if cls is stripe.APIConnectionError:
        return cls("Unexpected error communicating with Stripe.", should_retry=True)
    return cls("Something went wrong.", http_status=status, json_body=json_body)


V2_CLASSES = [
    stripe_errors.AlreadyCanceledError,
    stripe_errors.BlockedByStripeError,
    stripe_errors.CannotProceedError,
    stripe_errors.CapabilityNotEnabledError,
    stripe_errors.ControlledByAlternateResourceError,
    stripe_errors.FeatureNotEnabledError,
    stripe_errors.FinancialAccountNotOpenError,
    stripe_errors.FxQuoteNeedsRefreshError,
    stripe_errors.InsufficientFundsError,
    stripe_errors.InvalidPaymentMethodError,
    stripe_errors.InvalidPayoutMethodError,
    stripe_errors.InvalidVaultedCredentialError,
    stripe_errors.NotCancelableError,
    stripe_errors.QuotaExceededError,
    stripe_errors.RecipientNotNotifiableError,
    stripe_errors.TemporarySessionExpiredError,
    stripe_errors.VerificationAttemptFailedError,
    stripe_errors.VerificationExpiredError,
    stripe_errors.VerificationNotInitiatedError,
]

CASES = [
    # (SDK class, HTTP status, our class, retryable, breaker failure)
    (stripe.StripeError, 500, IntegrationUnavailable, True, True),
    (stripe.APIError, 500, IntegrationUnavailable, True, True),
    (stripe.APIError, 503, IntegrationUnavailable, True, True),
    (stripe.APIError, None, IntegrationUnavailable, True, True),
    (stripe.APIError, 409, ClientRequestError, False, False),
    (stripe.APIError, 408, ClientRequestError, True, True),
    (stripe.APIError, 200, InvalidResponseError, False, True),
    (stripe.APIConnectionError, None, IntegrationUnavailable, True, True),
    (stripe_errors.StripeErrorWithParamCode, 400, ClientRequestError, False, False),
    (stripe.CardError, 402, ClientRequestError, False, False),
    (stripe.IdempotencyError, 400, ClientRequestError, False, False),
    (stripe.InvalidRequestError, 400, ClientRequestError, False, False),
    (stripe.InvalidRequestError, 404, ClientRequestError, False, False),
    (stripe.AuthenticationError, 401, ClientRequestError, False, False),
    (stripe.PermissionError, 403, ClientRequestError, False, False),
    (stripe.RateLimitError, 429, RateLimitedError, True, True),
    (stripe.SignatureVerificationError, None, InvalidResponseError, False, True),
    *[(cls, 400, ClientRequestError, False, False) for cls in V2_CLASSES],
    # OAuth errors (stripe.oauth_error) are StripeErrors too: decided by their status.
    (stripe.oauth_error.InvalidGrantError, 400, ClientRequestError, False, False),
]


@pytest.mark.parametrize(
    ("sdk_error", "status", "our_error", "retryable", "breaker_failure"),
    CASES,
    ids=[f"{case[0].__name__}-{case[1]}" for case in CASES],
)
def test_every_stripe_error_is_mapped(sdk_error, status, our_error, retryable, breaker_failure):
    if issubclass(sdk_error, stripe.oauth_error.OAuthError):
        exc = sdk_error("invalid_grant", "Authorization code expired", http_status=status)
    else:
        exc = make(sdk_error, status, "api_error" if status and status >= 500 else None)

    error = map_stripe_error(exc, operation="refund", api_key=KEY)

    assert type(error) is our_error
    assert error.__cause__ is exc
    assert (error.service, error.operation) == ("stripe", "refund")
    assert error.retryable is retryable
    assert error.breaker_failure is breaker_failure
    if our_error is ClientRequestError:
        assert error.status_code == status


def test_every_class_of_the_sdk_is_covered():
    # A new error class in a stripe release makes this fail until it is looked at.
    sdk = {
        cls
        for cls in vars(stripe_errors).values()
        if isinstance(cls, type) and issubclass(cls, stripe.StripeError)
    }
    assert sdk == {case[0] for case in CASES if case[0].__module__ == "stripe._error"}


def test_a_timeout_is_an_integration_timeout():
    import httpx

    try:
        try:
            raise httpx.ReadTimeout("timed out")
        except httpx.ReadTimeout as cause:
            raise stripe.APIConnectionError("A ReadTimeout was raised") from cause
    except stripe.APIConnectionError as exc:
        error = map_stripe_error(exc, operation="create_customer")

    assert type(error) is IntegrationTimeout
    assert error.retryable and error.breaker_failure


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({}, None),
        ({"Retry-After": "soon"}, None),
    ],
)
def test_rate_limit_retry_after(header, expected):
    exc = stripe.RateLimitError("Too many requests", http_status=429, headers=header)

    error = map_stripe_error(exc, operation="create_customer")

    assert isinstance(error, RateLimitedError)
    assert error.retry_after == expected


def test_rate_limit_retry_after_as_http_date():
    when = datetime.now(UTC) + timedelta(seconds=20)
    exc = stripe.RateLimitError(
        "Too many requests",
        http_status=429,
        headers={"Retry-After": email.utils.format_datetime(when, usegmt=True)},
    )

    assert 17 <= map_stripe_error(exc, operation="x").retry_after <= 20


def test_messages_carry_type_code_and_stripes_message():
    exc = stripe.CardError(
        "Your card was declined.",
        "",
        "card_declined",
        http_status=402,
        json_body=body(
            "card_error",
            "Your card was declined.",
            code="card_declined",
            decline_code="insufficient_funds",
        ),
    )

    message = str(map_stripe_error(exc, operation="create_payment_intent"))

    assert message.startswith("stripe.create_payment_intent: card_error/card_declined/")
    assert "insufficient_funds (HTTP 402): Your card was declined." in message


@pytest.mark.parametrize(
    "message",
    [
        f"Invalid API Key provided: {KEY}",
        "Invalid API Key provided: sk_live_abcdefABCDEF0123456789",
        "The provided key 'rk_test_***********3456' does not have the required permissions",
    ],
)
def test_keys_are_redacted_from_messages(message):
    exc = stripe.AuthenticationError(
        message, http_status=401, json_body=body("invalid_request_error", message)
    )

    error = map_stripe_error(exc, operation="create_customer", api_key=KEY)

    assert KEY not in str(error)
    assert "sk_live_abcdef" not in str(error)
    assert "rk_test_" not in str(error)
    assert "[redacted]" in str(error)


def test_a_non_stripe_body_is_never_echoed():
    exc = stripe.APIError(
        "Invalid response body from API: <html>secret upstream page</html> (HTTP response code "
        "was 200)",
        http_status=200,
    )

    error = map_stripe_error(exc, operation="create_customer")

    assert isinstance(error, InvalidResponseError)
    assert "secret upstream page" not in str(error)


@pytest.mark.parametrize(
    ("sdk_error", "status", "header", "retryable"),
    [
        (stripe.APIError, 500, "false", False),
        (stripe.APIError, 500, None, True),
        (stripe.APIError, 409, "true", True),
        (stripe.InvalidRequestError, 400, "true", True),
        (stripe.RateLimitError, 429, "false", False),
        (stripe.APIError, 500, "maybe", True),
    ],
)
def test_stripe_should_retry_header_decides_retries(sdk_error, status, header, retryable):
    headers = {"Stripe-Should-Retry": header} if header else {}
    if sdk_error is stripe.InvalidRequestError:
        exc = sdk_error("Lock timeout", None, "lock_timeout", http_status=status, headers=headers)
    else:
        exc = sdk_error("Something went wrong.", http_status=status, headers=headers)

    assert map_stripe_error(exc, operation="x").retryable is retryable
