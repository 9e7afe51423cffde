"""Watch a circuit breaker open: call a fake exchange-rates vendor that is down.

Starts ``integrations.testing.FakeVendor`` on 127.0.0.1, answering 503 (or, with ``--healthy``,
a rate), and calls it through the demo's ``ExchangeRates`` client. After
``FAILURE_THRESHOLD`` failed attempts (5 by default) the ``demo-rates`` breaker opens and the
next calls fail fast without reaching the vendor. See it in the admin (Integrations > Circuit
breakers), reset it there or with ``manage.py circuit_breakers reset demo-rates``, then run this
command again with ``--healthy``.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from integrations.exceptions import CircuitOpenError, IntegrationError
from integrations.testing import FakeVendor, Reply

from ...services import ExchangeRates


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
            for number in range(1, calls + 1):
                try:
                    rate = client.rate("EUR")
                except CircuitOpenError as error:
                    self.stdout.write(f"call {number}: CircuitOpenError: {error}")
                except IntegrationError as error:
                    self.stdout.write(f"call {number}: {type(error).__name__}: {error}")
                else:
                    self.stdout.write(f"call {number}: EUR rate {rate}")
            seen = vendor.count("GET", "/v1/rates/EUR")
        state = client.get_breaker().state
        self.stdout.write(f"The vendor saw {seen} request(s); breaker 'demo-rates' is {state}.")
        if state != "closed":
            self.stdout.write(
                "See it in the admin at /admin/integrations/circuitbreaker/, reset it there (or "
                "`manage.py circuit_breakers reset demo-rates`), then run this "
                "command with --healthy."
            )
