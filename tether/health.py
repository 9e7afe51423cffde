"""Health view for load balancers and uptime checks: ``GET`` answers JSON, 200 or 503.

Each app registers its checks here from its ``AppConfig.ready()`` (``register``), as
django-health-check's contrib apps do: webhooks the Celery broker (``broker``) and the event
backlog (``webhooks``), integrations the circuit breakers that are not closed
(``circuit_breakers``). The view reports each check under its name, in the order they were
registered, after ``database``, which is reported once, from the checks that read it: it is
down when one of them raised a ``DatabaseError`` (the checks after it that read the database
are not run, and say ``None`` where they would have counted). No query is made for it alone.

- **503** when the database or a critical check (the broker) fails: this process cannot do its
  job, so a load balancer should stop sending it traffic.
- **200** otherwise. Stuck events and open breakers are reported but do not fail the check: a
  vendor being down is no reason to take the web process out of the load balancer.

Errors are reported by class name only: driver messages can carry hostnames and credentials.
Mount it with ``path("health/", include("tether.health"))``; ``include("webhooks.health")`` is
the same view.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from django.db import DatabaseError
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

__all__ = ["HealthCheck", "health_report", "health_view", "register", "registered", "unregister"]

logger = logging.getLogger("tether.health")


class HealthCheck:
    """One entry of the health report: ``run()`` returns the JSON object shown under ``name``."""

    #: The entry's key in the report.
    name: ClassVar[str]
    #: Whether a failure makes the view answer 503: ``run()`` then returns ``{"ok": False,
    #: "error": "<class name>"}`` (``{"ok": True}`` when it passes).
    critical: ClassVar[bool] = False
    #: Whether it reads the database: a ``DatabaseError`` it raises reports the database down,
    #: and its entry is ``unreadable()``.
    reads_database: ClassVar[bool] = False

    def run(self) -> dict[str, Any]:
        raise NotImplementedError

    def unreadable(self) -> dict[str, Any]:
        """The entry when the database could not be read (``reads_database`` checks)."""
        return {}


_checks: dict[str, HealthCheck] = {}


def register(check: HealthCheck) -> None:
    """Add ``check`` to the report (one with the same ``name`` is replaced, in its place)."""
    _checks[check.name] = check


def unregister(name: str) -> None:
    """Remove the check called ``name`` from the report (nothing happens if there is none): for
    a project that reports it elsewhere, and for tests that want a registry of their own."""
    _checks.pop(name, None)


def registered() -> list[HealthCheck]:
    """The registered checks, in the order the report shows them."""
    return list(_checks.values())


def health_report() -> tuple[bool, dict[str, Any]]:
    """``(healthy, report)``: the JSON body of the health view."""
    entries: dict[str, Any] = {}
    database_error: str | None = None
    reads_database = False
    for check in registered():
        if not check.reads_database:
            entries[check.name] = check.run()
            continue
        reads_database = True
        if database_error is None:
            try:
                entries[check.name] = check.run()
                continue
            except DatabaseError as exc:
                logger.warning("health: database unreachable (%s)", type(exc).__name__)
                database_error = type(exc).__name__
        entries[check.name] = check.unreadable()
    report: dict[str, Any] = {}
    if reads_database:
        report["database"] = (
            {"ok": True} if database_error is None else {"ok": False, "error": database_error}
        )
    report.update(entries)
    healthy = database_error is None and all(
        entries[check.name]["ok"] for check in registered() if check.critical
    )
    return healthy, {"status": "ok" if healthy else "unavailable", **report}


@never_cache
@require_safe
def health_view(request: HttpRequest) -> JsonResponse:
    healthy, report = health_report()
    return JsonResponse(report, status=200 if healthy else 503)


app_name = "health"
urlpatterns = [path("", health_view, name="health")]
