"""Settings for the webhooks app: ``settings.WEBHOOKS`` merged key by key over ``DEFAULTS``,
and the rules their values must follow.

``webhooks_settings`` (a ``tether.conf.AppSettings``) is the app's only settings state: read at
call time (never at import), it reloads on ``setting_changed``, so ``override_settings`` works,
and its ``reload()`` also empties every cache derived from it (built providers, the Celery
eager flag, the database statements). Credentials in it are ``SecretStr`` (``tether.conf``).

A wrong value is a ``ConfigProblem``: the system checks report it (``webhooks.checks``), and
using it raises the same problem as a ``WebhookConfigurationError`` naming the exact key. The
endpoints' rules live with their providers (``Provider.config_problems``); the processing
settings' rules live here (``PROCESSING_SETTINGS``, the check ``webhooks.E008``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tether.conf import AppSettings

from .exceptions import WebhookConfigurationError

DEFAULTS: dict[str, Any] = {
    "ENDPOINTS": {},
    "MAX_BODY_BYTES": 1_048_576,
    "TOLERANCE": 300,
    "MAX_ATTEMPTS": 8,
    "RETRY_BASE_DELAY": 10,
    "RETRY_MAX_DELAY": 3600,
    # What carries processing tasks: "celery" (webhooks.tasks) or "django", Django's Tasks
    # through the project's TASKS backend (webhooks.djtasks; docs/webhooks/django-tasks.md).
    "TASK_BACKEND": "celery",
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
    # PostgreSQL with psycopg 3 (webhooks.storage). False behind a pooler that cannot keep prepared
    # statements (PgBouncer before 1.21 in transaction mode).
    "PREPARED_STATEMENTS": True,
    # Which receive view serves webhooks.urls: "auto" (the async one when the request comes
    # through Django's ASGI handler, the sync one under WSGI), "sync" or "async" (webhooks.views).
    "RECEIVE_VIEW": "auto",
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


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the ``WEBHOOKS`` settings (an endpoint's, or a global one).

    ``webhooks.checks`` turns it into a ``checks.Error`` with id ``webhooks.<code>`` (a
    ``checks.Warning`` for a ``W`` code, from ``Provider.config_warnings``); ``get_provider``
    and ``processing_setting`` raise an error's as a ``WebhookConfigurationError``. ``key`` is
    the exact setting, e.g. ``WEBHOOKS["ENDPOINTS"]["stripe"]["SECRETS"]``. Never includes a
    secret's value.
    """

    code: str
    key: str
    message: str
    hint: str = ""

    def as_exception(self) -> WebhookConfigurationError:
        text = f"{self.key}: {self.message}"
        if self.hint:
            text = f"{text} ({self.hint})"
        return WebhookConfigurationError(text)


def is_number(
    value: Any,
    *,
    integer: bool = False,
    above: float | None = None,
    at_least: float | None = None,
    at_most: float | None = None,
) -> bool:
    """Whether ``value`` is a number (an ``int`` when ``integer``), never a bool, greater than
    ``above``, at least ``at_least`` and at most ``at_most`` when they are given (NaN and
    infinities are within no range that has a bound on their side).

    The one rule for numeric settings: ``TOLERANCE``/``MAX_BODY_BYTES`` (through
    ``providers.base.limit_problem``, global and per endpoint) and the processing settings
    (``PROCESSING_SETTINGS``).
    """
    kinds = (int,) if integer else (int, float)
    if not isinstance(value, kinds) or isinstance(value, bool):
        return False
    if above is not None and not value > above:
        return False
    if at_most is not None and not value <= at_most:
        return False
    return at_least is None or value >= at_least


# -- the processing settings' rules (webhooks.E008) --------------------------------------------

#: A rule: whether a value is valid.
Rule = Callable[[Any], bool]


def _number(
    *, integer: bool = False, at_least: float, at_most: float, nullable: bool = False
) -> Rule:
    """A rule for a number setting (``is_number``), None allowed if ``nullable``."""
    return lambda value: (
        (nullable and value is None)
        or is_number(value, integer=integer, at_least=at_least, at_most=at_most)
    )


_DEFAULT_HINT = "Leave it out to use the default."

#: The largest number of seconds a processing setting may hold: 30 days. Every one of them ends
#: up in a ``timedelta`` or a Celery countdown; a bound keeps those finite and meaningful.
MAX_SETTING_SECONDS = 30 * 86_400


def _seconds(*, nullable: bool = False) -> tuple[Rule, str, str]:
    what = f"a number of seconds from 0 to {MAX_SETTING_SECONDS:,} (30 days)"
    return (_number(at_least=0, at_most=MAX_SETTING_SECONDS, nullable=nullable),
            what + (", or None" if nullable else ""), _DEFAULT_HINT)  # fmt: skip


#: The values of ``TASK_BACKEND``: what carries the processing tasks.
TASK_BACKENDS = ("celery", "django")

#: key -> (rule, what it must be, hint): the one table the E008 check and processing read.
PROCESSING_SETTINGS: dict[str, tuple[Rule, str, str]] = {
    "MAX_ATTEMPTS": (_number(integer=True, at_least=1, at_most=1000),
                     "a whole number of attempts from 1 to 1,000", _DEFAULT_HINT),
    "RETRY_BASE_DELAY": _seconds(),
    "RETRY_MAX_DELAY": _seconds(),
    "STUCK_AFTER": _seconds(),
    "RETENTION_DAYS": (_number(at_least=0, at_most=36_500),
                       "a number of days from 0 to 36,500", _DEFAULT_HINT),
    "REQUEUE_RECEIVED_AFTER": _seconds(),
    "REQUEUE_MAX_INTERVAL": _seconds(),
    "DISPATCH_INTERVAL": (_number(at_least=0, at_most=60, nullable=True),
                          "a number of seconds from 0 to 60, or None", _DEFAULT_HINT),
    "DISPATCH_BATCH_SIZE": (_number(integer=True, at_least=1, at_most=10_000),
                            "a whole number of events from 1 to 10,000", _DEFAULT_HINT),
    "DISPATCH_SHUTDOWN_TIMEOUT": (_number(at_least=0, at_most=600),
                                  "a number of seconds from 0 to 600", _DEFAULT_HINT),
    "TASK_BACKEND": (lambda value: isinstance(value, str) and value in TASK_BACKENDS,
                     'one of "celery" or "django"',
                     '"celery" (the default) publishes Celery tasks; "django" enqueues Django '
                     "Tasks through the TASKS setting's backend."),
    "TASK_QUEUE": (lambda value: value is None or (isinstance(value, str) and bool(value.strip())),
                   "a queue name or None",
                   "None sends processing tasks to the default queue (Celery's, or Django "
                   "Tasks' \"default\")."),
    "PREPARED_STATEMENTS": (lambda value: isinstance(value, bool), "True or False",
                            "False behind a pooler that drops them."),
    "RECEIVE_VIEW": (lambda value: value in ("auto", "sync", "async"),
                     '"auto", "sync" or "async"',
                     '"auto" serves the async view under ASGI and the sync one under WSGI.'),
}  # fmt: skip


def _setting_problem(key: str) -> ConfigProblem | None:
    value = webhooks_settings[key]
    valid, expected, hint = PROCESSING_SETTINGS[key]
    if valid(value):
        return None
    return ConfigProblem("E008", f'WEBHOOKS["{key}"]', f"must be {expected}, not {value!r}.", hint)


def processing_config_problems() -> list[ConfigProblem]:
    """What is wrong with the processing settings (reported by the system check E008)."""
    return [problem for key in PROCESSING_SETTINGS if (problem := _setting_problem(key))]


def task_backend() -> str:
    """``TASK_BACKEND``, read without validation on the enqueue path (once per delivery): a
    value other than ``"django"`` is taken as ``"celery"``, and reported by the check E008."""
    return "django" if webhooks_settings["TASK_BACKEND"] == "django" else "celery"


def processing_setting(key: str) -> Any:
    """A processing setting, checked: raises ``WebhookConfigurationError`` naming the key."""
    problem = _setting_problem(key)
    if problem is not None:
        raise problem.as_exception()
    return webhooks_settings[key]
