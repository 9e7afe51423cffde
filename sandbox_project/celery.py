import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sandbox_project.settings")

app = Celery("sandbox_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
