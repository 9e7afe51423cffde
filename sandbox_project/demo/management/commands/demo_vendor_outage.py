"""Watch a circuit breaker open: call a fake exchange-rates vendor that is down.

Starts ``integrations.testing.FakeVendor`` on 127.0.0.1, answering 503 (or, with ``--healthy``,
a rate), and calls it through the demo's ``ExchangeRates`` client. After
``FAILURE_THRESHOLD`` failed attempts (5 by default) the ``demo-rates`` breaker opens and the
next calls fail fast without reaching the vendor. See it in the admin (Integrations > Circuit
breakers), reset it there or with ``manage.py circuit_breakers reset demo-rates`` (or wait for
its reset timeout, 30 s by default, after which one probe call goes through), then run this
command again with ``--healthy``. While the breaker is open, ``--healthy`` calls fail fast too:
the command then says until when it is open and how to close it.

Two more demos show the policies shared by the fleet (they need ``INTEGRATIONS_REDIS_URL``, a
Redis every process shares), on a service of their own, ``demo-fleet``, whose policies they set
for their run:

- ``--cooldown``: the vendor answers one call 429 with ``Retry-After: 2``; the next caller (any
  process would do) waits out the fleet's cool-down before its call reaches the vendor.
- ``--budget``: the vendor answers 503 to everything; with a retry budget of 10 % of first
  attempts, most failures are raised without a retry, and the vendor sees a fraction of the
  three attempts per call it would see otherwise.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.test import override_settings
from django.utils import timezone

from integrations.conf import integrations_settings
from integrations.exceptions import CircuitOpenError, IntegrationError, RateLimitedError
from integrations.fleet_status import fleet_status
from integrations.testing import FakeVendor, Reply
from tether.conf import deep_merge

from ...services import ExchangeRates

ADMIN_PAGE = "/admin/integrations/circuitbreaker/"
RESET_COMMAND = "`manage.py circuit_breakers reset demo-rates`"
#: The service of the fleet demos (its own breaker, so that they leave demo-rates alone).
FLEET_SERVICE = "demo-fleet"


class Command(BaseCommand):
    help = "Call a fake exchange-rates vendor that is down; watch the 'demo-rates' breaker open."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--calls", type=int, default=8, help="how many calls to make (default: 8)"
        )
        parser.add_argument(
            "--healthy", action="store_true", help="the vendor answers a rate instead of 503"
        )
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument(
            "--cooldown",
            action="store_true",
            help="a 429 with Retry-After: 2 holds every caller (needs INTEGRATIONS_REDIS_URL)",
        )
        mode.add_argument(
            "--budget",
            action="store_true",
            help="a retry budget stops retries during an outage (needs INTEGRATIONS_REDIS_URL)",
        )

    def handle(self, *args: Any, calls: int, healthy: bool, **options: Any) -> None:
        if calls < 1:
            raise CommandError("--calls must be at least 1.")
        if options.get("cooldown") or options.get("budget"):
            if not integrations_settings["REDIS_URL"]:
                raise CommandError(
                    "The fleet demos need a Redis: set INTEGRATIONS_REDIS_URL (for example "
                    "redis://127.0.0.1:6379/0) and run again."
                )
            if options.get("cooldown"):
                self._cooldown_demo()
            else:
                self._budget_demo(calls)
            return
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

    # -- the fleet policies ----------------------------------------------------------------

    @contextmanager
    def _fleet_client(self, vendor: FakeVendor, **policies: Any) -> Iterator[ExchangeRates]:
        """A client of the ``demo-fleet`` service, whose fleet policies are ``policies`` for the
        duration of the block (they are settings: every process of a real fleet reads them)."""
        merged = deep_merge(integrations_settings.merged, {"SERVICES": {FLEET_SERVICE: policies}})
        client_class = type("FleetDemoRates", (ExchangeRates,), {"service": FLEET_SERVICE})
        with override_settings(INTEGRATIONS=merged):
            yield client_class(base_url=vendor.url)

    def _cooldown_demo(self) -> None:
        with FakeVendor() as vendor:
            vendor.route(
                "GET", "/v1/rates/EUR", Reply.rate_limited(2), Reply.json({"rate": "1.0842"})
            )
            with self._fleet_client(
                vendor, SHARED_COOLDOWN=True, RETRY={"MAX_ATTEMPTS": 1, "DEADLINE": 10.0}
            ) as client:
                try:
                    client.rate("EUR")
                except RateLimitedError as error:
                    self.stdout.write(f"call 1: {type(error).__name__}: {error}")
                status = fleet_status(FLEET_SERVICE)
                self.stdout.write(f"fleet: {status.summary()}")
                started = time.monotonic()
                rate = client.rate("EUR")  # another caller: every process would wait alike
                waited = time.monotonic() - started
                self.stdout.write(
                    f"call 2: EUR rate {rate}, after waiting {waited:.1f}s for the fleet's "
                    "cool-down"
                )
            requests = vendor.requests_to("GET", "/v1/rates/EUR")
        gap = requests[1].received_at - requests[0].received_at
        self.stdout.write(
            f"The vendor saw {len(requests)} request(s), {gap:.1f}s apart: nothing from any "
            "caller during the cool-down."
        )

    def _budget_demo(self, calls: int) -> None:
        budget = {"RATIO": 0.1, "MIN_RETRIES_PER_SECOND": 0.2, "WINDOW": 10.0}
        with FakeVendor() as vendor:
            vendor.route("GET", "/v1/rates/EUR", Reply.server_error(503))
            with self._fleet_client(
                vendor,
                RETRY_BUDGET=budget,
                RETRY={"MAX_ATTEMPTS": 3, "BASE_DELAY": 0.02, "MAX_DELAY": 0.05},
                # Only the budget limits retries here: the breaker would stop them sooner.
                BREAKER={"FAILURE_THRESHOLD": 1000},
            ) as client:
                for number in range(1, calls + 1):
                    try:
                        client.rate("EUR")
                    except IntegrationError as error:
                        spent = (
                            " (retry budget spent: not retried)" if error.retry_budget_spent else ""
                        )
                        self.stdout.write(
                            f"call {number}: {type(error).__name__} after {error.attempts} "
                            f"attempt(s){spent}"
                        )
                self.stdout.write(f"fleet: {fleet_status(FLEET_SERVICE).summary()}")
            seen = vendor.count("GET", "/v1/rates/EUR")
        self.stdout.write(
            f"The vendor saw {seen} request(s) for {calls} call(s); without the budget it would "
            f"have seen {3 * calls}."
        )
