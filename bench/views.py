"""The benchmark's reference views, served by the same project, middleware and server as the
webhook view. Installed only by ``bench.settings``: not part of the product."""

import json

from asgiref.sync import sync_to_async
from django.db import router, transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from webhooks.models import WebhookEvent
from webhooks.storage import insert_or_compare

#: The endpoint the floor view stores its events under (no such endpoint is configured).
FLOOR_ENDPOINT = "bench-floor"


@csrf_exempt
def bare(request: HttpRequest) -> JsonResponse:
    """The baseline: what any Django view costs here, with the same middleware and server."""
    return JsonResponse({"status": "ok"})


@csrf_exempt
@transaction.non_atomic_requests
def floor(request: HttpRequest) -> JsonResponse:
    """The floor of receiving, for ``bench/ingest.py`` cases (e) and (f); not part of the product.

    Only what any design that stores each event durably before answering must do: read the body,
    parse the JSON once, and store the event with the app's own statement
    (``webhooks.storage.insert_or_compare``: one round trip, committed at once), then answer
    ``{"status": "accepted" | "duplicate", "event_id": ...}``. No signature check, no signals, no
    enqueue, no size limit. A body that is not a JSON object with a string ``id`` answers 400.
    """
    event = _floor_event(request.read())
    if isinstance(event, JsonResponse):
        return event
    inserted, _ = insert_or_compare(event, router.db_for_write(WebhookEvent))
    return _floor_answer(event, inserted)


@csrf_exempt
async def bare_async(request: HttpRequest) -> JsonResponse:
    """The baseline under ASGI (``bench/ingest.py --asgi``): an async bare view."""
    return JsonResponse({"status": "ok"})


@csrf_exempt
@transaction.non_atomic_requests
async def floor_async(request: HttpRequest) -> JsonResponse:
    """The floor under ASGI: ``floor`` as an async view, its insert through ``sync_to_async``
    thread-sensitive, as the async receive view stores (``webhooks.receiving``)."""
    event = _floor_event(request.read())  # in memory: Django's ASGI handler read it
    if isinstance(event, JsonResponse):
        return event
    insert = sync_to_async(insert_or_compare, thread_sensitive=True)
    inserted, _ = await insert(event, router.db_for_write(WebhookEvent))
    return _floor_answer(event, inserted)


def _floor_event(body: bytes) -> WebhookEvent | JsonResponse:
    """The event to store from a floor request's body, or the 400 answer."""
    try:
        payload = json.loads(body)
    except ValueError:  # empty, not JSON, or not UTF-8
        return JsonResponse({"error": "malformed_payload"}, status=400)
    event_id = payload.get("id") if isinstance(payload, dict) else None
    if not isinstance(event_id, str) or not event_id:
        return JsonResponse({"error": "malformed_payload"}, status=400)
    return WebhookEvent(
        endpoint=FLOOR_ENDPOINT,
        event_id=event_id,
        event_type=str(payload.get("type") or ""),
        body=body,
        payload=payload,
        headers={},
        status=WebhookEvent.Status.RECEIVED,
        received_at=timezone.now(),
        occurred_at=None,
    )


def _floor_answer(event: WebhookEvent, inserted: bool) -> JsonResponse:
    status = "accepted" if inserted else "duplicate"
    return JsonResponse({"status": status, "event_id": event.event_id})
