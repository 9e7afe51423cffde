"""Django's Tasks API, from wherever this Django has it: the one place that chooses.

Django 6 ships it as ``django.tasks``; on Django 5.2 the ``django-tasks`` backport (PyPI
``django-tasks``, 0.12+) has the same API as ``django_tasks``. Both read the project's ``TASKS``
setting. Import this module only when Django's Tasks are wanted: with neither available it raises
``ImportError`` saying what to install (``pip install "django-tether[tasks]"``, which also brings
the database backend, ``django-tasks-db``).

What is re-exported is what django-tether uses: ``task`` (the decorator), ``task_backends`` (the
configured backends, by alias), ``DEFAULT_TASK_BACKEND_ALIAS``, ``ImmediateBackend`` (the backend
that runs a task as it is enqueued, as eager Celery does), ``InvalidTaskBackend`` (a ``TASKS``
backend that cannot be loaded; ``InvalidTaskBackendError`` in the backport), and ``SOURCE``, the
module the API was taken from.
"""

from __future__ import annotations

from importlib.util import find_spec

__all__ = [
    "DEFAULT_TASK_BACKEND_ALIAS",
    "SOURCE",
    "ImmediateBackend",
    "InvalidTaskBackend",
    "task",
    "task_backends",
]

#: What to install when neither is available.
INSTALL_HINT = (
    "Django's Tasks need Django 6 (django.tasks) or, on Django 5.2, the django-tasks backport: "
    'pip install "django-tether[tasks]" (it also installs the database backend, django-tasks-db).'
)

if find_spec("django.tasks") is not None:  # Django 6
    from django.tasks import DEFAULT_TASK_BACKEND_ALIAS, task, task_backends
    from django.tasks.backends.immediate import ImmediateBackend
    from django.tasks.exceptions import InvalidTaskBackend

    #: The module the API comes from.
    SOURCE = "django.tasks"
else:  # Django 5.2: the backport
    try:
        from django_tasks import (  # type: ignore[assignment,no-redef,unused-ignore]
            DEFAULT_TASK_BACKEND_ALIAS,
            task,
            task_backends,
        )
        from django_tasks.backends.immediate import (  # type: ignore[assignment,no-redef,unused-ignore]
            ImmediateBackend,
        )
        from django_tasks.exceptions import (  # type: ignore[assignment,no-redef,unused-ignore]
            InvalidTaskBackendError as InvalidTaskBackend,
        )
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc

    SOURCE = "django_tasks"
