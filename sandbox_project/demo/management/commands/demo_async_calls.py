"""Call a fake exchange-rates vendor concurrently through the async client.

Starts ``integrations.testing.FakeVendor`` on 127.0.0.1, answering each rate after 0.2 s (or,
with ``--down``, 503), and makes ``--calls`` calls at once on one event loop through the demo's
``AsyncExchangeRates`` (an ``AsyncServiceClient``). Healthy, they all take about 0.2 s together,
not 0.2 s each. Down, they feed the ``demo-rates`` circuit breaker, the same one
``demo_vendor_outage`` shows (its sync twin): once it opens, the remaining calls fail fast.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from asgiref.sync import async_to_sync
from django.core.management.base import BaseCommand, CommandError

from integrations.exceptions import IntegrationError
from integrations.testing import FakeVendor, Reply, aclose_connections

from ...services import AsyncExchangeRates, ExchangeRates

#: The most calls made at once (the fake vendor is a small threaded server).
MAX_CALLS = 50
#: How long the healthy vendor takes to answer each call (seconds).
VENDOR_DELAY = 0.2


class Command(BaseCommand):
    help = "Call a fake exchange-rates vendor concurrently through AsyncServiceClient."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--calls",
            type=int,
            default=10,
            help=f"how many calls to make at once, 1 to {MAX_CALLS} (default: 10)",
        )
        parser.add_argument("--down", action="store_true", help="the vendor answers 503")

    def handle(self, *args: Any, calls: int, down: bool, **options: Any) -> None:
        if not 1 <= calls <= MAX_CALLS:
            raise CommandError(f"--calls must be from 1 to {MAX_CALLS}.")
        reply = (
            Reply.server_error(503)
            if down
            else Reply.slow(VENDOR_DELAY, Reply.json({"rate": "1.0842"}))
        )
        with FakeVendor() as vendor:
            vendor.route("GET", "/v1/rates/EUR", reply)
            # async_to_sync: the breaker's database work (sync_to_async) runs in this thread.
            outcomes, took = async_to_sync(self._calls)(vendor.url, calls)
            seen = vendor.count("GET", "/v1/rates/EUR")
        for number, outcome in enumerate(outcomes, 1):
            if isinstance(outcome, IntegrationError):
                self.stdout.write(f"call {number}: {type(outcome).__name__}: {outcome}")
            elif isinstance(outcome, BaseException):
                raise outcome  # not the vendor's failure: a bug, shown as such
            else:
                self.stdout.write(f"call {number}: EUR rate {outcome}")
        state = ExchangeRates().get_breaker().state
        self.stdout.write(
            f"{calls} concurrent call(s) took {took:.2f} s; the vendor saw {seen} request(s); "
            f"breaker 'demo-rates' is {state}."
        )

    @staticmethod
    async def _calls(base_url: str, calls: int) -> tuple[list[Any], float]:
        # Quick attempts, so that the demo takes a second, not the default deadline; connect
        # patiently, as the fake vendor accepts few connections at once.
        client = AsyncExchangeRates(
            base_url=base_url,
            retry={"MAX_ATTEMPTS": 2, "BASE_DELAY": 0.05, "MAX_DELAY": 0.1, "DEADLINE": 10.0},
            timeout={"CONNECT": 5.0},
        )
        started = time.monotonic()
        try:
            outcomes = await asyncio.gather(
                *(client.rate("EUR") for _ in range(calls)), return_exceptions=True
            )
        finally:
            await aclose_connections()
        return list(outcomes), time.monotonic() - started
