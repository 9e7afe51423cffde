"""A project with the integrations app and not webhooks (``tests/test_apps_alone.py``).

The test settings (their PostgreSQL server and Redis database), with only Django's contrib apps,
``rest_framework`` and ``integrations`` installed, and a URLconf that mounts what integrations
offers. ``TETHER_DB_NAME`` names the database (one of the test's own).
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
    "integrations",
]
ROOT_URLCONF = "tests.urls_integrations_only"
