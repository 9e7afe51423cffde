"""Settings for the integrations app: ``settings.INTEGRATIONS`` merged over these defaults.

Per-service dicts in ``SERVICES`` override the global ``TIMEOUT``, ``RETRY``, ``BREAKER`` and
``MAX_RESPONSE_BYTES`` key by key; class attributes of a ``ServiceClient`` override both. A
service's own keys also include ``BASE_URL``, ``ALLOWED_ORIGINS`` (other origins its absolute
URLs may name; they get no credentials) and vendor options such as Stripe's ``API_KEY``.

Credentials are ``SecretStr`` (a ``str`` whose ``repr`` hides it) from the merge on: every string
under a key named like one (``API_KEY``, ``CLIENT_SECRET``, ``ACCESS_TOKEN``, ``PASSWORD``...;
``webhooks.conf.SECRET_KEY_NAME``), so that no settings dict in a frame shows it in an error
report.
"""

from __future__ import annotations

from typing import Any

from django.views.decorators.debug import sensitive_variables

from webhooks.conf import SECRET_VARIABLES, AppSettings, SecretStr, deep_merge

__all__ = ["DEFAULTS", "SecretStr", "integrations_settings", "service_settings"]

DEFAULTS: dict[str, Any] = {
    "TIMEOUT": {"CONNECT": 3.05, "READ": 10.0, "WRITE": 10.0, "POOL": 5.0},
    "RETRY": {"MAX_ATTEMPTS": 3, "BASE_DELAY": 0.5, "MAX_DELAY": 8.0, "DEADLINE": 30.0},
    "BREAKER": {
        "FAILURE_THRESHOLD": 5,
        "RESET_TIMEOUT": 30.0,
        "HALF_OPEN_MAX_CALLS": 1,
        "CACHE_TTL": 1.0,
        "FAIL_OPEN_ON_DB_ERROR": True,
        # Optional failure-rate rule (off while FAILURE_RATE is None): open when, over the last
        # WINDOW seconds and at least MINIMUM_CALLS calls, the failure rate reaches it (0..1).
        "FAILURE_RATE": None,
        "MINIMUM_CALLS": 20,
        "WINDOW": 60.0,
    },
    # The largest answer (bytes, after decompression) a call reads; larger ones are refused.
    "MAX_RESPONSE_BYTES": 10 * 1024 * 1024,
    "SERVICES": {},
    # Operator API (integrations.api): DRF permission and throttle classes, dotted paths or
    # classes. Model permissions (view/change on CircuitBreaker) are always checked on top.
    "API_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "API_THROTTLE_CLASSES": [],
}

integrations_settings = AppSettings("INTEGRATIONS", DEFAULTS)

#: The global keys a service's own entry in ``SERVICES`` may override.
SERVICE_KEYS = ("TIMEOUT", "RETRY", "BREAKER", "MAX_RESPONSE_BYTES")


# Per-service merges, memoized for the current ``integrations_settings.merged``: AppSettings
# builds a new dict when the setting changes (or on ``reload()``), and that new identity
# invalidates the memo. The pair keeps a reference to the dict it was built from, so its id cannot
# be reused by a later one, and is replaced as one object so that threads never pair a memo with
# the wrong source.
_memo: tuple[dict[str, Any] | None, dict[str, dict[str, Any]]] = (None, {})


@sensitive_variables(*SECRET_VARIABLES)
def service_settings(service: str) -> dict[str, Any]:
    """The merged settings for one service: global policy dicts overridden by its own entry.

    The returned dict is memoized and shared by every caller until the settings change: read
    it, never mutate it (copy it first if you must).
    """
    global _memo
    merged = integrations_settings.merged
    source, memo = _memo
    if source is not merged:
        memo = {}
        _memo = (merged, memo)
    try:
        return memo[service]
    except KeyError:
        pass
    own = merged["SERVICES"].get(service, {})
    base = {key: merged[key] for key in SERVICE_KEYS}
    result = memo[service] = deep_merge(base, own)
    return result
