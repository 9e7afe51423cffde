"""Settings of the sandbox: a demo project that uses django-tether as a user would.

Zero setup by default (SQLite and kombu's filesystem broker). Set ``DATABASE_URL`` and
``CELERY_BROKER_URL`` to run it on PostgreSQL and Redis or RabbitMQ; ``SANDBOX_TASK_BACKEND``
``django`` processes with Django's Tasks on the database instead of Celery. Webhook secrets come
from the environment; the sandbox falls back to fixed demo secrets so that ``make run`` works
with no set-up (never do that in a real project).
"""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.environ.get("SANDBOX_STATE_DIR", BASE_DIR / ".sandbox"))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "sandbox-only-insecure-key")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get(
    "DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver"
).split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "webhooks",
    "integrations",
    "sandbox_project.demo",
    # Django Tasks' database backend (its table and db_worker command), for
    # `make run TASKS=django` (SANDBOX_TASK_BACKEND below); migrated in both modes.
    "django_tasks_db",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "sandbox_project.urls"
WSGI_APPLICATION = "sandbox_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# Under ASGI (`make run ASGI=1`) each request's database work runs on a thread of its own, so a
# persistent connection would never be reused, only left open: connections close after each
# request there (or use Django's pool on PostgreSQL: docs/webhooks/asgi.md).
_CONN_MAX_AGE = 0 if os.environ.get("SANDBOX_ASGI") == "1" else 60
DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{STATE_DIR / 'sandbox.sqlite3'}", conn_max_age=_CONN_MAX_AGE
    )
}
# The web server, the worker's pool processes and beat all write to one file. SQLite set up for
# concurrent writers (Django 5.1+ options); tests/settings_sqlite.py runs the suite with them:
# - transaction_mode IMMEDIATE: a transaction takes the write lock when it begins, so a
#   writer waits its turn there; a DEFERRED one that read first and then writes gets
#   "database is locked" at once, whatever the timeout (SQLite cannot make it wait);
# - timeout: how long a writer waits for the lock (seconds), instead of failing at once;
# - WAL: readers never block the writer, nor the writer its readers; NORMAL sync is safe
#   with WAL (a power cut may lose the last commits, never corrupt the file).
SQLITE_CONCURRENT_WRITERS = {
    "transaction_mode": "IMMEDIATE",
    "timeout": 20,
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(SQLITE_CONCURRENT_WRITERS)

CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
if os.environ.get("REDIS_CACHE_URL"):
    CACHES["default"] = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": os.environ["REDIS_CACHE_URL"],
    }

USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
USE_I18N = True
STATIC_URL = "static/"
STATIC_ROOT = STATE_DIR / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Celery: the embedded default is kombu's filesystem transport, so no broker server is needed.
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = STATE_DIR / "broker"
    for _sub in ("queue", "processed", "control"):
        (_broker_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fix-up otherwise closes the database connection around every task, so each
# webhook task would open a new PostgreSQL connection (several ms); webhooks.process_event
# itself honours CONN_MAX_AGE and CONN_HEALTH_CHECKS between tasks.
CELERY_DB_REUSE_MAX = 1000
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Publishing must fail fast when the broker is down (the event is already stored and the sweeper
# enqueues it later), instead of holding the webhook response for kombu's default retries.
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY = False
CELERY_BEAT_SCHEDULE = {
    # Every 30 s: with WEBHOOKS["REQUEUE_RECEIVED_AFTER"] (60 s) an event whose wake-up call
    # was lost (broker down, web process killed) is enqueued within about 90 s.
    "requeue-stuck-webhooks": {"task": "webhooks.requeue_stuck", "schedule": 30.0},
}
if os.environ.get("STRIPE_API_KEY"):
    # Hourly: store the events Stripe failed to deliver (docs/webhooks/reconcile.md). Only with
    # a key: without one every run would log that Stripe cannot be listed.
    CELERY_BEAT_SCHEDULE["reconcile-stripe-webhooks"] = {
        "task": "webhooks.reconcile",
        "args": ["stripe"],
        "schedule": 3600.0,
    }

# Django's Tasks (Django 6's django.tasks, or the django-tasks backport on 5.2): the database
# backend, whose queue is a table of the sandbox's database and whose worker is
# `manage.py db_worker`. Used for processing when WEBHOOKS["TASK_BACKEND"] is "django".
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

WEBHOOKS = {
    # `make run TASKS=django` sets SANDBOX_TASK_BACKEND=django (sandbox_project/run.sh): Django
    # Tasks on the database and db_worker instead of Celery (docs/webhooks/django-tasks.md).
    "TASK_BACKEND": os.environ.get("SANDBOX_TASK_BACKEND") or "celery",
    "ENDPOINTS": {
        "stripe": {
            "PROVIDER": "stripe",
            "SECRETS": [os.environ.get("STRIPE_WEBHOOK_SECRET", "whsec_sandbox_stripe_secret")],
        },
        "github": {
            "PROVIDER": "github",
            "SECRETS": [os.environ.get("GITHUB_WEBHOOK_SECRET", "sandbox-github-secret")],
        },
        "acme": {
            "PROVIDER": "standard",
            "SECRETS": [
                os.environ.get("ACME_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            ],
        },
    },
}

INTEGRATIONS = {
    # The fleet policies' Redis (demo_vendor_outage --cooldown / --budget); none by default.
    "REDIS_URL": os.environ.get("INTEGRATIONS_REDIS_URL") or None,
    "SERVICES": {
        "stripe": {
            "API_KEY": os.environ.get("STRIPE_API_KEY", ""),
            "BASE_URL": os.environ.get("STRIPE_API_BASE", ""),
        },
    },
}

REST_FRAMEWORK = {"DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema"}
SPECTACULAR_SETTINGS = {
    "TITLE": "django-tether operator API",
    "DESCRIPTION": "Webhook events and circuit breakers: inspect, replay, ignore, reset, open.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # One name per choice set shared by several fields (state, from_state, to_state).
    "ENUM_NAME_OVERRIDES": {
        "BreakerStateEnum": "integrations.models.BreakerState",
        "WebhookEventStatusEnum": "webhooks.models.WebhookEvent.Status",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "webhooks": {"handlers": ["console"], "level": "INFO"},
        "integrations": {"handlers": ["console"], "level": "INFO"},
    },
}
