"""System checks for ``settings.INTEGRATIONS``: a bad value is reported before the first call.

- ``integrations.E001``: ``INTEGRATIONS`` is not a dict.
- ``integrations.E002``: an unknown top-level key.
- ``integrations.E003``: a policy section (``TIMEOUT``, ``RETRY``, ``BREAKER``, global or per
  service) is not a dict.
- ``integrations.E004``: an unknown key in a policy section.
- ``integrations.E005``: a policy value of the wrong type.
- ``integrations.E006``: a policy value out of range (a negative timeout, zero attempts...).
- ``integrations.E007``: ``SERVICES`` is not a dict of dicts.
- ``integrations.E008``: a service's ``BASE_URL`` is not an absolute http(s) URL.
- ``integrations.E009``: a service's ``ALLOWED_ORIGINS`` is not a list of http(s) origins
  (``scheme://host[:port]``, nothing after it).
- ``MAX_RESPONSE_BYTES`` (global or per service) that is not an integer is ``E005``, one below 1
  is ``E006``.
- ``integrations.E010``: ``REDIS_URL`` is not a ``redis://``, ``rediss://`` or ``unix://`` URL
  (the message never shows the URL: it may hold a password), or ``REDIS_TIMEOUT`` is not a
  number of seconds greater than 0.
- ``integrations.E011``: a ``RATE_LIMIT`` (global or per service) that does not parse
  (``"100/s"``, or ``{"RATE": "100/s", "BURST": 10}``), a ``SHARED_COOLDOWN`` that is not
  True or False, a ``MAX_CONCURRENCY`` / ``CLUSTER_MAX_CONCURRENCY`` that is not None or an
  integer from 1 to 100000, or a ``RETRY_BUDGET`` that is not None or a dict of ``RATIO``
  (0..10), ``MIN_RETRIES_PER_SECOND`` (0 or more), ``WINDOW`` (0.1..3600 s).
- ``integrations.E012``: a shared policy (``RATE_LIMIT``, ``SHARED_COOLDOWN``,
  ``CLUSTER_MAX_CONCURRENCY``, ``RETRY_BUDGET``) is on and ``REDIS_URL`` is not set.
- ``integrations.E013``: an ``ADAPTIVE_THROTTLE`` (global or per service) that is not None or
  a dict of ``K`` (a number greater than 1, at most 10) and ``WINDOW`` (seconds, greater than 0,
  at most 3600), finite numbers and not booleans.
- ``integrations.W001``: ``RETRY`` has ``MAX_DELAY`` below ``BASE_DELAY`` (the cap wins).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from tether.conf import unknown_key_hint

from .conf import DEFAULTS
from .throttle import AdaptiveThrottle

POLICY_SECTIONS = ("TIMEOUT", "RETRY", "BREAKER")


@dataclass(frozen=True)
class _Rule:
    kind: str  # "number", "int", "bool", "rate"
    check: Callable[[Any], bool]
    expected: str


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


_POSITIVE = _Rule("number", lambda v: v > 0, "a number of seconds greater than 0")
_NON_NEGATIVE = _Rule("number", lambda v: v >= 0, "a number of seconds, 0 or more")
_AT_LEAST_ONE = _Rule("int", lambda v: v >= 1, "an integer, 1 or more")

RULES: dict[str, dict[str, _Rule]] = {
    "TIMEOUT": {"CONNECT": _POSITIVE, "READ": _POSITIVE, "WRITE": _POSITIVE, "POOL": _POSITIVE},
    "RETRY": {
        "MAX_ATTEMPTS": _AT_LEAST_ONE,
        "BASE_DELAY": _NON_NEGATIVE,
        "MAX_DELAY": _NON_NEGATIVE,
        "DEADLINE": _POSITIVE,
    },
    "BREAKER": {
        "FAILURE_THRESHOLD": _AT_LEAST_ONE,
        "RESET_TIMEOUT": _POSITIVE,
        "HALF_OPEN_MAX_CALLS": _AT_LEAST_ONE,
        "CACHE_TTL": _NON_NEGATIVE,
        "FAIL_OPEN_ON_DB_ERROR": _Rule("bool", lambda v: True, "True or False"),
        "FAILURE_RATE": _Rule("rate", lambda v: 0 < v <= 1, "None or a number in (0, 1]"),
        "MINIMUM_CALLS": _AT_LEAST_ONE,
        "WINDOW": _POSITIVE,
        "SLOW_CALL_THRESHOLD": _Rule(
            "optional_number", lambda v: v > 0, "None or a number of seconds greater than 0"
        ),
    },
}

_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "number": _number,
    "int": _integer,
    "bool": lambda v: isinstance(v, bool),
    "rate": lambda v: v is None or _number(v),
    "optional_number": lambda v: v is None or _number(v),
}

#: Keys of a service (or of ``INTEGRATIONS``) whose value is a shared policy.
SHARED_POLICY_KEYS = ("RATE_LIMIT", "SHARED_COOLDOWN")


def _check_shared_policies(entry: Mapping[str, Any], where: str) -> list[CheckMessage]:
    """``RATE_LIMIT``, ``SHARED_COOLDOWN``, ``RETRY_BUDGET``, the bulkheads and
    ``ADAPTIVE_THROTTLE`` of ``INTEGRATIONS`` or of one service."""
    from django.core.exceptions import ImproperlyConfigured

    from .policies import RateLimit, RetryBudget

    errors: list[CheckMessage] = []
    parsed = (
        ("RATE_LIMIT", RateLimit.parse,
         'For example "100/s", "6000/m", or {"RATE": "80/s", "BURST": 10}.'),
        ("RETRY_BUDGET", RetryBudget.parse,
         'For example {"RATIO": 0.2, "MIN_RETRIES_PER_SECOND": 1, "WINDOW": 10}.'),
    )  # fmt: skip
    for key, parse, hint in parsed:
        if key not in entry:
            continue
        try:
            parse(entry[key], f'{where}["{key}"]')
        except ImproperlyConfigured as exc:
            errors.append(Error(str(exc), hint=hint, id="integrations.E011"))
    for name in ("MAX_CONCURRENCY", "CLUSTER_MAX_CONCURRENCY"):
        value = entry.get(name)
        if value is not None and not (_integer(value) and 1 <= value <= 100_000):
            errors.append(
                Error(
                    f'{where}["{name}"] must be None or an integer from 1 to 100000.',
                    hint="The most calls of the service in flight at once.",
                    id="integrations.E011",
                )
            )
    if "ADAPTIVE_THROTTLE" in entry:
        try:
            AdaptiveThrottle.parse(entry["ADAPTIVE_THROTTLE"], f'{where}["ADAPTIVE_THROTTLE"]')
        except ImproperlyConfigured as exc:
            errors.append(
                Error(
                    str(exc),
                    hint='None (off), or for example {"K": 2.0, "WINDOW": 120}.',
                    id="integrations.E013",
                )
            )
    if "SHARED_COOLDOWN" in entry and not isinstance(entry["SHARED_COOLDOWN"], bool):
        errors.append(
            Error(
                f'{where}["SHARED_COOLDOWN"] must be True or False.',
                hint="True: a 429 from the vendor holds every process's calls (cool-down).",
                id="integrations.E011",
            )
        )
    return errors


def _uses_shared_policies(entry: Mapping[str, Any]) -> bool:
    return (
        entry.get("RATE_LIMIT") is not None
        or entry.get("SHARED_COOLDOWN") is True
        or entry.get("CLUSTER_MAX_CONCURRENCY") is not None
        or entry.get("RETRY_BUDGET") is not None
    )


def _check_redis(user: Mapping[str, Any]) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    url = user.get("REDIS_URL")
    if url is not None:
        scheme = urlsplit(url).scheme if isinstance(url, str) else None
        if scheme not in ("redis", "rediss", "unix"):
            errors.append(
                Error(
                    'INTEGRATIONS["REDIS_URL"] must be a redis://, rediss:// or unix:// URL.',
                    hint='For example "redis://redis.internal:6379/2" (the URL is not shown: it '
                    "may hold a password).",
                    id="integrations.E010",
                )
            )
    timeout = user.get("REDIS_TIMEOUT", DEFAULTS["REDIS_TIMEOUT"])
    if not _number(timeout) or not 0 < timeout <= 60:
        errors.append(
            Error(
                'INTEGRATIONS["REDIS_TIMEOUT"] must be a number of seconds in (0, 60].',
                hint=f"The default is {DEFAULTS['REDIS_TIMEOUT']!r}.",
                id="integrations.E010",
            )
        )
    if not url:
        services = user.get("SERVICES", {})
        entries = (
            [user, *(e for e in services.values() if isinstance(e, Mapping))]
            if isinstance(services, Mapping)
            else [user]
        )
        if any(_uses_shared_policies(entry) for entry in entries):
            errors.append(
                Error(
                    "A shared policy (RATE_LIMIT, SHARED_COOLDOWN, CLUSTER_MAX_CONCURRENCY, "
                    'RETRY_BUDGET) is on but INTEGRATIONS["REDIS_URL"] is not set.',
                    hint="Set REDIS_URL to the Redis every process of the fleet shares.",
                    id="integrations.E012",
                )
            )
    return errors


def _check_section(section: str, values: Any, where: str) -> list[CheckMessage]:
    errors: list[CheckMessage] = []
    if not isinstance(values, Mapping):
        return [
            Error(
                f"{where} must be a dict, not {type(values).__name__}.",
                hint=f"For example {where} = {dict(DEFAULTS[section])!r}.",
                id="integrations.E003",
            )
        ]
    rules = RULES[section]
    for name, value in values.items():
        rule = rules.get(name)
        if rule is None:
            errors.append(
                Error(
                    f"{where} has an unknown key {name!r}.",
                    hint=unknown_key_hint(str(name), rules),
                    id="integrations.E004",
                )
            )
        elif not _TYPE_CHECKS[rule.kind](value):
            errors.append(
                Error(
                    f"{where}[{name!r}] must be {rule.expected}, not {type(value).__name__}.",
                    hint="Durations are seconds, as an int or a float.",
                    id="integrations.E005",
                )
            )
        elif value is not None and not rule.check(value):
            errors.append(
                Error(
                    f"{where}[{name!r}] is {value!r}; it must be {rule.expected}.",
                    hint=f"The default is {DEFAULTS[section].get(name, 'unset')!r}.",
                    id="integrations.E006",
                )
            )
    if section == "RETRY":
        base, cap = values.get("BASE_DELAY"), values.get("MAX_DELAY")
        if _number(base) and _number(cap) and cap < base:
            errors.append(
                Warning(
                    f"{where}['MAX_DELAY'] ({cap!r}) is below ['BASE_DELAY'] ({base!r}): every "
                    "wait is capped at MAX_DELAY.",
                    hint="Raise MAX_DELAY or lower BASE_DELAY.",
                    id="integrations.W001",
                )
            )
    return errors


def _check_max_response_bytes(value: Any, where: str) -> list[CheckMessage]:
    if not _integer(value):
        return [
            Error(
                f"{where} must be an integer number of bytes, not {type(value).__name__}.",
                hint="For example 10 * 1024 * 1024 (10 MiB, the default).",
                id="integrations.E005",
            )
        ]
    if value < 1:
        return [
            Error(
                f"{where} is {value!r}; it must be 1 or more.",
                hint=f"The default is {DEFAULTS['MAX_RESPONSE_BYTES']!r} (10 MiB).",
                id="integrations.E006",
            )
        ]
    return []


def _is_origin(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and "@" not in parts.netloc
        and parts.path in ("", "/")
        and not parts.query
        and not parts.fragment
    )


def _check_allowed_origins(value: Any, where: str) -> list[CheckMessage]:
    if isinstance(value, list | tuple) and all(_is_origin(origin) for origin in value):
        return []
    return [
        Error(
            f"{where} must be a list of http(s) origins (scheme://host[:port]).",
            hint='For example ["https://files.example.com"]; requests there get no credentials.',
            id="integrations.E009",
        )
    ]


def _check_service(name: str, entry: Any) -> list[CheckMessage]:
    where = f'INTEGRATIONS["SERVICES"][{name!r}]'
    if not isinstance(entry, Mapping):
        return [
            Error(
                f"{where} must be a dict, not {type(entry).__name__}.",
                hint='For example {"BASE_URL": "https://api.example.com", "RETRY": {...}}.',
                id="integrations.E007",
            )
        ]
    errors: list[CheckMessage] = []
    for section in POLICY_SECTIONS:
        if section in entry:
            errors += _check_section(section, entry[section], f'{where}["{section}"]')
    if "MAX_RESPONSE_BYTES" in entry:
        errors += _check_max_response_bytes(
            entry["MAX_RESPONSE_BYTES"], f'{where}["MAX_RESPONSE_BYTES"]'
        )
    errors += _check_shared_policies(entry, where)
    if "ALLOWED_ORIGINS" in entry:
        errors += _check_allowed_origins(entry["ALLOWED_ORIGINS"], f'{where}["ALLOWED_ORIGINS"]')
    base_url = entry.get("BASE_URL")
    if base_url not in (None, ""):  # empty = not set (e.g. an unset environment variable)
        parts = urlsplit(base_url) if isinstance(base_url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            errors.append(
                Error(
                    f'{where}["BASE_URL"] must be an absolute http(s) URL.',
                    hint='For example "https://api.example.com/v1".',
                    id="integrations.E008",
                )
            )
    return errors


@register()
def check_integrations_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    user = getattr(settings, "INTEGRATIONS", None)
    if user is None:
        return []
    if not isinstance(user, Mapping):
        return [
            Error(
                f"INTEGRATIONS must be a dict, not {type(user).__name__}.",
                hint="Set INTEGRATIONS = {} (or leave it out) to use the defaults.",
                id="integrations.E001",
            )
        ]
    errors: list[CheckMessage] = []
    for key in user:
        if key not in DEFAULTS:
            errors.append(
                Error(
                    f"INTEGRATIONS has an unknown key {key!r}.",
                    hint=unknown_key_hint(str(key), DEFAULTS),
                    id="integrations.E002",
                )
            )
    for section in POLICY_SECTIONS:
        if section in user:
            errors += _check_section(section, user[section], f'INTEGRATIONS["{section}"]')
    if "MAX_RESPONSE_BYTES" in user:
        errors += _check_max_response_bytes(
            user["MAX_RESPONSE_BYTES"], 'INTEGRATIONS["MAX_RESPONSE_BYTES"]'
        )
    errors += _check_shared_policies(user, "INTEGRATIONS")
    errors += _check_redis(user)
    services = user.get("SERVICES", {})
    if not isinstance(services, Mapping):
        errors.append(
            Error(
                f'INTEGRATIONS["SERVICES"] must be a dict, not {type(services).__name__}.',
                hint='Map each service name to its dict: {"rates": {"BASE_URL": ...}}.',
                id="integrations.E007",
            )
        )
    else:
        for name, entry in services.items():
            errors += _check_service(str(name), entry)
    return errors
