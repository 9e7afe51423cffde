"""Secrets and error reporters: what Django's technical 500 page (``DEBUG = True``), its
plain-text report and ``SafeExceptionReporterFilter`` (``DEBUG = False``) show of a request to a
misconfigured endpoint. Rendered for real, from the exception the view raised.

Under ``DEBUG`` Django shows every frame's local variables as their ``repr`` (Sentry records
them the same way): no secret may sit in a local or attribute in a form whose ``repr`` shows it.
With ``DEBUG`` off, ``SafeExceptionReporterFilter`` also hides the variables named by
``sensitive_variables`` (error e-mails to ``ADMINS``, logging's ``AdminEmailHandler``).
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.views.debug import ExceptionReporter, SafeExceptionReporterFilter

from tests.asgi import AsgiClient
from tether.conf import SecretStr
from webhooks.conf import webhooks_settings

pytestmark = pytest.mark.django_db

REAL = "whsec_real0123456789abcdefREALSECRET"  # the secret a rotation keeps
OTHER = "github-other-endpoint-OTHERSECRET"  # another endpoint's, in the same settings

MISCONFIGURED = {
    # A rotation whose second secret's environment variable is not set.
    "empty second secret": {"PROVIDER": "stripe", "SECRETS": [REAL, ""]},
    "bad provider path": {"PROVIDER": "myapp.hooks.Missing", "SECRETS": [REAL]},
}


@pytest.fixture(params=list(MISCONFIGURED))
def misconfigured(request, settings):
    settings.WEBHOOKS = {
        "ENDPOINTS": {
            "shop": MISCONFIGURED[request.param],
            "other": {"PROVIDER": "github", "SECRETS": [OTHER]},
        }
    }
    return request.param


@pytest.fixture(params=["sync", "async"])
def post_to_the_misconfigured_endpoint(request):
    """An unauthenticated POST, as anyone on the internet can send, to the sync receive view
    (WSGI) or the async one (ASGI); its 500 response."""
    kind = Client if request.param == "sync" else AsgiClient
    return lambda: _post(kind(raise_request_exception=False))


def _post(client):
    response = client.post(
        "/webhooks/shop/",
        data=b'{"id": "evt_1"}',
        content_type="application/json",
        headers={"Stripe-Signature": "t=1,v1=00"},
    )
    assert response.status_code == 500
    return response


def reports(response) -> tuple[str, str]:
    """The HTML and plain-text reports Django renders for the request's exception."""
    reporter = ExceptionReporter(_request(response), *response.exc_info)
    return reporter.get_traceback_html(), reporter.get_traceback_text()


def test_the_debug_500_page_shows_no_secret(
    settings, misconfigured, post_to_the_misconfigured_endpoint
):
    settings.DEBUG = True
    response = post_to_the_misconfigured_endpoint()
    page = response.content.decode()
    # Django's technical page, with the frames' local variables.
    assert "WebhookConfigurationError" in page
    assert "Local vars" in page and "get_provider" in page
    html, text = reports(response)
    assert "get_provider" in text
    for report in (page, html, text):
        assert REAL not in report
        assert OTHER not in report
    # The settings dict's secrets are shown hidden, where they are held.
    assert "&lt;secret&gt;" in page


def _request(response):
    return getattr(response, "wsgi_request", None) or response.asgi_request


def frames(traceback):
    while traceback is not None:
        yield traceback.tb_frame
        traceback = traceback.tb_next


def test_the_report_with_debug_off_shows_no_secret(
    settings, misconfigured, post_to_the_misconfigured_endpoint
):
    settings.DEBUG = False
    response = post_to_the_misconfigured_endpoint()
    assert REAL not in response.content.decode()
    html, text = reports(response)
    assert "get_provider" in html and "get_provider" in text
    for report in (html, text):
        assert REAL not in report
        assert OTHER not in report
    # What the filter gives reporters for each frame: the variables named by
    # sensitive_variables are hidden in the frames of get_provider and below.
    request, (_, _, traceback) = _request(response), response.exc_info
    reporter_filter = SafeExceptionReporterFilter()
    shown = {
        frame.f_code.co_name: dict(reporter_filter.get_traceback_frame_variables(request, frame))
        for frame in frames(traceback)
    }
    assert shown["get_provider"]["config"] == reporter_filter.cleansed_substitute
    assert shown["get_provider"]["endpoint"] == "shop"  # only the named ones
    assert all(REAL not in repr(variables) for variables in shown.values())


def test_endpoint_secrets_are_wrapped_where_the_settings_are_merged(settings):
    settings.WEBHOOKS = {"ENDPOINTS": {"shop": {"PROVIDER": "stripe", "SECRETS": [REAL, ""]}}}
    secrets = webhooks_settings["ENDPOINTS"]["shop"]["SECRETS"]
    assert all(type(secret) is SecretStr for secret in secrets)
    assert secrets == [REAL, ""]  # still the values, for HMAC keys and the SDKs
    assert REAL not in repr(webhooks_settings["ENDPOINTS"])
    assert REAL not in repr(webhooks_settings.merged)
    # The user's own settings are left as they are.
    assert type(settings.WEBHOOKS["ENDPOINTS"]["shop"]["SECRETS"][0]) is str
