"""Signals of the webhooks app. Receivers get these keyword arguments.

Public contract (sender is ``WebhookEvent``):
- ``webhook_received(event)``: a new event was stored (not sent for duplicates).
- ``webhook_processed(event)``: an event ended ``processed``.
- ``webhook_failed(event, error)``: an event ended ``failed``; ``error`` is the exception.

Operational (used by metrics; sender is ``None``):
- ``webhook_rejected(endpoint, reason)``: a request was refused; ``reason`` is the error code of
  the response (``invalid_signature``, ``malformed_payload``, ``payload_too_large``,
  ``unknown_endpoint``, ``unavailable``).
- ``webhook_duplicate(endpoint, event_id)``: a delivery of an already stored event.
- ``webhook_ignored(event)`` (sender ``WebhookEvent``): an event ended ``ignored``.
"""

from django.dispatch import Signal

webhook_received = Signal()
webhook_processed = Signal()
webhook_failed = Signal()
webhook_ignored = Signal()
webhook_rejected = Signal()
webhook_duplicate = Signal()
