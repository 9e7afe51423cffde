"""A project with the webhooks app and not integrations (``tests/test_apps_alone.py``).

The test settings (their PostgreSQL server, Redis database and Celery app), with only Django's
contrib apps, ``rest_framework`` and ``webhooks`` installed, and a URLconf that mounts what
webhooks offers. ``TETHER_DB_NAME`` names the database (one of the test's own). Tasks run
eagerly, so that nothing this project publishes waits in the suite's broker queue.
"""

from tests.settings import *  # noqa: F403

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "webhooks",
]
ROOT_URLCONF = "tests.urls_webhooks_only"
CELERY_TASK_ALWAYS_EAGER = True
