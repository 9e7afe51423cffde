"""Signals of the webhooks app. Receivers get ``sender=WebhookEvent`` and these keyword arguments.

- ``webhook_received(event)``: a new event was stored (not sent for duplicates).
- ``webhook_processed(event)``: an event ended ``processed``.
- ``webhook_failed(event, error)``: an event ended ``failed``; ``error`` is the exception.
"""

from django.dispatch import Signal

webhook_received = Signal()
webhook_processed = Signal()
webhook_failed = Signal()
