"""Settings of the chaos soak (``bench/chaos.py``): ``bench.settings`` (the sandbox on PostgreSQL,
DEBUG off) with the run's own broker, database and timings, one endpoint ``chaos``, the soak's
ledger app (``bench.ledger``: the handler and the table of its effects), and the app's warnings
and the sweeper's counts in each process's log.

Environment knobs, set by ``bench/chaos.py`` for every process it starts:
- ``TETHER_CHAOS_BROKER_URL``: the run's own ``redis-server`` (started on a free port, so that
  killing and emptying it touches no one else's; default ``redis://127.0.0.1:6390/0``).
- ``TETHER_CHAOS_DB``: the database the run creates, migrates and drops (default
  ``chaos_tether``); ``TETHER_PG_URL`` the server, as for the benchmarks.
- ``TETHER_CHAOS_JOURNAL``: the directory where handlers append a line per invocation.
- ``TETHER_CHAOS_TIMINGS``: JSON of the soak's short sweeper and retry timings (see
  ``SOAK_TIMINGS``), so that a smoke run can shorten them further.
"""

import json
import os

from bench.ledger import ENDPOINT
from bench.settings import *  # noqa: F403
from bench.settings import DATABASES, INSTALLED_APPS

DATABASES = {
    "default": {**DATABASES["default"], "NAME": os.environ.get("TETHER_CHAOS_DB", "chaos_tether")}
}

CELERY_BROKER_URL = os.environ.get("TETHER_CHAOS_BROKER_URL", "redis://127.0.0.1:6390/0")
REDIS_URL = CELERY_BROKER_URL
# Nothing on the webhook path uses the cache; a per-process one keeps the run off any shared Redis.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

INSTALLED_APPS = [*INSTALLED_APPS, "bench.ledger.apps.LedgerConfig"]
ROOT_URLCONF = "sandbox_project.urls"

CHAOS_SECRET = "whsec_chaos_only_not_a_secret"
CHAOS_JOURNAL_DIR = os.environ.get("TETHER_CHAOS_JOURNAL", "")

#: Short enough for a soak of minutes (the app's defaults are 60 s, 600 s, a sweep every 30 s in
#: the sandbox, and retries after 10 s doubling to an hour); the full run's, and what
#: ``--smoke`` shortens further.
SOAK_TIMINGS = {
    "REQUEUE_RECEIVED_AFTER": 15,
    "STUCK_AFTER": 45,
    "SWEEP_EVERY": 5,
    "RETRY_BASE_DELAY": 1,
    "RETRY_MAX_DELAY": 4,
}
SOAK_TIMINGS.update(json.loads(os.environ.get("TETHER_CHAOS_TIMINGS") or "{}"))

WEBHOOKS = {
    "ENDPOINTS": {ENDPOINT: {"PROVIDER": "stripe", "SECRETS": [CHAOS_SECRET]}},
    "REQUEUE_RECEIVED_AFTER": SOAK_TIMINGS["REQUEUE_RECEIVED_AFTER"],
    "STUCK_AFTER": SOAK_TIMINGS["STUCK_AFTER"],
    "RETRY_BASE_DELAY": SOAK_TIMINGS["RETRY_BASE_DELAY"],
    "RETRY_MAX_DELAY": SOAK_TIMINGS["RETRY_MAX_DELAY"],
}

CELERY_BEAT_SCHEDULE = {
    "requeue-stuck-webhooks": {
        "task": "webhooks.requeue_stuck",
        "schedule": float(SOAK_TIMINGS["SWEEP_EVERY"]),
    },
}

# The app's warnings (a publish the broker refused, a handler that failed) go to each process's
# log in the run's directory: what to read when a run fails.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "ERROR"},
    # webhooks.services at INFO: the sweeper's "requeued N stuck event(s)", counted by the run.
    "loggers": {"webhooks": {"level": "WARNING"}, "webhooks.services": {"level": "INFO"}},
}
