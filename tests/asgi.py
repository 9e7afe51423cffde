"""Django's ``AsyncClient`` driven from sync tests, so that one test body runs against the sync
receive view (``Client``) and the async one (``AsgiClient``) alike.

Each request of an ``AsgiClient`` goes through Django's ASGI handler on an event loop
(``async_to_sync``), so ``WEBHOOKS["RECEIVE_VIEW"] = "auto"`` resolves it to the async view.
Thread-sensitive work (the database) runs back on the test's thread, inside its transaction.
Its requests say, as ``webhooks.asgi.WebhookBodyLimit`` would, that the body is in memory.
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from django.test import AsyncClient

from webhooks.views import BODY_BYTES_KEY

METHODS = ("get", "post", "put", "patch", "delete", "head", "options", "trace", "generic")


class _GuardedAsyncClient(AsyncClient):
    async def request(self, **request: Any) -> Any:
        request.setdefault(BODY_BYTES_KEY, 0)  # the test client's body is in memory
        return await super().request(**request)


class AsgiClient:
    """``AsyncClient``'s methods, each run to completion: ``AsgiClient().post(...)``.
    ``guarded=False``: the scope lacks what ``WebhookBodyLimit`` adds."""

    def __init__(self, *, guarded: bool = True, **defaults: Any) -> None:
        kind = _GuardedAsyncClient if guarded else AsyncClient
        self.async_client = kind(**defaults)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.async_client, name)
        return async_to_sync(attribute) if name in METHODS else attribute
