import os
from pathlib import Path

from celery import Celery
from celery.signals import worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sandbox_project.settings")

app = Celery("sandbox_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
def _tell_run_sh(**kwargs):
    """Sandbox only: ``run.sh`` prints its banner once the worker consumes, which it learns from
    this file (``SANDBOX_WORKER_READY_FILE``); not part of a project's Celery set-up."""
    ready_file = os.environ.get("SANDBOX_WORKER_READY_FILE")
    if ready_file:
        Path(ready_file).touch()
