"""What the benchmarks run on: their own PostgreSQL database (created fresh, migrated, dropped
afterwards) and Redis (checked before anything starts)."""

from __future__ import annotations

import os
import sys

from .processes import ROOT, BenchError

#: ``TETHER_BENCH_SETTINGS`` names another settings module (e.g. one that imports
#: ``bench.settings`` and changes a knob) for the benchmark and every process it starts.
SETTINGS_MODULE = os.environ.get("TETHER_BENCH_SETTINGS", "bench.settings")


#: The settings module ``setup_django`` configured (its children run on the same).
_configured_module = ""


def setup_django(settings_module: str = "") -> None:
    """Configure Django in this process with ``settings_module`` (default ``SETTINGS_MODULE``,
    i.e. ``bench.settings``; the chaos soak passes its own)."""
    global _configured_module
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    _configured_module = settings_module or SETTINGS_MODULE
    os.environ["DJANGO_SETTINGS_MODULE"] = _configured_module
    import django

    django.setup()


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process that runs the bench's Django project, on the
    settings module this process was set up with."""
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = _configured_module or SETTINGS_MODULE
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def _admin_connection():
    import psycopg
    from django.conf import settings

    db = settings.DATABASES["default"]
    try:
        return psycopg.connect(
            dbname="postgres",
            user=db.get("USER") or None,
            password=db.get("PASSWORD") or None,
            host=db.get("HOST") or None,
            port=db.get("PORT") or None,
            autocommit=True,
            connect_timeout=5,
        )
    except psycopg.OperationalError as exc:
        raise BenchError(
            f"PostgreSQL is not reachable ({exc}); run ./tests/ensure_services.sh or set "
            "TETHER_PG_URL"
        ) from exc


def recreate_database() -> str:
    """Drop and create the bench database, then migrate it. Returns its name."""
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    name = settings.DATABASES["default"]["NAME"]
    connections.close_all()
    with _admin_connection() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    call_command("migrate", verbosity=0, interactive=False)
    return name


def sessions_on_database() -> int:
    """How many sessions are connected to the bench database now (another run using it)."""
    from django.conf import settings

    name = settings.DATABASES["default"]["NAME"]
    with _admin_connection() as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [name])
        return row.fetchone()[0]


def drop_database() -> None:
    from django.conf import settings
    from django.db import connections

    name = settings.DATABASES["default"]["NAME"]
    connections.close_all()
    with _admin_connection() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def require_redis() -> None:
    """Raise ``BenchError`` with a clear message unless the bench's Redis answers."""
    import redis
    from django.conf import settings

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        raise BenchError(
            f"Redis is not reachable at {settings.REDIS_URL} ({type(exc).__name__}); run "
            "./tests/ensure_services.sh"
        ) from exc


def backend_pids() -> list[int]:
    """PostgreSQL server processes serving the bench database, except this process's own."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        return [row[0] for row in cursor.fetchall()]
