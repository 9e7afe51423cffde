"""Settings for the webhooks app.

One dict, ``settings.WEBHOOKS``, merged key by key over the defaults below and read at call time
(never at import), so ``override_settings`` works. The merge machinery, ``AppSettings``, is also
used by ``integrations.conf``: one accessor for both apps.

Secrets are wrapped once, where the settings are merged: every string under a key that names a
credential (``is_secret_key``: ``SECRETS``, ``API_KEY``, ``CLIENT_SECRET``, ``ACCESS_TOKEN``,
``PASSWORD``...), alone or in a list or tuple, at any depth of ``WEBHOOKS`` or ``INTEGRATIONS``,
is a ``SecretStr``: still the same ``str`` wherever it is used (HMAC keys, the ``stripe`` SDK,
``standardwebhooks``), but its ``repr`` hides it. Django's technical 500 page and error
reporters that capture local variables (Sentry) show values by their ``repr``, so no dict or
local holding our settings shows a secret, ``DEBUG`` or not. With ``DEBUG`` off, the functions
that handle secrets are also ``sensitive_variables(*SECRET_VARIABLES)``, for
``SafeExceptionReporterFilter``. A user's own ``settings.WEBHOOKS``/``INTEGRATIONS`` dicts are
not changed (Django's settings page hides them by their key names).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.views.decorators.debug import sensitive_variables

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


class SecretStr(str):
    """A secret whose ``repr`` never shows it (tracebacks, debug pages, ``repr`` of objects).

    It is a ``str`` with the same value everywhere else (``str()``, formatting, ``encode``,
    comparisons), so code that uses the secret needs no change."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<secret>'"


#: A settings key whose string values are credentials: ``SECRETS``, ``SECRET``, ``KEY``,
#: ``TOKEN``, ``PASSWORD``, or a name ending in one of them after an underscore (``API_KEY``,
#: ``CLIENT_SECRET``, ``ACCESS_TOKEN``, ``DB_PASSWORD``); any case. ``KEY_PREFIX`` is not one.
SECRET_KEY_NAME = re.compile(r"(?:^|_)(?:SECRETS?|KEY|TOKEN|PASSWORD)$", re.IGNORECASE)

#: Local variables that hold secrets (or all of an endpoint's or a service's settings) in the
#: functions that handle them: hidden by ``SafeExceptionReporterFilter`` when ``DEBUG`` is off,
#: in those functions' frames and the frames they call (``sensitive_variables``).
SECRET_VARIABLES = (
    "secret",
    "secrets",
    "key",
    "api_key",
    "config",
    "endpoints",
    "expected",
    "expected_text",
    "digest",
    "user",
    "override",
    "merged",
)


def is_secret_key(key: Any) -> bool:
    """Whether the values under settings key ``key`` are credentials (``SECRET_KEY_NAME``)."""
    return isinstance(key, str) and SECRET_KEY_NAME.search(key) is not None


def hide_secrets(value: Any, key: Any = None) -> Any:
    """``value`` (settings found under ``key``) with every credential a ``SecretStr``: a string
    under a secret key (``is_secret_key``), or a string in a list or tuple under one; dicts are
    walked at every depth (copied, never changed in place); everything else is kept as is."""
    if isinstance(value, Mapping):
        return {name: hide_secrets(item, name) for name, item in value.items()}
    if not is_secret_key(key):
        return value
    if isinstance(value, str):
        return SecretStr(value)
    if isinstance(value, list | tuple):
        return type(value)(SecretStr(item) if isinstance(item, str) else item for item in value)
    return value


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
        """The user's dict merged over the defaults, its secrets wrapped (``hide_secrets``)."""
        if self._merged is None:
            self._merged = self._merge()
        return self._merged

    @sensitive_variables(*SECRET_VARIABLES)
    def _merge(self) -> dict[str, Any]:
        user = getattr(settings, self.setting_name, None) or {}
        return hide_secrets(deep_merge(self.defaults, user))

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
