"""Settings for the integrations app: ``settings.INTEGRATIONS`` merged over these defaults.

Per-service dicts in ``SERVICES`` override the global ``TIMEOUT``, ``RETRY``, ``BREAKER`` and
``MAX_RESPONSE_BYTES`` key by key; class attributes of a ``ServiceClient`` override both. A
service's own keys also include ``BASE_URL``, ``ALLOWED_ORIGINS`` (other origins its absolute
URLs may name; they get no credentials) and vendor options such as Stripe's ``API_KEY``.

``integrations_settings`` (a ``tether.conf.AppSettings``) is the app's only settings state: read
at call time, reloaded on ``setting_changed`` (``override_settings``), and its ``reload()`` also
empties the per-service merges ``service_settings`` keeps.

Credentials are ``SecretStr`` (a ``str`` whose ``repr`` hides it) from the merge on: every string
under a key named like one (``API_KEY``, ``CLIENT_SECRET``, ``ACCESS_TOKEN``, ``PASSWORD``...;
``tether.conf.SECRET_KEY_NAME``), so that no settings dict in a frame shows it in an error
report.
"""

from __future__ import annotations

from typing import Any

from django.views.decorators.debug import sensitive_variables

from tether.conf import SECRET_VARIABLES, AppSettings, deep_merge

__all__ = ["DEFAULTS", "integrations_settings", "service_settings"]

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
        # A call slower than this many seconds counts as a failure even when it succeeds
        # (Resilience4j's slow-call rate). None = off.
        "SLOW_CALL_THRESHOLD": None,
    },
    # The largest answer (bytes, after decompression) a call reads; larger ones are refused.
    "MAX_RESPONSE_BYTES": 10 * 1024 * 1024,
    # Policies shared by every process, kept in Redis at REDIS_URL (all off unless set; see
    # docs/integrations/policies.md). RATE_LIMIT: "100/s" (also /m, /h) or
    # {"RATE": "100/s", "BURST": 10}: calls over it wait for their slot within the deadline,
    # else raise RateLimited. SHARED_COOLDOWN: a 429 (or 503 with Retry-After) stops every
    # process calling the service until the time it gives (at most MAX_RETRY_AFTER).
    "REDIS_URL": None,
    # Seconds a Redis command may take (connect, send, answer) before the shared policies fail
    # open for this call (and for the next REDIS_RETRY_INTERVAL seconds of this process).
    "REDIS_TIMEOUT": 0.25,
    "RATE_LIMIT": None,
    "SHARED_COOLDOWN": False,
    # Bulkhead: at most this many calls of a service in flight in each process
    # (MAX_CONCURRENCY), and across the fleet (CLUSTER_MAX_CONCURRENCY, Redis, with leases that
    # expire so a killed process gives its places back). Excess calls wait within their
    # deadline, else raise BulkheadFull. None = no limit.
    "MAX_CONCURRENCY": None,
    "CLUSTER_MAX_CONCURRENCY": None,
    # Retry budget across the fleet: {"RATIO": 0.2, "MIN_RETRIES_PER_SECOND": 1.0,
    # "WINDOW": 10.0} lets retries reach 20 % of first attempts (+1/s) over the last 10 s;
    # beyond it a failure is raised without retrying. None = off.
    "RETRY_BUDGET": None,
    # Client-side adaptive throttling (Google SRE), in each process: {"K": 2.0, "WINDOW": 120}
    # rejects an attempt locally (Throttled) with probability
    # max(0, (requests - K * accepts) / (requests + 1)) over the last WINDOW seconds. None = off.
    "ADAPTIVE_THROTTLE": None,
    "SERVICES": {},
    # Operator API (integrations.api): DRF permission and throttle classes, dotted paths or
    # classes. Model permissions (view/change on CircuitBreaker) are always checked on top.
    "API_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "API_THROTTLE_CLASSES": [],
}

integrations_settings = AppSettings("INTEGRATIONS", DEFAULTS)

#: The global keys a service's own entry in ``SERVICES`` may override.
SERVICE_KEYS = (
    "TIMEOUT",
    "RETRY",
    "BREAKER",
    "MAX_RESPONSE_BYTES",
    "RATE_LIMIT",
    "SHARED_COOLDOWN",
    "MAX_CONCURRENCY",
    "CLUSTER_MAX_CONCURRENCY",
    "RETRY_BUDGET",
    "ADAPTIVE_THROTTLE",
)


#: service -> its merged settings, for the current ``integrations_settings`` (emptied by its
#: ``reload()``).
_by_service: dict[str, dict[str, Any]] = {}
integrations_settings.register_cache(_by_service.clear)


@sensitive_variables(*SECRET_VARIABLES)
def service_settings(service: str) -> dict[str, Any]:
    """The merged settings for one service: global policy dicts overridden by its own entry.

    The returned dict is kept and shared by every caller until the settings change: read it,
    never mutate it (copy it first if you must).
    """
    try:
        return _by_service[service]
    except KeyError:
        pass
    merged = integrations_settings.merged
    own = merged["SERVICES"].get(service, {})
    base = {key: merged[key] for key in SERVICE_KEYS}
    result = deep_merge(base, own)
    integrations_settings.remember(_by_service, service, result, source=merged)
    return result
