"""The integrations app's health check: circuit breakers that are not closed.

``IntegrationsConfig.ready()`` registers it with ``tether.health`` (the view). It reports
``circuit_breakers: {"open": [{"name", "state"}]}`` and never fails the view: a vendor being
down is no reason to take a web process out of the load balancer. Cost: one small query.
"""

from __future__ import annotations

from typing import Any

from tether.health import HealthCheck, register

#: Breaker states reported as open (calls are refused or only probes go through).
OPEN_BREAKER_STATES = ("open", "half_open", "forced_open")


class OpenBreakersCheck(HealthCheck):
    """``circuit_breakers``: the breakers in ``OPEN_BREAKER_STATES``, by name."""

    name = "circuit_breakers"
    reads_database = True

    def run(self) -> dict[str, Any]:
        from .models import CircuitBreaker

        rows = CircuitBreaker.objects.filter(state__in=OPEN_BREAKER_STATES).order_by("name")
        return {
            "open": [
                {"name": name, "state": state} for name, state in rows.values_list("name", "state")
            ]
        }

    def unreadable(self) -> dict[str, Any]:
        return {"open": None}


def register_checks() -> None:
    """Add the integrations app's check to the health view (from ``IntegrationsConfig.ready()``)."""
    register(OpenBreakersCheck())
