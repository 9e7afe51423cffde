"""Credentials and error reporters: the settings a service's calls hold never show its key in
Django's technical 500 page or in ``SafeExceptionReporterFilter``'s output (both render each
frame's local variables by their ``repr``, as Sentry records them)."""

from __future__ import annotations

import pytest
from django.test import override_settings
from django.views.debug import ExceptionReporter, SafeExceptionReporterFilter

from integrations.conf import integrations_settings, service_settings
from integrations.exceptions import IntegrationUnavailable
from integrations.testing import unused_port_url
from integrations.vendors.stripe import StripeService
from tether.conf import SecretStr

from .conftest import API_KEY

pytestmark = pytest.mark.django_db

EXTRA = {
    "CLIENT_SECRET": "client-secret-EXTRA1",
    "ACCESS_TOKEN": "access-token-EXTRA2",
    "PASSWORD": "password-EXTRA3",
    "SIGNING_KEYS": ("kept-as-is-EXTRA4",),  # not a credential name: plural KEYS
}


def test_credentials_are_wrapped_where_the_settings_are_merged():
    services = {"stripe": {"API_KEY": API_KEY, "BASE_URL": "https://api.stripe.com", **EXTRA}}
    with override_settings(INTEGRATIONS={"SERVICES": services}):
        merged = integrations_settings["SERVICES"]["stripe"]
        for name in ("API_KEY", "CLIENT_SECRET", "ACCESS_TOKEN", "PASSWORD"):
            assert type(merged[name]) is SecretStr, name
            assert type(service_settings("stripe")[name]) is SecretStr, name
        assert merged["API_KEY"] == API_KEY  # the value, wherever it is used
        assert type(merged["BASE_URL"]) is str
        assert merged["SIGNING_KEYS"] == ("kept-as-is-EXTRA4",)
        shown = repr(integrations_settings.merged) + repr(service_settings("stripe"))
        assert API_KEY not in shown
        assert not any(value in shown for value in list(EXTRA.values())[:3])
        # The API's permission classes (a key with "API" in it) are not credentials.
        assert type(integrations_settings["API_PERMISSION_CLASSES"][0]) is str


@pytest.mark.parametrize("debug", [True, False], ids=["DEBUG", "no DEBUG"])
def test_the_report_of_a_failed_stripe_call_shows_no_api_key(configure, backoff, settings, debug):
    """Stripe unreachable: our frames hold the service's settings and the SDK client; the
    SDK's and httpx's frames, which hold the request's Authorization header, are dropped from
    the cause's traceback (its type and message stay)."""
    settings.DEBUG = debug
    configure(BASE_URL=unused_port_url())
    with pytest.raises(IntegrationUnavailable) as caught:
        StripeService().create_customer("ada@example.com")
    reporter = ExceptionReporter(None, caught.type, caught.value, caught.tb)
    html, text = reporter.get_traceback_html(), reporter.get_traceback_text()
    assert "in _call" in text and "APIConnectionError" in html  # our frames, the SDK's cause
    assert API_KEY not in html
    assert API_KEY not in text
    reporter_filter = SafeExceptionReporterFilter()
    traceback = caught.tb
    while traceback is not None:
        shown = dict(reporter_filter.get_traceback_frame_variables(None, traceback.tb_frame))
        assert API_KEY not in repr(shown), traceback.tb_frame.f_code.co_name
        traceback = traceback.tb_next


def test_a_key_given_to_the_constructor_is_wrapped_too(configure):
    service = StripeService(api_key=API_KEY)
    assert API_KEY not in repr(vars(service))
