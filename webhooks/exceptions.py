"""Exceptions of the webhooks app, rooted at ``WebhookError``.

A refused delivery is a ``DeliveryRefused``: its class carries the answer, as DRF's
``APIException`` does (``status_code``, and ``default_code``, the body's ``error`` and
``webhook_rejected``'s ``reason``), so the view maps none of them by hand.
"""

from __future__ import annotations

from typing import ClassVar

from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation


class WebhookError(Exception):
    """Base class of every exception the webhooks app raises."""


class WebhookConfigurationError(WebhookError, ImproperlyConfigured):
    """A ``WEBHOOKS`` setting is missing or wrong; the message names the exact key."""


class DeliveryRefused(WebhookError):
    """A delivery refused: answered ``status_code`` with ``{"error": default_code}``. Each
    subclass sets both."""

    status_code: ClassVar[int]
    default_code: ClassVar[str]


class InvalidSignature(DeliveryRefused, SuspiciousOperation):
    """The request's signature is missing, forged or stale. Nothing is stored."""

    status_code = 400
    default_code = "invalid_signature"


class MalformedPayload(DeliveryRefused, SuspiciousOperation):
    """The request is verified but its body is not usable (not JSON, no event id, ...)."""

    status_code = 400
    default_code = "malformed_payload"


class PayloadTooLarge(DeliveryRefused):
    """The body is over the endpoint's ``MAX_BODY_BYTES``."""

    status_code = 413
    default_code = "payload_too_large"


class UnknownEndpoint(DeliveryRefused, LookupError):
    """No endpoint of that name in ``WEBHOOKS["ENDPOINTS"]``."""

    status_code = 404
    default_code = "unknown_endpoint"


class StorageUnavailable(DeliveryRefused):
    """The database could not store or look up the event; the sender should retry later."""

    status_code = 503
    default_code = "unavailable"


class BrokerUnavailable(WebhookError):
    """The Celery broker refused to publish a task (the sweeper's ``requeue_stuck`` stops)."""


class Ignore(WebhookError):
    """Raised by a handler: end the event ``ignored`` now, without retries."""


class PermanentFailure(WebhookError):
    """Raised by a handler: end the event ``failed`` now, without retries."""


class InvalidOrderingValue(PermanentFailure):
    """An ordered handler's key or version could not be read from the event (the path is
    missing, or the value has the wrong type or size): the run fails at once, since a retry reads
    the same payload. The message names the handler's path or callable, never the payload."""
