"""The demo shop's outbound vendor: an exchange-rates API, written as a user writes a client."""

from __future__ import annotations

from decimal import Decimal

from integrations import AsyncServiceClient, ServiceClient


class ExchangeRates(ServiceClient):
    service = "demo-rates"  # its settings key and its circuit breaker's name
    base_url = "http://127.0.0.1:9"  # replaced by the demo command's fake vendor

    def rate(self, currency: str) -> Decimal:
        data = self.get_json(f"/v1/rates/{currency}", operation="rate", required=["rate"])
        return Decimal(str(data["rate"]))


class AsyncExchangeRates(AsyncServiceClient):
    """The same vendor from an event loop (``demo_async_calls``): the same service, so the same
    settings and the same ``demo-rates`` breaker as ``ExchangeRates``."""

    service = "demo-rates"
    base_url = "http://127.0.0.1:9"

    async def rate(self, currency: str) -> Decimal:
        data = await self.get_json(f"/v1/rates/{currency}", operation="rate", required=["rate"])
        return Decimal(str(data["rate"]))
