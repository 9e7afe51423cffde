"""Settings for the webhooks app: ``settings.WEBHOOKS`` merged key by key over ``DEFAULTS``.

``webhooks_settings`` (a ``tether.conf.AppSettings``) is the app's only settings state: read at
call time (never at import), it reloads on ``setting_changed``, so ``override_settings`` works,
and its ``reload()`` also empties every cache derived from it (built providers, the Celery
eager flag). Credentials in it are ``SecretStr`` (``tether.conf``).
"""

from __future__ import annotations

from typing import Any

from tether.conf import AppSettings

DEFAULTS: dict[str, Any] = {
    "ENDPOINTS": {},
    "MAX_BODY_BYTES": 1_048_576,
    "TOLERANCE": 300,
    "MAX_ATTEMPTS": 8,
    "RETRY_BASE_DELAY": 10,
    "RETRY_MAX_DELAY": 3600,
    "TASK_QUEUE": None,
    "STUCK_AFTER": 600,
    "RETENTION_DAYS": 30,
    # Enqueueing (webhooks.dispatch): new events' processing tasks are published by a thread of
    # each web process, gathered for DISPATCH_INTERVAL seconds (None: one message per event, from
    # the committing thread), at most DISPATCH_BATCH_SIZE events per message. A process exiting
    # normally waits up to DISPATCH_SHUTDOWN_TIMEOUT seconds for them to be published.
    "DISPATCH_INTERVAL": 0.05,
    "DISPATCH_BATCH_SIZE": 20,
    "DISPATCH_SHUTDOWN_TIMEOUT": 5,
    # The receive insert and processing's statements are prepared once per connection on
    # PostgreSQL with psycopg 3 (webhooks.db). False behind a pooler that cannot keep prepared
    # statements (PgBouncer before 1.21 in transaction mode).
    "PREPARED_STATEMENTS": True,
    # The sweeper enqueues `received` events older than this (seconds): those whose wake-up call
    # was lost (a broker outage, a web process killed before its dispatcher published).
    "REQUEUE_RECEIVED_AFTER": 60,
    # The longest the sweeper waits before requeueing an event it requeued before (seconds): the
    # wait after a requeue is as long as the event had waited then, at least its threshold
    # (REQUEUE_RECEIVED_AFTER or STUCK_AFTER) and at most this (webhooks.services.requeue_stuck).
    "REQUEUE_MAX_INTERVAL": 3600,
    # Operator API (webhooks.api): DRF permission and throttle classes, dotted paths or classes.
    # Model permissions (view/change on WebhookEvent) are always checked on top of these.
    "API_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "API_THROTTLE_CLASSES": [],
    # Health view (webhooks.health): broker probe timeout and how long its result is reused.
    "HEALTH_BROKER_TIMEOUT": 1.0,
    "HEALTH_CACHE_TTL": 2.0,
}


webhooks_settings = AppSettings("WEBHOOKS", DEFAULTS)
