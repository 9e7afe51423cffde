"""Settings for the webhooks app.

One dict, ``settings.WEBHOOKS``, merged key by key over the defaults below and read at call time
(never at import), so ``override_settings`` works. The merge machinery, ``AppSettings``, is also
used by ``integrations.conf``: one accessor for both apps.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

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


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``override`` key by key, recursing into nested dicts."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class AppSettings:
    """Lazy, merged view of one settings dict; reloaded when the setting changes."""

    def __init__(self, setting_name: str, defaults: Mapping[str, Any]) -> None:
        self.setting_name = setting_name
        self.defaults = defaults
        self._merged: dict[str, Any] | None = None
        setting_changed.connect(self._on_setting_changed, weak=False)

    @property
    def merged(self) -> dict[str, Any]:
        if self._merged is None:
            user = getattr(settings, self.setting_name, None) or {}
            self._merged = deep_merge(self.defaults, user)
        return self._merged

    def __getitem__(self, key: str) -> Any:
        return self.merged[key]

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or not key.isupper():
            raise AttributeError(key)
        try:
            return self.merged[key]
        except KeyError as exc:
            raise AttributeError(f"{self.setting_name} has no key {key!r}") from exc

    def reload(self) -> None:
        self._merged = None

    def _on_setting_changed(self, *, setting: str, **kwargs: Any) -> None:
        if setting == self.setting_name:
            self.reload()


webhooks_settings = AppSettings("WEBHOOKS", DEFAULTS)
