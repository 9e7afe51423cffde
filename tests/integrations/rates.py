"""The client the ``test_client_*`` files call: service "rates" on a FakeVendor, with quick
policies."""

from __future__ import annotations

from decimal import Decimal

from integrations import ServiceClient

API_KEY = "sk_live_h3_SUPER_SECRET_51Hx"


class Rates(ServiceClient):
    service = "rates"

    def default_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def rate(self, currency: str) -> Decimal:
        data = self.get_json(f"/v1/rates/{currency}", operation="rate", required=["rate"])
        return Decimal(str(data["rate"]))


def configure(settings, vendor_url: str, **service) -> None:
    """Point service "rates" at the fake, with quick policies unless told otherwise."""
    entry = {
        "BASE_URL": vendor_url,
        "TIMEOUT": {"CONNECT": 1.0, "READ": 1.0, "WRITE": 1.0, "POOL": 1.0},
        "RETRY": {"MAX_ATTEMPTS": 3, "BASE_DELAY": 0.5, "MAX_DELAY": 4.0, "DEADLINE": 30.0},
        "BREAKER": {"FAILURE_THRESHOLD": 50},
    }
    for key, value in service.items():
        entry[key] = {**entry.get(key, {}), **value} if isinstance(value, dict) else value
    settings.INTEGRATIONS = {"SERVICES": {"rates": entry}}
