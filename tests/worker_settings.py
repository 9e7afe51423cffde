"""Settings of the Celery worker that worker tests start (see ``tests/celery_worker.py``).

The test settings, plus:
- the app ``tests.worker_app``, whose ``webhooks.py`` holds the handlers worker tests drive;
- ``TETHER_WORKER_WEBHOOKS``: a JSON object merged into ``WEBHOOKS`` (``override_settings`` in
  the test process does not reach a worker subprocess, so small retry delays travel this way);
- ``TETHER_WORKER_BROKER_URL``: another broker URL, for tests of a broker that is down.
"""

import json
import os

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS, WEBHOOKS
from tether.conf import deep_merge

INSTALLED_APPS = [*INSTALLED_APPS, "tests.worker_app"]
WEBHOOKS = deep_merge(WEBHOOKS, json.loads(os.environ.get("TETHER_WORKER_WEBHOOKS") or "{}"))
if os.environ.get("TETHER_WORKER_BROKER_URL"):
    CELERY_BROKER_URL = os.environ["TETHER_WORKER_BROKER_URL"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"webhooks": {"handlers": ["console"], "level": "INFO"}},
}
