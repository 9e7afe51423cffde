"""Watch a circuit breaker open: call a fake exchange-rates vendor that is down.

Starts ``integrations.testing.FakeVendor`` on 127.0.0.1, answering 503 (or, with ``--healthy``,
a rate), and calls it through the demo's ``ExchangeRates`` client. After
``FAILURE_THRESHOLD`` failed attempts (5 by default) the ``demo-rates`` breaker opens and the
next calls fail fast without reaching the vendor. See it in the admin (Integrations > Circuit
breakers), reset it there or with ``manage.py circuit_breakers reset demo-rates`` (or wait for
its reset timeout, 30 s by default, after which one probe call goes through), then run this
command again with ``--healthy``. While the breaker is open, ``--healthy`` calls fail fast too:
the command then says until when it is open and how to close it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from integrations.exceptions import CircuitOpenError, IntegrationError
from integrations.testing import FakeVendor, Reply

from ...services import ExchangeRates

ADMIN_PAGE = "/admin/integrations/circuitbreaker/"
RESET_COMMAND = "`manage.py circuit_breakers reset demo-rates`"


class Command(BaseCommand):
    help = "Call a fake exchange-rates vendor that is down; watch the 'demo-rates' breaker open."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--calls", type=int, default=8, help="how many calls to make (default: 8)"
        )
        parser.add_argument(
            "--healthy", action="store_true", help="the vendor answers a rate instead of 503"
        )

    def handle(self, *args: Any, calls: int, healthy: bool, **options: Any) -> None:
        if calls < 1:
            raise CommandError("--calls must be at least 1.")
        reply = Reply.json({"rate": "1.0842"}) if healthy else Reply.server_error(503)
        with FakeVendor() as vendor:
            vendor.route("GET", "/v1/rates/EUR", reply)
            # Two quick attempts per call, so the demo takes a second, not the default deadline.
            client = ExchangeRates(
                base_url=vendor.url, retry={"MAX_ATTEMPTS": 2, "BASE_DELAY": 0.05, "MAX_DELAY": 0.1}
            )
            refused_until: datetime | None = None  # from the last call the breaker refused
            for number in range(1, calls + 1):
                try:
                    rate = client.rate("EUR")
                except CircuitOpenError as error:
                    self.stdout.write(f"call {number}: CircuitOpenError: {error}")
                    refused_until = (
                        None
                        if error.retry_after is None
                        else timezone.now() + timedelta(seconds=error.retry_after)
                    )
                except IntegrationError as error:
                    self.stdout.write(f"call {number}: {type(error).__name__}: {error}")
                else:
                    self.stdout.write(f"call {number}: EUR rate {rate}")
            seen = vendor.count("GET", "/v1/rates/EUR")
        state = client.get_breaker().state
        self.stdout.write(f"The vendor saw {seen} request(s); breaker 'demo-rates' is {state}.")
        if state in ("open", "half_open", "forced_open"):
            self.stdout.write(self._why_calls_fail_fast(state, refused_until))
            self.stdout.write(self._what_next(state, healthy=healthy))

    @staticmethod
    def _why_calls_fail_fast(state: str, until: datetime | None) -> str:
        """What the open breaker does, and until when."""
        if until is not None:
            left = max(0, round((until - timezone.now()).total_seconds()))
            when = f"until {timezone.localtime(until):%H:%M:%S %Z} (in {left} s)"
        else:
            when = "until someone resets it"
        if state == "forced_open":
            return f"An operator holds it open {when}: every call fails fast."
        return (
            f"It is open {when}: until then every call fails fast without reaching the vendor; "
            "after that, one probe call goes through and closes it if the vendor answers."
        )

    @staticmethod
    def _what_next(state: str, *, healthy: bool) -> str:
        """How to see calls succeed again from here."""
        wait = "" if state == "forced_open" else "wait until then, or "
        if healthy:
            return (
                "The vendor answers now, but no call reached it while the breaker is open: "
                f"{wait}reset the breaker now with {RESET_COMMAND} (or in the admin at "
                f"{ADMIN_PAGE}), then run this command again."
            )
        return (
            f"See it in the admin at {ADMIN_PAGE}. To see calls succeed again, {wait}reset it "
            f"(there, or {RESET_COMMAND}), then run this command with --healthy."
        )
