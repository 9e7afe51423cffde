"""Exceptions of the webhooks app, rooted at ``WebhookError``."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured, SuspiciousOperation


class WebhookError(Exception):
    """Base class of every exception the webhooks app raises."""


class WebhookConfigurationError(WebhookError, ImproperlyConfigured):
    """A ``WEBHOOKS`` setting is missing or wrong; the message names the exact key."""


class InvalidSignature(WebhookError, SuspiciousOperation):
    """The request's signature is missing, forged or stale. Nothing is stored."""


class MalformedPayload(WebhookError, SuspiciousOperation):
    """The request is verified but its body is not usable (not JSON, no event id, ...)."""


class PayloadTooLarge(WebhookError):
    """The body is over the endpoint's ``MAX_BODY_BYTES``."""


class UnknownEndpoint(WebhookError, LookupError):
    """No endpoint of that name in ``WEBHOOKS["ENDPOINTS"]``."""


class StorageUnavailable(WebhookError):
    """The database could not store or look up the event; the sender should retry later."""


class BrokerUnavailable(WebhookError):
    """The Celery broker refused to publish a task (the sweeper's ``requeue_stuck`` stops)."""


class Ignore(WebhookError):
    """Raised by a handler: end the event ``ignored`` now, without retries."""


class PermanentFailure(WebhookError):
    """Raised by a handler: end the event ``failed`` now, without retries."""
