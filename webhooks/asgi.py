"""Receiving under ASGI: bound what Django's ASGI handler reads of a webhook's body.

Django's ``ASGIHandler`` reads a request's whole body (into memory, then a temporary file past
``FILE_UPLOAD_MAX_MEMORY_SIZE``) before any view runs, whatever its size: the receive view's
``MAX_BODY_BYTES`` would then only be checked after the fact. ``WebhookBodyLimit`` wraps the
project's ASGI application and, for a ``POST`` that resolves to the receive view, hands Django
no more of the body than the view may read:

- a declared ``Content-Length`` over the endpoint's ``MAX_BODY_BYTES``: no body at all (the
  client's bytes are never asked for, so a client waiting on ``Expect: 100-continue`` gets no
  ``100``); the view answers 413 from the declared length, as under WSGI;
- a body without a declared length (chunked), or one that turns out longer: cut after
  ``MAX_BODY_BYTES + 1`` bytes; the view reads them and answers 413;
- an unknown endpoint: no body (the view answers 404 without reading).

Every other request goes through untouched. The number of bytes let through is put in the
request's scope (``webhooks.views.BODY_BYTES_KEY``): the async view reads a body held in
memory on the event loop, and one Django spooled to disk in a thread. Without the wrapper the
view still answers the same, but logs a warning once per process.

    # asgi.py
    from django.core.asgi import get_asgi_application
    from webhooks.asgi import WebhookBodyLimit

    application = WebhookBodyLimit(get_asgi_application())
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from django.urls import Resolver404, resolve

from .exceptions import UnknownEndpoint
from .providers import get_provider
from .views import BODY_BYTES_KEY, receive, receive_async

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class WebhookBodyLimit:
    """An ASGI middleware: see the module docstring."""

    def __init__(self, application: ASGIApp) -> None:
        self.application = application

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            await self.application(scope, receive, send)
            return
        limit = body_limit(scope)
        if limit is None:
            await self.application(scope, receive, send)
            return
        scope = dict(scope)
        declared = _declared_length(scope)
        if limit == 0 or (declared is not None and declared > limit):
            limit = -1  # nothing: the view refuses without reading
        await self.application(scope, _BoundedReceive(scope, receive, limit), send)


def body_limit(scope: Scope) -> int | None:
    """The most of this request's body the receive view may read (its endpoint's
    ``MAX_BODY_BYTES``; 0 for an unknown endpoint); None when it is not a webhook delivery."""
    root = scope.get("root_path", "")
    path = scope["path"]
    if root and path.startswith(root):
        path = path[len(root) :]
    try:
        match = resolve(path)
    except Resolver404:
        return None
    if match.func not in (receive, receive_async):
        return None
    try:
        return get_provider(match.kwargs["endpoint"]).max_body_bytes
    except UnknownEndpoint:
        return 0  # the view answers 404 without reading
    except Exception:
        # A misconfigured endpoint: the view raises the same error, and Django reports it as
        # for any view; the body is not the question then.
        return None


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class _BoundedReceive:
    """``receive`` letting through at most ``limit + 1`` bytes of the body (none when ``limit``
    is -1), then ending it; what follows is never read. Records the count in the scope."""

    def __init__(self, scope: Scope, receive: Receive, limit: int) -> None:
        self.scope = scope
        self.receive = receive
        self.room = limit + 1
        self.passed = 0
        self.cut = False
        self.ended = False

    async def __call__(self) -> Message:
        if self.cut:
            # The rest of the body is not read: only a disconnect could come, and Django stops
            # waiting for one when its response is sent.
            await asyncio.Event().wait()
        if self.ended:
            return await self.receive()
        if self.room <= 0:
            return self._end(b"", cut=True)
        message = await self.receive()
        if message["type"] != "http.request":
            return message
        body = message.get("body", b"")
        if len(body) > self.room - self.passed:
            return self._end(body[: self.room - self.passed], cut=True)
        if not message.get("more_body", False):
            return self._end(body, cut=False)
        self.passed += len(body)
        return message

    def _end(self, body: bytes, *, cut: bool) -> Message:
        self.passed += len(body)
        self.cut, self.ended = cut, True
        self.scope[BODY_BYTES_KEY] = self.passed
        return {"type": "http.request", "body": body, "more_body": False}
