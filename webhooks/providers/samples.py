"""Small realistic sample events, embedded so that the package reads no file at run time.

Trimmed from the vendors' own published examples (values unchanged, fields subset):
- Stripe: ``stripe/openapi`` ``openapi/fixtures3.json`` (``resources.event`` as the envelope,
  ``payment_intent``, ``charge``, ``invoice`` as ``data.object``).
- GitHub: ``octokit/webhooks`` ``payload-examples/api.github.com/`` (``push``,
  ``pull_request/opened``, ``issues/opened``, ``ping``).
- Standard Webhooks: the example of ``spec/standard-webhooks.md``, "Signature scheme".

Each call returns a deep copy, so callers may change it.
"""

from __future__ import annotations

import copy
from typing import Any

_REPOSITORY = {
    "id": 186853002,
    "node_id": "MDEwOlJlcG9zaXRvcnkxODY4NTMwMDI=",
    "name": "Hello-World",
    "full_name": "Codertocat/Hello-World",
    "private": False,
    "owner": {"login": "Codertocat", "id": 21031067, "type": "User"},
    "html_url": "https://github.com/Codertocat/Hello-World",
    "default_branch": "master",
}
_SENDER = {"login": "Codertocat", "id": 21031067, "type": "User"}

GITHUB: dict[str, dict[str, Any]] = {
    "ping": {
        "zen": "Anything added dilutes everything else.",
        "hook_id": 109948940,
        "hook": {
            "type": "Repository",
            "id": 109948940,
            "name": "web",
            "active": True,
            "events": ["*"],
            "created_at": "2019-05-15T15:20:49Z",
        },
        "repository": _REPOSITORY,
        "sender": _SENDER,
    },
    "push": {
        "ref": "refs/tags/simple-tag",
        "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "after": "0000000000000000000000000000000000000000",
        "created": False,
        "deleted": True,
        "forced": False,
        "compare": "https://github.com/Codertocat/Hello-World/compare/6113728f27ae...000000000000",
        "commits": [],
        "head_commit": None,
        "repository": _REPOSITORY,
        "pusher": {"name": "Codertocat", "email": "21031067+Codertocat@users.noreply.github.com"},
        "sender": _SENDER,
    },
    "pull_request": {
        "action": "opened",
        "number": 2,
        "pull_request": {
            "id": 279147437,
            "number": 2,
            "state": "open",
            "title": "Update the README with new information.",
            "html_url": "https://github.com/Codertocat/Hello-World/pull/2",
            "created_at": "2019-05-15T15:20:33Z",
            "user": _SENDER,
            "head": {"ref": "changes"},
            "base": {"ref": "master"},
        },
        "repository": _REPOSITORY,
        "sender": _SENDER,
    },
    "issues": {
        "action": "opened",
        "issue": {
            "id": 444500041,
            "number": 1,
            "title": "Spelling error in the README file",
            "state": "open",
            "html_url": "https://github.com/Codertocat/Hello-World/issues/1",
            "created_at": "2019-05-15T15:20:18Z",
            "body": "It looks like you accidently spelled 'commit' with two 't's.",
            "user": _SENDER,
        },
        "repository": _REPOSITORY,
        "sender": _SENDER,
    },
}

STRIPE_OBJECTS: dict[str, dict[str, Any]] = {
    "payment_intent": {
        "id": "pi_1PgafyB7WZ01zgkWSjxsAJo3",
        "object": "payment_intent",
        "amount": 1099,
        "amount_received": 1099,
        "capture_method": "automatic",
        "created": 1234567890,
        "currency": "usd",
        "customer": None,
        "livemode": False,
        "metadata": {},
        "payment_method_types": ["card"],
        "status": "succeeded",
    },
    "charge": {
        "id": "ch_1PgafuB7WZ01zgkWXYmPNZs8",
        "object": "charge",
        "amount": 100,
        "amount_captured": 100,
        "captured": True,
        "created": 1234567890,
        "currency": "usd",
        "customer": None,
        "livemode": False,
        "metadata": {},
        "paid": True,
        "payment_intent": None,
        "status": "succeeded",
    },
    "invoice": {
        "id": "in_1Pgc6tB7WZ01zgkWu9fdqL6I",
        "object": "invoice",
        "amount_due": 1000,
        "amount_paid": 1000,
        "billing_reason": "manual",
        "created": 1234567890,
        "currency": "usd",
        "customer": "cus_QXg1o8vcGmoR32",
        "livemode": False,
        "metadata": {},
        "number": None,
        "status": "paid",
        "subscription": None,
    },
    "customer.subscription": {
        "id": "sub_1PgcDsB7WZ01zgkWnEyMwiTb",
        "object": "subscription",
        "cancel_at_period_end": False,
        "created": 1234567890,
        "currency": "usd",
        "current_period_end": 1237159890,
        "current_period_start": 1234567890,
        "customer": "cus_QXg1o8vcGmoR32",
        "livemode": False,
        "metadata": {},
        "status": "active",
    },
}

STRIPE_ENVELOPE: dict[str, Any] = {
    "api_version": None,
    "livemode": False,
    "object": "event",
    "pending_webhooks": 0,
    "request": {"id": None, "idempotency_key": None},
}

STANDARD: dict[str, Any] = {
    "type": "contact.created",
    "timestamp": "2022-11-03T20:26:10.344522Z",
    "data": {"id": "1f81eb52-5198-4599-803e-771906343485"},
}


def github_payload(event: str) -> dict[str, Any] | None:
    """The sample for a GitHub event name (``push``, ``pull_request``...), or None."""
    payload = GITHUB.get(event)
    return copy.deepcopy(payload) if payload is not None else None


def stripe_object(event_type: str) -> dict[str, Any]:
    """The ``data.object`` for a Stripe event type (by its prefix: ``invoice.paid`` gives the
    invoice, ``customer.subscription.updated`` the subscription); the payment intent when the
    type names no known object."""
    parts = event_type.split(".")
    for prefix in (".".join(parts[:2]), parts[0]):
        if prefix in STRIPE_OBJECTS:
            return copy.deepcopy(STRIPE_OBJECTS[prefix])
    return copy.deepcopy(STRIPE_OBJECTS["payment_intent"])


def stripe_envelope() -> dict[str, Any]:
    return copy.deepcopy(STRIPE_ENVELOPE)


def standard_payload() -> dict[str, Any]:
    return copy.deepcopy(STANDARD)
