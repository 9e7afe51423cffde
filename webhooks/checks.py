"""System checks for ``settings.WEBHOOKS``: a misconfigured endpoint is reported at start-up
(``manage.py check``, ``runserver``, ``migrate``), before the first delivery is refused.

- ``webhooks.E001``: an endpoint's ``PROVIDER`` is missing, unknown, not importable, or not a
  ``webhooks.providers.Provider`` subclass.
- ``webhooks.E002``: an endpoint has no ``SECRETS`` (missing or an empty list).
- ``webhooks.E003``: an endpoint has an empty (or blank) secret.
- ``webhooks.E004``: an ``hmac`` endpoint misses a required option (``HEADER``, ``EVENT_ID``,
  ``EVENT_TYPE``; ``TIMESTAMP_HEADER`` when ``SIGNED_PAYLOAD`` signs the timestamp).
- ``webhooks.E005``: a value of the wrong type: ``ENDPOINTS`` or an endpoint not a dict,
  ``SECRETS`` not a list of strings, ``TOLERANCE``/``MAX_BODY_BYTES`` (global or per endpoint)
  not a positive number, an ``hmac`` option not a string.
- ``webhooks.E006``: an invalid option value (an ``hmac`` ``ALGORITHM``, ``ENCODING``,
  ``SIGNED_PAYLOAD``, ``EVENT_ID``/``EVENT_TYPE`` location; a Standard Webhooks secret that is
  not strict base64, after an optional ``whsec_``, of at least 24 bytes).
- ``webhooks.E007``: an endpoint name that cannot be a URL path segment.
- ``webhooks.W001``: a handler registered with ``@on`` for an endpoint that is not configured
  (a typo would otherwise never run).
- ``webhooks.E010``: an unknown top-level key of ``WEBHOOKS`` (a misspelt setting would
  otherwise be ignored without a word), with the closest known key.
- ``webhooks.W005``: a handler ordered (``ordering_key``) without ``ordering_version`` on an
  endpoint whose deliveries carry no occurred time (GitHub; an ``hmac`` endpoint without
  ``TIMESTAMP_HEADER``): its version would be missing, and each of its runs would fail.
- ``webhooks.W002``: an ``hmac`` endpoint relies on something outside what is signed: its
  ``EVENT_ID`` comes from a header and only the body is signed (a delivery re-sent under a new
  id is recognised only by its signed content, while the original is stored), or its
  ``TIMESTAMP_HEADER`` is checked but ``SIGNED_PAYLOAD`` is ``"{body}"`` (the tolerance then
  refuses no replay). An id from a header with a signed timestamp is not warned about: within
  ``TOLERANCE`` a resend is a replay of the same signed content, after it the timestamp is stale.
  The rules live in ``Provider.config_warnings``.
- ``webhooks.W003``: with ``TASK_BACKEND`` ``"celery"`` (the default), the processing tasks
  would not reach the project's broker: no Celery app
  is configured (the tasks would go through Celery's fallback app, which reads none of the
  ``CELERY_*`` settings), or the app reads no broker URL (Celery would publish to its built-in
  default, ``amqp://guest@localhost:5672//``). The hint names ``CELERY_BROKER_URL`` and
  ``app.config_from_object("django.conf:settings", namespace="CELERY")``, and the other
  carrier, ``WEBHOOKS["TASK_BACKEND"] = "django"``. Not checked with ``"django"``.
- ``webhooks.E009``: ``TASK_BACKEND`` is ``"django"`` but Django's Tasks cannot be used:
  neither Django 6's ``django.tasks`` nor the ``django-tasks`` backport is installed, the
  ``TASKS`` setting's default backend cannot be loaded, or ``TASK_QUEUE`` is not one of that
  backend's ``QUEUES``.
- ``webhooks.W004``: ``TASK_BACKEND`` is ``"django"`` and the default ``TASKS`` backend cannot
  run a task later (``supports_defer`` is False, e.g. the ``ImmediateBackend``): retries are
  not scheduled, and wait for the sweeper.
- ``webhooks.E008``: a processing setting out of range or of the wrong type (``MAX_ATTEMPTS``,
  ``RETRY_BASE_DELAY``, ``RETRY_MAX_DELAY``, ``STUCK_AFTER``, ``RETENTION_DAYS``, the
  ``DISPATCH_*`` and ``REQUEUE_RECEIVED_AFTER`` numbers, ``TASK_QUEUE``,
  ``PREPARED_STATEMENTS``); the rules live beside the settings, in
  ``webhooks.conf.PROCESSING_SETTINGS``.

The same rules raise ``WebhookConfigurationError`` (naming the exact key) when a misconfigured
endpoint is used anyway: they live in the providers (``Provider.config_problems``), not here.
Messages never quote a secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from tether.conf import unknown_key_hint

from .conf import (
    DEFAULTS,
    ConfigProblem,
    processing_config_problems,
    task_backend,
    webhooks_settings,
)
from .exceptions import WebhookConfigurationError
from .providers import BUILTIN_PROVIDERS, provider_class
from .providers.base import LIMIT_OPTIONS, endpoint_key, limit_problem

ENDPOINT_NAME = re.compile(r"^[A-Za-z0-9._~-]+$")


@register()
def check_webhook_endpoints(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    problems = [*webhook_config_problems(), *processing_config_problems()]
    return [_as_error(problem) for problem in problems]


@register()
def check_webhook_handlers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W001: handlers of endpoints that are not configured; W005: ordered handlers whose
    version would be the occurred time of an endpoint that gives none."""
    from .registry import handlers_of_unknown_endpoints, registry

    endpoints = webhooks_settings["ENDPOINTS"]
    if not isinstance(endpoints, Mapping):
        return []
    messages: list[CheckMessage] = [
        Warning(
            f"handler {_handler_name(r.handler)} is registered for the endpoint "
            f'{r.endpoint!r}, which is not in WEBHOOKS["ENDPOINTS"]: it will never run.',
            hint=f"Configured endpoints: {', '.join(sorted(map(str, endpoints))) or 'none'}.",
            obj="settings.WEBHOOKS",
            id="webhooks.W001",
        )
        for r in handlers_of_unknown_endpoints(endpoints)
    ]
    for r in registry:
        if r.ordering is None or r.ordering.version is not None or r.endpoint not in endpoints:
            continue
        config = endpoints[r.endpoint]
        if _endpoint_problems(r.endpoint, config):
            continue  # reported as errors
        if not provider_class(r.endpoint, config).gives_occurred_time(config):
            messages.append(
                Warning(
                    f"handler {_handler_name(r.handler)} is ordered by {r.ordering.key_label!r} "
                    f"on the endpoint {r.endpoint!r}, whose deliveries carry no occurred time, "
                    "and names no ordering_version: each of its runs will fail.",
                    hint="Name the version the payload carries, e.g. "
                    'ordering_version="pull_request.updated_at" (docs/webhooks/ordering.md).',
                    obj="settings.WEBHOOKS",
                    id="webhooks.W005",
                )
            )
    return messages


def _handler_name(handler: Any) -> str:
    return f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', handler)!s}"


@register()
def check_webhook_signed_content(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Warnings of usable endpoints whose scheme leaves the id or the time unsigned (W002)."""
    endpoints = webhooks_settings["ENDPOINTS"]
    if not isinstance(endpoints, Mapping):
        return []
    warnings: list[CheckMessage] = []
    for name, config in endpoints.items():
        if _endpoint_problems(name, config):
            continue  # reported as errors; its warnings would be about settings it lacks
        cls = provider_class(name, config)
        warnings.extend(
            Warning(
                f"{problem.key}: {problem.message}",
                hint=problem.hint or None,
                obj="settings.WEBHOOKS",
                id=f"webhooks.{problem.code}",
            )
            for problem in cls.config_warnings(name, config)
        )
    return warnings


def webhook_config_problems() -> list[ConfigProblem]:
    """Every problem of ``settings.WEBHOOKS``'s keys, endpoints and limits."""
    problems: list[ConfigProblem] = []
    user = getattr(settings, "WEBHOOKS", None) or {}
    if isinstance(user, Mapping):
        problems.extend(
            ConfigProblem(
                "E010",
                "WEBHOOKS",
                f"unknown key {key!r}: it is ignored.",
                unknown_key_hint(str(key), DEFAULTS),
            )
            for key in user
            if key not in DEFAULTS
        )
    for option in LIMIT_OPTIONS:
        problem = limit_problem(
            option,
            webhooks_settings[option],
            f'WEBHOOKS["{option}"]',
            hint="Leave it out to use the default.",
        )
        if problem is not None:
            problems.append(problem)
    endpoints = webhooks_settings["ENDPOINTS"]
    if not isinstance(endpoints, Mapping):
        problems.append(
            ConfigProblem(
                "E005",
                'WEBHOOKS["ENDPOINTS"]',
                "must be a dict mapping endpoint names to their settings.",
                'e.g. {"stripe": {"PROVIDER": "stripe", "SECRETS": [...]}}',
            )
        )
        return problems
    for name, config in endpoints.items():
        problems.extend(_endpoint_problems(name, config))
    return problems


def _endpoint_problems(name: Any, config: Any) -> list[ConfigProblem]:
    if not isinstance(name, str) or not ENDPOINT_NAME.match(name):
        return [
            ConfigProblem(
                "E007",
                f'WEBHOOKS["ENDPOINTS"][{name!r}]',
                f"endpoint name {name!r} cannot be used in the URL /webhooks/<endpoint>/.",
                "Use letters, digits, '-', '_', '.' or '~'.",
            )
        ]
    if not isinstance(config, Mapping):
        return [
            ConfigProblem(
                "E005",
                endpoint_key(name),
                f"endpoint {name!r} must be a dict of settings.",
                'e.g. {"PROVIDER": "stripe", "SECRETS": [os.environ["STRIPE_WEBHOOK_SECRET"]]}',
            )
        ]
    try:
        cls = provider_class(name, config)
    except WebhookConfigurationError as exc:
        return [
            ConfigProblem(
                "E001",
                endpoint_key(name, "PROVIDER"),
                f"endpoint {name!r}: {_without_key(str(exc))}",
                f"Use one of {', '.join(BUILTIN_PROVIDERS)} or the dotted path of a "
                "webhooks.providers.Provider subclass.",
            )
        ]
    return cls.config_problems(name, config)


def _as_error(problem: ConfigProblem) -> Error:
    return Error(
        f"{problem.key}: {problem.message}",
        hint=problem.hint or None,
        obj="settings.WEBHOOKS",
        id=f"webhooks.{problem.code}",
    )


def _without_key(message: str) -> str:
    # provider_class's messages start with the key, which the check already shows.
    return message.split(": ", 1)[1] if message.startswith("WEBHOOKS[") else message


#: Where Celery publishes when no broker is configured (its built-in default).
CELERY_DEFAULT_BROKER = "amqp://guest@localhost:5672//"


@register()
def check_celery_wiring(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W003: processing tasks would not reach the project's broker.

    The processing tasks are ``shared_task``s: they are published through Celery's current
    app, which is the project's when its package imports its ``celery.py`` (Celery's Django
    recipe: the app is made current, and with ``DJANGO_SETTINGS_MODULE`` set Celery's Django
    fix-up makes it the default of every thread). Without that, Celery makes up a fallback app
    (``celery._state``: named ``default``, no fix-ups, never current), which reads none of the
    ``CELERY_*`` settings; and an app that reads no broker URL publishes to
    ``CELERY_DEFAULT_BROKER``, whatever RabbitMQ listens there.
    """
    import warnings

    from celery.app import app_or_default

    if task_backend() == "django":
        return []  # no Celery: the tasks go through the TASKS backend (check_django_tasks)
    from django.conf import settings

    app = app_or_default()  # the current app, which a shared_task is published through
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the fallback's loader warns that it has no celeryconfig
        broker = app.conf.broker_write_url
    hint = (
        "Set CELERY_BROKER_URL and have your project's Celery app read it: in "
        '<project>/celery.py, app = Celery("<project>") and '
        'app.config_from_object("django.conf:settings", namespace="CELERY"); import that app '
        'in <project>/__init__.py. See docs/getting-started.md, "5. Celery". Or use Django\'s '
        'Tasks instead of Celery: WEBHOOKS["TASK_BACKEND"] = "django" '
        "(docs/webhooks/django-tasks.md)."
    )
    fallback = (  # Celery's fallback app (celery-types does not declare these two attributes)
        app.main == "default"
        and not app.set_as_current  # type: ignore[attr-defined]
        and not app.fixups  # type: ignore[attr-defined]
    )
    if fallback:
        message = (
            "No Celery app is configured: webhooks would publish its processing tasks through "
            "Celery's fallback app"
        )
        ignored = sorted(name for name in dir(settings) if name.startswith("CELERY_"))
        if ignored:
            names = ", ".join(ignored[:3]) + (", ..." if len(ignored) > 3 else "")
            message += f", which reads none of your CELERY_* settings ({names})"
        if not broker:
            message += f", to Celery's default broker {CELERY_DEFAULT_BROKER}"
        message += "."
    elif not broker:
        message = (
            f"The Celery app {app.main!r} has no broker URL: webhooks would publish its "
            f"processing tasks to Celery's default broker, {CELERY_DEFAULT_BROKER}, whatever "
            "listens there."
        )
    else:
        return []
    return [Warning(message, hint=hint, obj="celery", id="webhooks.W003")]


@register()
def check_django_tasks(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """E009 and W004: ``TASK_BACKEND = "django"`` with Django's Tasks unusable, or unable to
    defer a retry. Nothing to say with ``"celery"`` (or a value E008 reports)."""
    if webhooks_settings["TASK_BACKEND"] != "django":
        return []
    key = 'WEBHOOKS["TASK_BACKEND"]'
    try:
        from tether import tasks_api
    except ImportError as exc:
        return [_as_error(ConfigProblem("E009", key, f'is "django": {exc}'))]
    alias = tasks_api.DEFAULT_TASK_BACKEND_ALIAS
    try:
        backend = tasks_api.task_backends[alias]
    except Exception as exc:
        # The API's own error names the backend's dotted path and the import error; another
        # (raised by a backend's constructor) may quote its OPTIONS, a URL with a password: its
        # type only.
        why = type(exc).__name__
        if isinstance(exc, tasks_api.InvalidTaskBackend):
            why += f": {str(exc)[:200]}"
        return [
            _as_error(
                ConfigProblem(
                    "E009",
                    key,
                    f'is "django", and the TASKS setting\'s {alias!r} backend cannot be loaded '
                    f"({why}).",
                    'e.g. TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}} '
                    'with "django_tasks_db" in INSTALLED_APPS; see docs/webhooks/django-tasks.md.',
                )
            )
        ]
    queue = webhooks_settings["TASK_QUEUE"]
    queues = getattr(backend, "queues", None)
    if isinstance(queue, str) and queues and queue not in queues:
        return [
            _as_error(
                ConfigProblem(
                    "E009",
                    'WEBHOOKS["TASK_QUEUE"]',
                    f"{queue!r} is not one of the QUEUES of the TASKS setting's {alias!r} "
                    f"backend ({', '.join(sorted(map(str, queues)))}).",
                    f'Add it to TASKS["{alias}"]["QUEUES"], or leave TASK_QUEUE out.',
                )
            )
        ]
    if not getattr(backend, "supports_defer", False):
        return [
            Warning(
                f'{key}: is "django" and the TASKS setting\'s {alias!r} backend '
                f"({type(backend).__name__}) cannot run a task later: a failed attempt's retry "
                "is not scheduled, and waits for the sweeper (requeue_stuck_webhooks).",
                hint="Use a backend that supports run_after, e.g. "
                "django_tasks_db.DatabaseBackend (fine as it is in tests).",
                obj="settings.WEBHOOKS",
                id="webhooks.W004",
            )
        ]
    return []
