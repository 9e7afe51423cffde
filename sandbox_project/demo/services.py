"""The demo shop's outbound vendor: an exchange-rates API, written as a user writes a client."""

from __future__ import annotations

from decimal import Decimal

from integrations import ServiceClient


class ExchangeRates(ServiceClient):
    service = "demo-rates"  # its settings key and its circuit breaker's name
    base_url = "http://127.0.0.1:9"  # replaced by the demo command's fake vendor

    def rate(self, currency: str) -> Decimal:
        data = self.get_json(f"/v1/rates/{currency}", operation="rate", required=["rate"])
        return Decimal(str(data["rate"]))
