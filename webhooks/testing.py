"""Helpers for your own tests: sign a payload the way the endpoint's vendor would, and post it.

```python
from webhooks.testing import post_webhook, sign_request

def test_paid(client, db):
    response = post_webhook(client, "stripe", {"id": "evt_1", "type": "invoice.paid", ...})
    assert response.json()["status"] == "accepted"

headers = sign_request("github", body, event_type="push")   # just the headers
```

``client`` is Django's test ``Client`` or an ``httpx.Client`` whose ``base_url`` is your server
(``send_test_webhook`` uses this same code). Signatures use the endpoint's first secret unless
``secret=`` is given; ``timestamp=`` signs at another time (to test tolerance);
``bad_signature=True`` signs with a random secret of the right format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from django.urls import reverse
from django.views.decorators.debug import sensitive_variables

from tether.conf import SECRET_VARIABLES

from .exceptions import MalformedPayload
from .providers import Sample, get_provider

__all__ = [
    "WebhookRequest",
    "build_request",
    "post_webhook",
    "sample_event",
    "send_request",
    "sign_request",
]


@dataclass(frozen=True)
class WebhookRequest:
    """A signed delivery, ready to send: ``path`` is the endpoint's URL path."""

    path: str
    body: bytes
    headers: dict[str, str]
    event_id: str | None
    event_type: str | None


def sample_event(endpoint_name: str, event_type: str | None = None, **kwargs: Any) -> Sample:
    """A realistic sample event for the endpoint's provider (fresh id, current time)."""
    return get_provider(endpoint_name).sample(event_type, **kwargs)


@sensitive_variables(*SECRET_VARIABLES)
def sign_request(
    endpoint_name: str,
    body: bytes | str,
    *,
    secret: str | None = None,
    timestamp: int | None = None,
    event_id: str | None = None,
    event_type: str | None = None,
    content_type: str = "application/json",
) -> dict[str, str]:
    """The headers the endpoint's vendor would send with ``body``, signature included."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    headers = get_provider(endpoint_name).sign(
        body, secret=secret, timestamp=timestamp, event_id=event_id, event_type=event_type
    )
    headers.setdefault("Content-Type", content_type)
    return headers


def build_request(
    endpoint_name: str,
    payload: Any = None,
    *,
    event_type: str | None = None,
    event_id: str | None = None,
    secret: str | None = None,
    timestamp: int | None = None,
    bad_signature: bool = False,
    headers: dict[str, str] | None = None,
    content_type: str | None = None,
) -> WebhookRequest:
    """Sign ``payload`` (a sample event if None; a dict or list is JSON-encoded; str or bytes is
    sent as is) for ``endpoint_name``. ``headers`` are added last (they may override)."""
    provider = get_provider(endpoint_name)
    if payload is None:
        sample = provider.sample(event_type, event_id=event_id)
        body, event_type, event_id = sample.body, sample.event_type, sample.event_id
        content_type = content_type or sample.content_type
    elif isinstance(payload, bytes):
        body = payload
    elif isinstance(payload, str):
        body = payload.encode("utf-8")
    else:
        body = json.dumps(payload).encode("utf-8")
    signing_secret = provider.make_secret() if bad_signature else secret
    all_headers = sign_request(
        endpoint_name,
        body,
        secret=signing_secret,
        timestamp=timestamp,
        event_id=event_id,
        event_type=event_type,
        content_type=content_type or "application/json",
    )
    all_headers.update(headers or {})
    try:
        parsed = provider.parse(body, all_headers)
        event_id, event_type = parsed.event_id, parsed.event_type
    except MalformedPayload:
        pass
    return WebhookRequest(
        path=reverse("webhooks:receive", args=[endpoint_name]),
        body=body,
        headers=all_headers,
        event_id=event_id,
        event_type=event_type,
    )


def post_webhook(client: Any, endpoint_name: str, payload: Any = None, **kwargs: Any) -> Any:
    """Sign and POST ``payload`` to the endpoint (see ``build_request`` for the keywords).

    Returns the client's response: Django's test response, or an ``httpx.Response``.
    """
    request = build_request(endpoint_name, payload, **kwargs)
    return send_request(client, request)


def send_request(client: Any, request: WebhookRequest) -> Any:
    """POST a built request with a Django test ``Client`` or an ``httpx.Client``."""
    import httpx

    if isinstance(client, httpx.Client):
        return client.post(request.path, content=request.body, headers=request.headers)
    headers = dict(request.headers)
    content_type = headers.pop("Content-Type", "application/json")
    return client.post(request.path, data=request.body, content_type=content_type, headers=headers)
