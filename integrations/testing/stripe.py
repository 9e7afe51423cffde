"""A fake Stripe API over real HTTP on 127.0.0.1, for tests of code that calls Stripe.

``FakeStripe`` answers the four endpoints ``StripeService`` uses the way Stripe's v1 API does:
form-encoded requests, JSON objects shaped like Stripe's (from Stripe's own OpenAPI fixtures,
with the request's values filled in), Stripe-shaped error bodies, ``Request-Id`` headers and
idempotency (the same ``Idempotency-Key`` with the same parameters replays the first answer with
``Idempotent-Replayed: true``; with other parameters it is a 400 ``idempotency_error``).

- ``POST /v1/customers`` (``email``, ``name``), ``GET /v1/customers/{id}``
- ``POST /v1/payment_intents`` (``amount``, ``currency``, ``customer``)
- ``POST /v1/refunds`` (``payment_intent``, ``amount``)
- ``GET /v1/events`` (``delivery_success``, ``created[gte|gt|lte|lt]``, ``type`` with ``*``,
  ``types[]``, ``starting_after``, ``ending_before``, ``limit`` 1-100; newest first, with
  ``has_more``): the events seeded with ``add_event()``

It is a ``FakeVendor`` (``integrations.testing.server``): every request is recorded
(``requests``, ``count()``, ``idempotency_keys()``), a route scripted with ``route()`` answers
before the Stripe behaviour (to serve what Stripe would not), and failures are scripted with
``fail(kind, times=..., path=...)``: ``card_declined`` (402), ``invalid_request`` (400),
``resource_missing`` (404), ``authentication`` (401), ``permission`` (403), ``idempotency``
(400 ``idempotency_error``), ``conflict`` (409), ``rate_limited`` (429 with ``Retry-After``),
``server_error`` (500), ``bad_gateway`` (502 HTML), ``hang`` (never answers), ``slow``
(answers after ``delay``), ``trickle`` (answers at once, but its body one byte every ``delay``
seconds), ``garbage`` (200 with a non-JSON body), ``drop`` (closes the connection without
answering). A refused connection is a stopped fake (``stop()``) or
``integrations.testing.unused_port_url()``. ``add_customer()``, ``add_payment_intent()``,
``confirm_payment_intent()`` and ``delete_customer()`` seed objects as Stripe's dashboard would;
``add_event()`` seeds an event, delivered to its webhook endpoint or not (``delivered``).

Usage::

    with FakeStripe(api_key="sk_test_123") as fake:
        service = StripeService(api_key="sk_test_123", base_url=fake.base_url)
        fake.fail("server_error", times=1)
        service.create_customer("a@example.com")
        assert fake.count("POST", "/v1/customers") == 2
"""

from __future__ import annotations

import copy
import re
import secrets
import string
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl

from .server import NOT_FOUND, FakeVendor, RecordedRequest, Reply

__all__ = ["BEHAVIOURS", "FAILURES", "FakeStripe", "form_params", "query_params"]

# --- object shapes, from stripe/openapi fixtures3.json (resources.customer, .payment_intent,
# .refund); values that describe an older object (a discount, a cancellation, a pending action)
# are reset to what a freshly created object has. -------------------------------------------

_CUSTOMER: dict[str, Any] = {
    "address": None,
    "balance": 0,
    "created": 1234567890,
    "currency": None,
    "default_source": None,
    "delinquent": False,
    "description": None,
    "discount": None,
    "email": None,
    "id": "cus_QXg1o8vcGmoR32",
    "invoice_prefix": "7FE1103",
    "invoice_settings": {
        "custom_fields": None,
        "default_payment_method": None,
        "footer": None,
        "rendering_options": None,
    },
    "livemode": False,
    "metadata": {},
    "name": None,
    "next_invoice_sequence": 1,
    "object": "customer",
    "phone": None,
    "preferred_locales": [],
    "shipping": None,
    "tax_exempt": "none",
    "test_clock": None,
}

_PAYMENT_INTENT: dict[str, Any] = {
    "amount": 1099,
    "amount_capturable": 0,
    "amount_details": {"tip": {}},
    "amount_received": 0,
    "application": None,
    "application_fee_amount": None,
    "automatic_payment_methods": {"enabled": True},
    "canceled_at": None,
    "cancellation_reason": None,
    "capture_method": "automatic",
    "client_secret": "pi_1PgafyB7WZ01zgkWSjxsAJo3_secret_Dm43xiq1k0ywrRRjDoi8y1gkM",
    "confirmation_method": "automatic",
    "created": 1234567890,
    "currency": "usd",
    "customer": None,
    "description": None,
    "excluded_payment_method_types": None,
    "id": "pi_1PgafyB7WZ01zgkWSjxsAJo3",
    "last_payment_error": None,
    "latest_charge": None,
    "livemode": False,
    "metadata": {},
    "next_action": None,
    "object": "payment_intent",
    "on_behalf_of": None,
    "payment_method": None,
    "payment_method_configuration_details": None,
    "payment_method_options": {},
    "payment_method_types": ["card"],
    "processing": None,
    "receipt_email": None,
    "review": None,
    "setup_future_usage": None,
    "shipping": None,
    "source": None,
    "statement_descriptor": None,
    "statement_descriptor_suffix": None,
    "status": "requires_payment_method",
    "transfer_data": None,
    "transfer_group": None,
}

_REFUND: dict[str, Any] = {
    "amount": 100,
    "balance_transaction": None,
    "charge": "ch_1PgafuB7WZ01zgkWXYmPNZs8",
    "created": 1234567890,
    "currency": "usd",
    "destination_details": {"card": {"type": "refund"}, "type": "card"},
    "id": "re_1Pgc72B7WZ01zgkWqPvrRrPE",
    "metadata": {},
    "object": "refund",
    "payment_intent": None,
    "payment_method": None,
    "reason": None,
    "receipt_number": None,
    "source_transfer_reversal": None,
    "status": "succeeded",
    "transfer_reversal": None,
}


def _error(status: int, **error: Any) -> tuple[int, dict[str, Any]]:
    return status, {"error": {k: v for k, v in error.items() if v is not None}}


#: Scriptable Stripe-shaped error answers: name -> (HTTP status, body). Bodies follow Stripe's
#: API reference, "Errors" (type, code, decline_code, message, param, doc_url).
FAILURES: dict[str, tuple[int, dict[str, Any]]] = {
    "card_declined": _error(
        402,
        code="card_declined",
        decline_code="generic_decline",
        doc_url="https://stripe.com/docs/error-codes/card-declined",
        message="Your card was declined.",
        param="",
        type="card_error",
    ),
    "invalid_request": _error(
        400,
        code="parameter_missing",
        doc_url="https://stripe.com/docs/error-codes/parameter-missing",
        message="Missing required param: currency.",
        param="currency",
        type="invalid_request_error",
    ),
    "resource_missing": _error(
        404,
        code="resource_missing",
        doc_url="https://stripe.com/docs/error-codes/resource-missing",
        message="No such customer: 'cus_missing'",
        param="id",
        type="invalid_request_error",
    ),
    "authentication": _error(
        401,
        message="Invalid API Key provided: sk_test_********************0000",
        type="invalid_request_error",
    ),
    "permission": _error(
        403,
        code="secret_key_required",
        message="The provided key 'rk_test_***0000' does not have the required permissions "
        "for this endpoint.",
        type="invalid_request_error",
    ),
    "idempotency": _error(
        400,
        message="Keys for idempotent requests can only be used with the same parameters they "
        "were first used with.",
        type="idempotency_error",
    ),
    "conflict": _error(
        409,
        message="There is currently another in-progress request using this idempotent key "
        "(that probably means you submitted twice, and the other request is still going "
        "through). Please try again later.",
        type="idempotency_error",
    ),
    "rate_limited": _error(
        429,
        code="rate_limit",
        doc_url="https://stripe.com/docs/error-codes/rate-limit",
        message="Request rate limit exceeded. Learn more about rate limits here "
        "https://stripe.com/docs/rate-limits.",
        type="invalid_request_error",
    ),
    "server_error": _error(500, message="An unknown error occurred", type="api_error"),
}

#: Behaviours that are not a Stripe error body.
BEHAVIOURS = frozenset({"hang", "slow", "trickle", "garbage", "drop", "bad_gateway"})
#: Behaviours that answer as Stripe would, only late or slowly.
_PACED = frozenset({"slow", "trickle"})

_ALPHANUM = string.ascii_letters + string.digits


def _new_id(prefix: str, length: int = 24) -> str:
    return prefix + "".join(secrets.choice(_ALPHANUM) for _ in range(length))


def _reply(status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Reply:
    return Reply.json(
        body, status=status, headers={"Request-Id": _new_id("req_", 14), **(headers or {})}
    )


def _failure_reply(script: _Script) -> Reply:
    kind = script.kind
    if kind == "hang":
        return Reply.hang()
    if kind == "drop":
        return Reply.disconnect()
    if kind == "garbage":
        return Reply.garbage(
            b"<html><body>upstream says hi</body></html>", content_type="text/html"
        )
    if kind == "bad_gateway":
        return Reply.text(
            "<html><body>502 Bad Gateway</body></html>", status=502, content_type="text/html"
        )
    status, body = FAILURES[kind]
    headers = {}
    if kind == "rate_limited" and script.retry_after:
        headers["Retry-After"] = script.retry_after
    if script.should_retry is not None:
        headers["Stripe-Should-Retry"] = "true" if script.should_retry else "false"
    return _reply(status, copy.deepcopy(body), headers)


def form_params(request: RecordedRequest) -> dict[str, str]:
    """The form-encoded parameters of a recorded POST (or the query of a GET)."""
    raw = request.body.decode("utf-8", "replace") if request.method == "POST" else request.query
    return dict(parse_qsl(raw, keep_blank_values=True))


def query_params(request: RecordedRequest) -> list[tuple[str, str]]:
    """The query of a recorded GET as (name, value) pairs, repeated names kept in order."""
    return parse_qsl(request.query, keep_blank_values=True)


#: The API version the fake's events say they were rendered with.
API_VERSION = "2024-06-20"


@dataclass
class _Script:
    kind: str
    remaining: int | None  # None: until healed
    path: str | None
    method: str | None
    retry_after: str | None
    delay: float
    should_retry: bool | None = None

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and (
            self.path is None or path == self.path or path.startswith(self.path.rstrip("/") + "/")
        )


class FakeStripe(FakeVendor):
    """A ``FakeVendor`` that behaves like Stripe's v1 API (see the module doc).

    ``api_key``: when set, requests must carry ``Authorization: Bearer <api_key>`` or get a 401
    like Stripe's (the key masked). Routes scripted with ``route()`` take precedence over the
    Stripe behaviour (to serve an answer Stripe would not give, for instance).
    """

    def __init__(self, *, api_key: str | None = None, host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port)
        self.api_key = api_key
        self.customers: dict[str, dict[str, Any]] = {}
        self.payment_intents: dict[str, dict[str, Any]] = {}
        self.refunds: dict[str, dict[str, Any]] = {}
        #: Seeded events, in creation order (the list answers them newest first).
        self.events: dict[str, dict[str, Any]] = {}
        #: Event id -> whether its webhook delivery succeeded.
        self.delivered: dict[str, bool] = {}
        self._scripts: list[_Script] = []
        self._idempotent: dict[str, tuple[str, str, dict[str, str], int, dict[str, Any]]] = {}
        self._state = threading.RLock()

    def __enter__(self) -> FakeStripe:
        self.start()
        return self

    @property
    def base_url(self) -> str:
        """What to give ``StripeService(base_url=...)`` (the SDK's api base)."""
        return self.url

    # --- scripting -----------------------------------------------------------------------

    def fail(
        self,
        kind: str,
        *,
        times: int | None = 1,
        path: str | None = None,
        method: str | None = None,
        retry_after: float | str | None = 1,
        delay: float = 1.0,
        should_retry: bool | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests (``None``: all until ``heal()``) with
        failure ``kind`` (a key of ``FAILURES``, or ``hang``, ``slow``, ``trickle``,
        ``garbage``, ``drop``, ``bad_gateway``). ``path`` matches that path and those below it.
        ``retry_after`` is sent with ``rate_limited`` (None: no header); ``should_retry`` sends
        Stripe's ``Stripe-Should-Retry: true|false`` with an error body; ``slow`` waits
        ``delay`` seconds, then answers normally; ``trickle`` answers normally at once, but
        sends its body one byte every ``delay`` seconds."""
        if kind not in FAILURES and kind not in BEHAVIOURS:
            raise ValueError(f"unknown failure {kind!r}")
        with self._state:
            self._scripts.append(
                _Script(
                    kind=kind,
                    remaining=times,
                    path=path,
                    method=method.upper() if method else None,
                    retry_after=None if retry_after is None else f"{retry_after}",
                    delay=delay,
                    should_retry=should_retry,
                )
            )

    def heal(self) -> None:
        """Forget every scripted failure."""
        with self._state:
            self._scripts.clear()

    def _take_script(self, method: str, path: str) -> _Script | None:
        with self._state:
            for script in self._scripts:
                if script.matches(method, path):
                    if script.remaining is not None:
                        script.remaining -= 1
                        if script.remaining <= 0:
                            self._scripts.remove(script)
                    return script
        return None

    def reset(self) -> None:
        """Forget requests, routes, scripts, objects and idempotency keys."""
        super().reset()
        with self._state:
            self._scripts.clear()
            self._idempotent.clear()
            self.customers.clear()
            self.payment_intents.clear()
            self.refunds.clear()
            self.events.clear()
            self.delivered.clear()

    def idempotency_keys(
        self, method: str | None = None, path: str | None = None
    ) -> list[str | None]:
        """The ``Idempotency-Key`` of each request (None where absent), in order."""
        return self.headers_seen("Idempotency-Key", method, path)

    # --- seeding (as Stripe's dashboard or test helpers would) -----------------------------

    def add_customer(self, *, email: str | None = None, name: str | None = None) -> dict[str, Any]:
        with self._state:
            return copy.deepcopy(self._create_customer({"email": email or "", "name": name or ""}))

    def delete_customer(self, customer_id: str) -> None:
        with self._state:
            self.customers[customer_id] = {"id": customer_id, "object": "customer", "deleted": True}

    def add_payment_intent(
        self,
        *,
        amount: int = 1099,
        currency: str = "usd",
        customer: str | None = None,
        status: str = "succeeded",
    ) -> dict[str, Any]:
        with self._state:
            pi = self._new_payment_intent(amount, currency, customer)
            if status == "succeeded":
                self._succeed(pi)
            else:
                pi["status"] = status
            return copy.deepcopy(pi)

    def confirm_payment_intent(self, payment_intent_id: str) -> None:
        """Move a payment intent to ``succeeded``, as a confirmed card payment would."""
        with self._state:
            self._succeed(self.payment_intents[payment_intent_id])

    def add_event(
        self,
        event_type: str = "payment_intent.succeeded",
        *,
        data_object: Mapping[str, Any] | None = None,
        created: int | None = None,
        delivered: bool = False,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        """Seed an event as Stripe would make it (``object: "event"``, ``data.object``), its
        webhook delivery ``delivered`` or not (listed with ``delivery_success=false`` until
        ``mark_delivered``). ``data_object`` defaults to a fresh object of the type's resource
        (a payment intent, a customer, a refund, else a bare object)."""
        with self._state:
            if data_object is None:
                data_object = self._object_for(event_type)
            event: dict[str, Any] = {
                "id": event_id or _new_id("evt_"),
                "object": "event",
                "api_version": API_VERSION,
                "created": int(time.time()) if created is None else created,
                "data": {"object": copy.deepcopy(dict(data_object))},
                "livemode": False,
                "pending_webhooks": 0 if delivered else 1,
                "request": {"id": _new_id("req_", 14), "idempotency_key": None},
                "type": event_type,
            }
            self.events[event["id"]] = event
            self.delivered[event["id"]] = delivered
            return copy.deepcopy(event)

    def mark_delivered(self, event_id: str) -> None:
        """Record that ``event_id``'s webhook delivery succeeded (it leaves the
        ``delivery_success=false`` list)."""
        with self._state:
            self.delivered[event_id] = True
            self.events[event_id]["pending_webhooks"] = 0

    def answer_events(self, request: RecordedRequest) -> Reply:
        """The fake's own answer to a ``GET /v1/events`` request: for a route scripted with
        ``route()`` that passes some requests through (``route("GET", "/v1/events",
        fake.answer_events, Reply.server_error())``: the first page answers, the next fail)."""
        with self._state:
            return _reply(*self._list_events(query_params(request)))

    def _object_for(self, event_type: str) -> dict[str, Any]:
        resource = event_type.split(".", 1)[0]
        if resource == "payment_intent":
            return copy.deepcopy(self._new_payment_intent(1099, "usd", None))
        if resource == "customer" and event_type.count(".") == 1:
            return copy.deepcopy(self._create_customer({}))
        if resource == "refund":
            refund = copy.deepcopy(_REFUND)
            refund.update(id=_new_id("re_"), created=int(time.time()))
            return refund
        return {"id": _new_id("obj_", 14), "object": resource}

    # --- request handling ----------------------------------------------------------------

    def _dispatch(self, request: RecordedRequest) -> Reply:
        scripted = super()._dispatch(request)  # records the request; a scripted route wins
        if scripted is not NOT_FOUND:
            return scripted
        script = self._take_script(request.method, request.path)
        if script is not None and script.kind not in _PACED:
            return _failure_reply(script)
        reply = self._answer(request)
        if script is None:
            return reply
        if script.kind == "trickle":
            return Reply.trickle(reply, interval=script.delay)
        return replace(reply, delay=script.delay)

    def _answer(self, request: RecordedRequest) -> Reply:
        denied = self._check_key(request.header("Authorization"))
        if denied is not None:
            return denied
        if request.method == "GET" and request.path == "/v1/events":
            return self.answer_events(request)
        method, path, params = request.method, request.path, form_params(request)
        key = request.header("Idempotency-Key") if method == "POST" else None
        with self._state:
            if key is not None and key in self._idempotent:
                first_method, first_path, first_params, status, body = self._idempotent[key]
                if (first_method, first_path, first_params) != (method, path, params):
                    return _reply(
                        *_error(
                            400,
                            message="Keys for idempotent requests can only be used with the "
                            "same parameters they were first used with. Try using a key other "
                            f"than '{key}' if you meant to execute a different request.",
                            type="idempotency_error",
                        )
                    )
                return _reply(status, copy.deepcopy(body), {"Idempotent-Replayed": "true"})
            status, body = self._route(method, path, params)
            # Stripe saves a result once the endpoint has started executing: successes here.
            if key is not None and status < 400:
                self._idempotent[key] = (method, path, params, status, copy.deepcopy(body))
            return _reply(status, body)

    def _check_key(self, authorization: str | None) -> Reply | None:
        if self.api_key is None:
            return None
        if not authorization or not authorization.startswith("Bearer "):
            return _reply(
                *_error(
                    401,
                    message="You did not provide an API key. You need to provide your API key "
                    "in the Authorization header, using Bearer auth.",
                    type="invalid_request_error",
                )
            )
        given = authorization[len("Bearer ") :]
        if not secrets.compare_digest(given.encode(), self.api_key.encode()):
            masked = given[:8] + "*" * max(0, len(given) - 12) + given[-4:]
            return _reply(
                *_error(
                    401, message=f"Invalid API Key provided: {masked}", type="invalid_request_error"
                )
            )
        return None

    def _route(self, method: str, path: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if method == "POST" and path == "/v1/customers":
            return 200, copy.deepcopy(self._create_customer(params))
        if method == "GET" and path.startswith("/v1/customers/"):
            customer_id = path[len("/v1/customers/") :]
            customer = self.customers.get(customer_id)
            if customer is None:
                return _missing("customer", customer_id, 404, param="id")
            return 200, copy.deepcopy(customer)
        if method == "POST" and path == "/v1/payment_intents":
            return self._create_payment_intent(params)
        if method == "POST" and path == "/v1/refunds":
            return self._create_refund(params)
        return _error(
            404,
            message=f"Unrecognized request URL ({method}: {path}). Please see "
            "https://stripe.com/docs or we can help at https://support.stripe.com/.",
            type="invalid_request_error",
        )

    def _list_events(self, query: list[tuple[str, str]]) -> tuple[int, dict[str, Any]]:
        """``GET /v1/events`` as Stripe answers it: filters, newest first, a cursor, a page."""
        single = {name: value for name, value in query if not _is_array(name, "types")}
        types = [value for name, value in query if _is_array(name, "types")]
        if "type" in single and types:
            return _invalid("You may only specify one of these parameters: type, types.", "type")
        limit = 10
        if "limit" in single:
            limit_value = _integer(single["limit"])
            if limit_value is None:
                return _invalid_integer("limit", single["limit"])
            if not 1 <= limit_value <= 100:
                return _invalid(
                    "This value must be greater than or equal to 1 and less than or equal to 100.",
                    "limit",
                )
            limit = limit_value
        events = sorted(self.events.values(), key=lambda e: e["created"], reverse=True)
        success = single.get("delivery_success")
        if success is not None:
            if success not in ("true", "false"):
                return _invalid(f"Invalid boolean: {success}", "delivery_success")
            events = [e for e in events if self.delivered[e["id"]] == (success == "true")]
        for bound, keep in _CREATED_BOUNDS.items():
            if f"created[{bound}]" in single:
                value = _integer(single[f"created[{bound}]"])
                if value is None:
                    return _invalid_integer(f"created[{bound}]", single[f"created[{bound}]"])
                events = [e for e in events if keep(e["created"], value)]
        if "type" in single:
            pattern = re.compile(
                "^" + ".*".join(re.escape(part) for part in single["type"].split("*")) + "$"
            )
            events = [e for e in events if pattern.match(e["type"])]
        if types:
            if len(types) > 20:
                return _invalid("types may hold at most 20 event types.", "types")
            events = [e for e in events if e["type"] in types]
        ids = [e["id"] for e in events]
        for cursor in ("starting_after", "ending_before"):
            if cursor in single and single[cursor] not in self.events:
                return _missing("event", single[cursor], 400, param=cursor)
        if "starting_after" in single:
            after = single["starting_after"]
            events = events[ids.index(after) + 1 :] if after in ids else []
        elif "ending_before" in single:
            before = single["ending_before"]
            events = events[: ids.index(before)][-limit:] if before in ids else []
        page = events[:limit]
        return 200, {
            "object": "list",
            "data": copy.deepcopy(page),
            "has_more": len(events) > limit,
            "url": "/v1/events",
        }

    def _create_customer(self, params: Mapping[str, str]) -> dict[str, Any]:
        customer = copy.deepcopy(_CUSTOMER)
        customer.update(
            id=_new_id("cus_", 14),
            created=int(time.time()),
            email=params.get("email") or None,
            name=params.get("name") or None,
            invoice_prefix="".join(secrets.choice("0123456789ABCDEF") for _ in range(7)),
        )
        self.customers[customer["id"]] = customer
        return customer

    def _new_payment_intent(
        self, amount: int, currency: str, customer: str | None
    ) -> dict[str, Any]:
        pi = copy.deepcopy(_PAYMENT_INTENT)
        pi_id = _new_id("pi_")
        pi.update(
            id=pi_id,
            amount=amount,
            currency=currency.lower(),
            customer=customer,
            created=int(time.time()),
            client_secret=f"{pi_id}_secret_{_new_id('', 25)}",
        )
        self.payment_intents[pi_id] = pi
        return pi

    @staticmethod
    def _succeed(pi: dict[str, Any]) -> None:
        pi.update(
            status="succeeded",
            amount_received=pi["amount"],
            latest_charge=pi["latest_charge"] or _new_id("ch_"),
            payment_method=pi["payment_method"] or _new_id("pm_"),
        )

    def _create_payment_intent(self, params: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        for name in ("amount", "currency"):
            if not params.get(name):
                return _param_missing(name)
        amount = _integer(params["amount"])
        if amount is None:
            return _invalid_integer("amount", params["amount"])
        if amount < 1:
            return _error(
                400,
                code="amount_too_small",
                message="Amount must be at least 1.",
                param="amount",
                type="invalid_request_error",
            )
        customer = params.get("customer") or None
        if customer is not None and customer not in self.customers:
            return _missing("customer", customer, 400, param="customer")
        return 200, copy.deepcopy(self._new_payment_intent(amount, params["currency"], customer))

    def _create_refund(self, params: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        pi_id = params.get("payment_intent")
        if not pi_id:
            return _error(
                400,
                code="parameter_missing",
                message="One of the following params should be provided for this request: "
                "payment_intent or charge.",
                type="invalid_request_error",
            )
        pi = self.payment_intents.get(pi_id)
        if pi is None:
            return _missing("payment_intent", pi_id, 400, param="payment_intent")
        if pi["status"] != "succeeded":
            return _error(
                400,
                message=f"This PaymentIntent ({pi_id}) does not have a successful charge to "
                "refund.",
                param="payment_intent",
                type="invalid_request_error",
            )
        refunded = sum(r["amount"] for r in self.refunds.values() if r["payment_intent"] == pi_id)
        left = pi["amount_received"] - refunded
        amount = left
        if params.get("amount"):
            amount = _integer(params["amount"])
            if amount is None:
                return _invalid_integer("amount", params["amount"])
        if amount < 1:
            return _error(
                400,
                code="amount_too_small",
                message="Refund amount must be at least 1.",
                param="amount",
                type="invalid_request_error",
            )
        if amount > left:
            return _error(
                400,
                code="amount_too_large",
                message=f"Refund amount ({amount}) is greater than unrefunded amount on "
                f"charge ({left})",
                param="amount",
                type="invalid_request_error",
            )
        refund = copy.deepcopy(_REFUND)
        refund.update(
            id=_new_id("re_"),
            amount=amount,
            charge=pi["latest_charge"],
            currency=pi["currency"],
            payment_intent=pi_id,
            payment_method=pi["payment_method"],
            created=int(time.time()),
        )
        self.refunds[refund["id"]] = refund
        return 200, copy.deepcopy(refund)


#: ``created[...]`` filters: bound -> whether an event created at ``created`` is kept.
_CREATED_BOUNDS: dict[str, Any] = {
    "gte": lambda created, value: created >= value,
    "gt": lambda created, value: created > value,
    "lte": lambda created, value: created <= value,
    "lt": lambda created, value: created < value,
}


def _is_array(name: str, field: str) -> bool:
    """Whether ``name`` is an item of array ``field``: ``types[]`` or ``types[0]`` (how
    stripe-python encodes a list)."""
    return name == f"{field}[]" or (
        name.startswith(f"{field}[") and name.endswith("]") and name[len(field) + 1 : -1].isdigit()
    )


def _invalid(message: str, param: str) -> tuple[int, dict[str, Any]]:
    return _error(400, message=message, param=param, type="invalid_request_error")


def _integer(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def _param_missing(name: str) -> tuple[int, dict[str, Any]]:
    return _error(
        400,
        code="parameter_missing",
        doc_url="https://stripe.com/docs/error-codes/parameter-missing",
        message=f"Missing required param: {name}.",
        param=name,
        type="invalid_request_error",
    )


def _invalid_integer(name: str, value: str) -> tuple[int, dict[str, Any]]:
    return _error(
        400,
        code="parameter_invalid_integer",
        message=f"Invalid integer: {value}",
        param=name,
        type="invalid_request_error",
    )


def _missing(kind: str, object_id: str, status: int, *, param: str) -> tuple[int, dict[str, Any]]:
    return _error(
        status,
        code="resource_missing",
        doc_url="https://stripe.com/docs/error-codes/resource-missing",
        message=f"No such {kind}: '{object_id}'",
        param=param,
        type="invalid_request_error",
    )
