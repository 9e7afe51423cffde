"""Test settings: the sandbox's, on the real PostgreSQL and Redis of this machine.

Environment knobs, so that several test runs on one machine do not share state:
- ``TETHER_PG_URL``: the server (default ``postgres://postgres@127.0.0.1:5432/test``).
- ``TETHER_TEST_DB``: the database pytest-django creates (default ``test_tether``).
- ``TETHER_DB_NAME``: the database to connect to; a Celery worker started by a test sets it to
  the test database so it sees the test's rows.
- ``TETHER_REDIS_DB``: the Redis database number for the broker and the cache (default 14, so
  that the suite, which empties its database before every test, never touches database 0 that
  the sandbox and applications use).
"""

import os

import dj_database_url

from sandbox_project.settings import *  # noqa: F403

_pg = dj_database_url.parse(
    os.environ.get("TETHER_PG_URL", "postgres://postgres@127.0.0.1:5432/test")
)
_pg["NAME"] = os.environ.get("TETHER_DB_NAME", _pg["NAME"])
_pg["TEST"] = {"NAME": os.environ.get("TETHER_TEST_DB", "test_tether")}
_pg["CONN_MAX_AGE"] = 0
DATABASES = {"default": _pg}

REDIS_DB = int(os.environ.get("TETHER_REDIS_DB", "14"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
CELERY_BROKER_URL = REDIS_URL
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": f"tether-test-{REDIS_DB}",
    }
}

# The fleet policies' Redis: this run's database too (tests that use it set their policies).
INTEGRATIONS = {**INTEGRATIONS, "REDIS_URL": REDIS_URL}  # noqa: F405

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEBUG = False

# Fixed, test-only secrets (the sandbox reads real ones from the environment).
WEBHOOKS = {
    "ENDPOINTS": {
        "stripe": {"PROVIDER": "stripe", "SECRETS": ["whsec_test_stripe_secret"]},
        "github": {"PROVIDER": "github", "SECRETS": ["test-github-secret"]},
        "acme": {"PROVIDER": "standard", "SECRETS": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]},
        "partner": {
            "PROVIDER": "hmac",
            "SECRETS": ["test-partner-secret"],
            "HEADER": "X-Partner-Signature",
            "ALGORITHM": "sha256",
            "ENCODING": "hex",
            "PREFIX": "",
            "EVENT_ID": "json:id",
            "EVENT_TYPE": "json:type",
        },
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {},
}
