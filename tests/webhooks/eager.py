"""Celery's ``task_always_eager`` as configured, and changed the way no signal reports."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings

from webhooks.conf import webhooks_settings


@contextmanager
def configured_celery_app() -> Iterator[Any]:
    """The processing tasks' Celery app without a run-time ``task_always_eager`` (another test
    may have left one in ``conf.changes``), so that its configured value decides; whatever was
    there is put back afterwards, and ``webhooks_settings`` reloaded both times."""
    from webhooks.tasks import process_event

    app = process_event.app
    missing = object()
    saved = app.conf.changes.pop("task_always_eager", missing)
    webhooks_settings.reload()
    try:
        yield app
    finally:
        app.conf.changes.pop("task_always_eager", None)
        if saved is not missing:
            app.conf.changes["task_always_eager"] = saved
        webhooks_settings.reload()


@contextmanager
def eager_setting_set_quietly(value: bool) -> Iterator[None]:
    """Set ``CELERY_TASK_ALWAYS_EAGER`` without ``setting_changed`` (a plain assignment on
    ``django.conf.settings``): Celery's configuration, which reads the Django settings live,
    sees it at once, while a value derived from it and kept sees it only after a reload. The
    setting is removed afterwards (the test settings leave it out)."""
    settings.CELERY_TASK_ALWAYS_EAGER = value
    try:
        yield
    finally:
        del settings.CELERY_TASK_ALWAYS_EAGER
