"""The error hierarchy: survives pickling (Celery pickles a task's exception) intact, and says
what failed without a message of the caller's."""

import math
import pickle
import subprocess
import sys

import pytest

from integrations.exceptions import (
    MAX_RETRY_AFTER,
    CircuitOpenError,
    ClientRequestError,
    IntegrationError,
    IntegrationTimeout,
    IntegrationUnavailable,
    InvalidResponseError,
    RateLimitedError,
    safe_error_text,
)


@pytest.mark.parametrize(
    ("error", "fields"),
    [
        (IntegrationError("svc", "op", "boom", attempts=2), {"attempts": 2, "message": "boom"}),
        (IntegrationTimeout("svc", "op", attempts=3), {"attempts": 3, "retryable": True}),
        (IntegrationUnavailable("svc", "op", status_code=503), {"status_code": 503}),
        (CircuitOpenError("svc", "op", retry_after=12.5), {"retry_after": 12.5}),
        (RateLimitedError("svc", "op", retry_after=3.0), {"retry_after": 3.0}),
        (
            ClientRequestError("svc", "op", status_code=408),
            {"status_code": 408, "retryable": True, "breaker_failure": True},
        ),
        (
            ClientRequestError("svc", "op", status_code=404),
            {"status_code": 404, "retryable": False},
        ),
        (InvalidResponseError("svc", "op", "not JSON"), {"message": "not JSON"}),
    ],
)
def test_errors_round_trip_through_pickle(error, fields):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (copy.service, copy.operation) == ("svc", "op")
    assert str(copy) == str(error)
    for name, value in fields.items():
        assert getattr(copy, name) == value


def test_vendor_response_is_left_out_of_the_pickle():
    error = ClientRequestError("svc", "op", status_code=400)
    error.response = object()  # not picklable
    copy = pickle.loads(pickle.dumps(error))
    assert copy.status_code == 400
    assert not hasattr(copy, "response")


def test_safe_error_text_trusts_only_our_errors():
    assert safe_error_text(None) == ""
    assert safe_error_text(IntegrationTimeout("svc", "op", attempts=2)) == (
        "svc.op: The vendor did not answer in time after 2 attempt(s)"
    )
    assert safe_error_text(RuntimeError("https://x.test/?key=sk_live_1")) == "RuntimeError"
    assert safe_error_text(IntegrationError("svc", "op", "y" * 50), limit=10) == "svc.op: yy"


@pytest.mark.parametrize("cls", [RateLimitedError, CircuitOpenError])
@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, None),
        (math.nan, None),
        (12.5, 12.5),
        (-3.0, 0.0),
        (1e308, MAX_RETRY_AFTER),
        (math.inf, MAX_RETRY_AFTER),
        (-math.inf, 0.0),
        (MAX_RETRY_AFTER + 1, MAX_RETRY_AFTER),
    ],
)
def test_retry_after_is_always_finite_and_capped(cls, given, expected):
    error = cls("svc", "op", retry_after=given)
    assert error.retry_after == expected
    assert pickle.loads(pickle.dumps(error)).retry_after == expected


def test_the_cap_is_an_hour():
    assert MAX_RETRY_AFTER == 3600.0


class VendorTimeout(IntegrationTimeout):
    pass  # a user's subclass, without a docstring of its own


def test_the_default_message_is_the_nearest_docstring_line():
    assert str(IntegrationTimeout("svc", "op")) == "svc.op: The vendor did not answer in time"
    assert str(VendorTimeout("svc", "op", attempts=2)) == (
        "svc.op: The vendor did not answer in time after 2 attempt(s)"
    )


def test_the_default_message_without_docstrings_is_the_class_name():
    code = "from integrations.exceptions import RateLimitedError as E; print(E('svc', 'op'))"
    run = subprocess.run(
        [sys.executable, "-OO", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "svc.op: RateLimitedError"


def test_the_fleet_policies_errors_are_importable_from_the_package():
    import integrations
    from integrations.exceptions import BulkheadFull, IntegrationError, RateLimited

    assert integrations.RateLimited is RateLimited
    assert integrations.BulkheadFull is BulkheadFull
    assert issubclass(RateLimited, IntegrationError) and issubclass(BulkheadFull, IntegrationError)
