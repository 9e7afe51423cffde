"""The receive view: ``POST /webhooks/<endpoint>/``. A thin shell over ``receive_webhook``.

Responses (JSON), as the contract's table says; each refusal's status and ``error`` are its
exception's (``webhooks.exceptions.DeliveryRefused``):

======================================  ======  ============================================
verified, new                           200     ``{"status": "accepted", "event_id": ...}``
verified, already stored                200     ``{"status": "duplicate", "event_id": ...}``
bad, missing or stale signature         400     ``{"error": "invalid_signature"}``
verified but not JSON, or no event id   400     ``{"error": "malformed_payload"}``
unknown endpoint                        404     ``{"error": "unknown_endpoint"}``
not POST                                405     (empty)
body over the limit                     413     ``{"error": "payload_too_large"}``
database unavailable                    503     ``{"error": "unavailable"}``
======================================  ======  ============================================

The body is never read through ``request.body`` or ``request.POST``: the view hands the raw
stream to ``receive_webhook``, which reads it in chunks under the endpoint's ``MAX_BODY_BYTES``.
So Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (which only guards ``request.body``/``POST``) plays
no part here: ``MAX_BODY_BYTES`` is the one limit, and it holds whether it is smaller or larger
than Django's. The view opts out of ``ATOMIC_REQUESTS``: its insert is one statement that
commits at once (so the event is handed to the dispatcher right away), and a database that is down
is answered 503 by the view rather than failing before it runs.

Under WSGI the stream is Django's, capped at the declared ``Content-Length``; a body sent
without one (``Transfer-Encoding: chunked``) is read from the server's terminated
input (``wsgi.input_terminated``, set by gunicorn) and cut off at the limit.

The async view, ``receive_async``, answers exactly the same
(``webhooks.receiving.areceive_webhook``: the same steps, no blocking call on the event loop).
Which one serves the URL is ``WEBHOOKS["RECEIVE_VIEW"]``: ``"auto"`` (the default) picks, for
each request, the async view when Django's ASGI handler resolves it (a running event loop in
the resolving thread) and the sync one under WSGI; ``"sync"`` and ``"async"`` force one
(``ReceivePattern``). Under ASGI the body is read by Django's handler before any view runs:
wrap the ASGI application in ``webhooks.asgi.WebhookBodyLimit`` so that it never holds more
than ``MAX_BODY_BYTES + 1`` bytes of a webhook's body (docs/webhooks/asgi.md).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.urls import URLPattern
from django.urls.resolvers import ResolverMatch
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .conf import processing_setting, webhooks_settings
from .exceptions import DeliveryRefused
from .receiving import BodyStream, MetaHeaders, areceive_webhook, receive_webhook

logger = logging.getLogger(__name__)

#: The ASGI scope key ``webhooks.asgi.WebhookBodyLimit`` sets: how many bytes of the body it let
#: Django's handler read.
BODY_BYTES_KEY = "webhooks.body_bytes"


@csrf_exempt
@require_POST
@transaction.non_atomic_requests
def receive(request: HttpRequest, endpoint: str) -> JsonResponse:
    stream, content_length = _body_source(request)
    try:
        receipt = receive_webhook(
            endpoint,
            headers=MetaHeaders(request.META),
            stream=stream,
            content_length=content_length,
        )
    except DeliveryRefused as error:  # the refusal's class carries its answer
        return JsonResponse({"error": error.default_code}, status=error.status_code)
    return JsonResponse({"status": receipt.status, "event_id": receipt.event_id})


@csrf_exempt
@require_POST
@transaction.non_atomic_requests
async def receive_async(request: HttpRequest, endpoint: str) -> JsonResponse:
    """The async receive view: ``receive``'s contract, on the event loop."""
    stream, content_length = _body_source(request)
    try:
        receipt = await areceive_webhook(
            endpoint,
            headers=MetaHeaders(request.META),
            stream=stream,
            content_length=content_length,
            stream_in_memory=_body_in_memory(request),
        )
    except DeliveryRefused as error:
        return JsonResponse({"error": error.default_code}, status=error.status_code)
    return JsonResponse({"status": receipt.status, "event_id": receipt.event_id})


def _body_in_memory(request: HttpRequest) -> bool:
    """Whether Django holds the whole body in memory (under ASGI, behind ``WebhookBodyLimit``,
    when it let through no more than ``FILE_UPLOAD_MAX_MEMORY_SIZE``): then it is read on the
    event loop; otherwise (a spooled file on disk, a WSGI stream) in a thread."""
    scope = getattr(request, "scope", None)
    if scope is None:  # not an ASGI request (the async view forced under WSGI)
        return False
    held = scope.get(BODY_BYTES_KEY)
    if held is None:
        _warn_unbounded()
        return False
    return bool(held <= settings.FILE_UPLOAD_MAX_MEMORY_SIZE)


@functools.cache
def _warn_unbounded() -> None:
    """Once per process (and again after the settings change): the ASGI application lacks
    ``WebhookBodyLimit``."""
    logger.warning(
        "webhooks: this ASGI application is not wrapped in webhooks.asgi.WebhookBodyLimit: "
        "Django reads each webhook's whole body before the view can refuse it (MAX_BODY_BYTES "
        "is still enforced, but only after). See docs/webhooks/asgi.md."
    )


webhooks_settings.register_cache(_warn_unbounded.cache_clear)


def chosen_receive_view() -> Callable[..., Any]:
    """The view ``WEBHOOKS["RECEIVE_VIEW"]`` picks for a request resolved in this thread now:
    ``"auto"`` is ``receive_async`` when an event loop runs here (Django's ASGI handler resolves
    on its loop; the WSGI handler never runs in one), else ``receive``."""
    mode = processing_setting("RECEIVE_VIEW")
    if mode == "sync":
        return receive
    if mode == "async":
        return receive_async
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return receive
    return receive_async


class ReceivePattern(URLPattern):
    """The receive URL: resolves to ``chosen_receive_view()`` at dispatch time. Reversing,
    system checks and ``callback`` see the sync view."""

    def resolve(self, path: str) -> ResolverMatch | None:
        match = super().resolve(path)
        if match is None:
            return None
        view = chosen_receive_view()
        if view is match.func:
            return match
        return ResolverMatch(
            view,
            match.args,
            match.kwargs,
            match.url_name,
            route=match.route,
            # Django 4.1+ attributes that django-stubs does not declare.
            captured_kwargs=match.captured_kwargs,  # type: ignore[attr-defined]
            extra_kwargs=match.extra_kwargs,  # type: ignore[attr-defined]
        )


def receive_path(route: str, name: str) -> ReceivePattern:
    """``path(route, <the receive view>, name=name)``, the view chosen per request."""
    from django.urls.resolvers import RoutePattern

    return ReceivePattern(RoutePattern(route, name=name, is_endpoint=True), receive, name=name)


def _body_source(request: HttpRequest) -> tuple[BodyStream, int | None]:
    """The stream to read the body from and its declared length (None if not declared)."""
    declared = request.META.get("CONTENT_LENGTH")
    if not declared and request.META.get("wsgi.input_terminated"):
        # No Content-Length (chunked): Django's own stream would read nothing; the server's
        # input ends where the body ends, and read_body stops at the limit.
        return request.META["wsgi.input"], None
    try:
        return request, int(declared) if declared else None
    except ValueError:
        return request, None
