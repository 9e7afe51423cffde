"""Settings for the benchmarks: the sandbox's, on PostgreSQL and Redis, DEBUG off, logging quiet.

Environment knobs (so that several runs on one machine do not share state):
- ``TETHER_PG_URL``: the PostgreSQL server (default ``postgres://postgres@127.0.0.1:5432/``).
- ``TETHER_BENCH_DB``: the database the benchmarks create, migrate and drop
  (default ``bench_tether``).
- ``TETHER_REDIS_DB``: the Redis database for the broker and the cache (default 15, so that a
  run never touches an application's database 0). The benchmarks delete their own keys in it
  and purge its default Celery queue.
"""

import os

import dj_database_url

from sandbox_project.settings import *  # noqa: F403
from sandbox_project.settings import INSTALLED_APPS

BENCH_ENDPOINT = "bench"
#: Case (h)'s endpoint (same scheme and secret): its three handlers are ordered.
ORDERED_ENDPOINT = "bench-ordered"
BENCH_SECRET = "whsec_bench_only_not_a_secret"

_pg = dj_database_url.parse(os.environ.get("TETHER_PG_URL", "postgres://postgres@127.0.0.1:5432/"))
_pg["NAME"] = os.environ.get("TETHER_BENCH_DB", "bench_tether")
# Persistent connections, as a production deployment would have them.
_pg["CONN_MAX_AGE"] = 600
_pg["CONN_HEALTH_CHECKS"] = False
if os.environ.get("TETHER_BENCH_DB_POOL"):
    # Under ASGI (bench/ingest.py --asgi): Django's connection pool (psycopg_pool), since each
    # request's thread-sensitive work runs on a thread of its own, where a persistent
    # connection would not be reused (docs/webhooks/asgi.md).
    _pg["CONN_MAX_AGE"] = 0
    _pg.setdefault("OPTIONS", {})["pool"] = {"min_size": 4, "max_size": 16}
DATABASES = {"default": _pg}

REDIS_DB = int(os.environ.get("TETHER_REDIS_DB", "15"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"tether-bench-{REDIS_DB}",
    }
}

DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [*INSTALLED_APPS, "bench.apps.BenchConfig"]
ROOT_URLCONF = "bench.urls"

# One endpoint for the benchmark, verified with Stripe's scheme; bench/webhooks.py registers a
# no-op handler for it (the sandbox's demo handlers listen on other endpoints).
WEBHOOKS = {
    # bench/task_backends.py starts each carrier's worker with its own.
    "TASK_BACKEND": os.environ.get("TETHER_BENCH_TASK_BACKEND", "celery"),
    "ENDPOINTS": {
        BENCH_ENDPOINT: {"PROVIDER": "stripe", "SECRETS": [BENCH_SECRET]},
        ORDERED_ENDPOINT: {"PROVIDER": "stripe", "SECRETS": [BENCH_SECRET]},
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "ERROR"},
}
