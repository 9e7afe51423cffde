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
"""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .exceptions import DeliveryRefused
from .receiving import BodyStream, MetaHeaders, receive_webhook


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
