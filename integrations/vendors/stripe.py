"""Stripe, through the official ``stripe`` SDK, with our timeouts, retries, breaker and errors.

``StripeService`` is the service ``"stripe"`` (also its circuit breaker's name). Each public
method makes one logical call under the service's ``integrations.calls.CallPolicy``, as every
``ServiceClient`` does: every attempt is checked against and counted by the shared database
breaker, retries and waits are bounded by the call's deadline, each attempt's socket operations
end by that deadline and its answer is read up to ``MAX_RESPONSE_BYTES``, and creates carry an
idempotency key made once per call (or given by the caller) and sent unchanged on every attempt.
The SDK's own retries are switched off (``max_network_retries=0``) so that retries are never
stacked: stripe-python retries without our breaker and deadline, and makes a fresh idempotency
key per request, so a Celery task retried later would lose Stripe's deduplication.

Answers come back as small frozen dataclasses of the fields we use (``Customer``,
``PaymentIntent``, ``Refund``), never the SDK's objects; Stripe's errors are mapped onto
``integrations.exceptions`` (see ``map_stripe_error``) with messages that never contain the key.

Settings (read at call time)::

    INTEGRATIONS = {"SERVICES": {"stripe": {
        "API_KEY": os.environ["STRIPE_API_KEY"],
        "BASE_URL": None,              # the SDK's api base; a local fake in tests
        "TIMEOUT": {"READ": 20.0},     # and RETRY, BREAKER: as for every service
    }}}
"""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
import uuid
import weakref
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import httpx
import stripe
from django.core.exceptions import ImproperlyConfigured
from django.views.decorators.debug import sensitive_variables

from tether.conf import SECRET_VARIABLES, SecretStr
from tether.fork import after_fork
from tether.vendor_events import ListingFailed

from ..calls import CallPolicy, PolicyOverrides
from ..client import parse_retry_after
from ..conf import service_settings
from ..exceptions import (
    ClientRequestError,
    IntegrationError,
    IntegrationTimeout,
    IntegrationUnavailable,
    InvalidResponseError,
    RateLimitedError,
)
from ..policies import BreakerPolicy, RetryPolicy, Timeout
from ..resilience import AttemptInfo
from ..transport import (
    ResponseRefused,
    bounded_async_client,
    bounded_client,
    current_bounds,
    httpx_timeout,
)

if TYPE_CHECKING:  # the SDK's request types (its run-time module layout varies by version)
    from stripe.params import CustomerCreateParams, PaymentIntentCreateParams, RefundCreateParams

__all__ = [
    "EVENTS_PAGE_SIZE",
    "SERVICE",
    "Customer",
    "EventPage",
    "PaymentIntent",
    "Refund",
    "StripeService",
    "list_undelivered_events",
    "map_stripe_error",
]

#: The service name: settings key, breaker name, and the ``service`` of every error.
SERVICE = "stripe"

T = TypeVar("T")

#: Stripe accepts idempotency keys of up to 255 characters.
MAX_IDEMPOTENCY_KEY_LENGTH = 255


# --- what we extract ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Customer:
    """A Stripe customer: the fields we use."""

    id: str
    email: str | None
    name: str | None


@dataclass(frozen=True)
class PaymentIntent:
    """A Stripe payment intent: ``amount`` in the currency's smallest unit, ``currency``
    lower-case ISO code, ``status`` as Stripe says (``requires_payment_method``, ``succeeded``,
    ...), ``customer`` the customer id or None."""

    id: str
    amount: int
    currency: str
    status: str
    customer: str | None


@dataclass(frozen=True)
class Refund:
    """A Stripe refund: the fields we use."""

    id: str
    amount: int
    status: str
    payment_intent: str | None


@dataclass(frozen=True)
class EventPage:
    """One page of ``GET /v1/events``: the events as Stripe sent them (JSON objects, newest
    first), and whether more follow (``has_more``)."""

    events: tuple[Mapping[str, Any], ...]
    has_more: bool


#: Events asked for per page: Stripe's largest ``limit``.
EVENTS_PAGE_SIZE = 100
#: Stripe keeps events listable for 30 days; at 100 a page this bounds a listing at a million.
MAX_EVENT_PAGES = 10_000


class _BadField(Exception):
    """A field of Stripe's answer is missing or of the wrong type (becomes InvalidResponseError)."""


def _field(data: Mapping[str, Any], name: str, kind: type, *, nullable: bool = False) -> Any:
    if name not in data:
        raise _BadField(f"field {name!r} missing from Stripe's answer")
    value = data[name]
    if value is None and nullable:
        return None
    if kind is str and isinstance(value, Mapping) and isinstance(value.get("id"), str):
        return value["id"]  # an expanded object where we keep its id
    if not isinstance(value, kind) or isinstance(value, bool):
        raise _BadField(f"field {name!r} of Stripe's answer is not {kind.__name__}")
    return value


def _customer(data: Mapping[str, Any]) -> Customer:
    return Customer(
        id=_field(data, "id", str),
        email=_field(data, "email", str, nullable=True),
        name=_field(data, "name", str, nullable=True),
    )


def _payment_intent(data: Mapping[str, Any]) -> PaymentIntent:
    return PaymentIntent(
        id=_field(data, "id", str),
        amount=_field(data, "amount", int),
        currency=_field(data, "currency", str),
        status=_field(data, "status", str),
        customer=_field(data, "customer", str, nullable=True),
    )


def _refund(data: Mapping[str, Any]) -> Refund:
    return Refund(
        id=_field(data, "id", str),
        amount=_field(data, "amount", int),
        status=_field(data, "status", str),
        payment_intent=_field(data, "payment_intent", str, nullable=True),
    )


def _event_page(data: Mapping[str, Any], *, limit: int) -> EventPage:
    """The page from Stripe's list object: ``data`` a list of at most ``limit`` items and
    ``has_more`` a boolean; when more follow, the last item must be an object with a string
    ``id`` (where the next page starts). A page larger than asked for is refused whole (a
    hostile or broken answer), not cut. The items are not checked further here: the caller
    refuses a malformed one on its own, and the others are kept."""
    events = _field(data, "data", list)
    has_more = data.get("has_more")
    if not isinstance(has_more, bool):  # (_field takes no bool: it is an int to Python)
        raise _BadField("field 'has_more' of Stripe's answer is missing or not a boolean")
    if len(events) > limit:
        raise _BadField(f"Stripe answered {len(events)} events for a page of {limit}")
    if has_more:
        last = events[-1] if events else None
        if not isinstance(last, Mapping) or not isinstance(last.get("id"), str):
            raise _BadField("Stripe answered has_more without an event id to go on from")
    return EventPage(events=tuple(events), has_more=has_more)


# --- error mapping ------------------------------------------------------------------------------

#: The request was refused for what it is (declined card, bad parameter, key without rights,
#: misused idempotency key, and the v2 API's business refusals): a ``ClientRequestError``, never
#: retried, not a breaker failure.
_CLIENT_ERRORS: tuple[type[stripe.StripeError], ...] = (
    stripe.CardError,
    stripe.InvalidRequestError,
    stripe.AuthenticationError,
    stripe.PermissionError,
    stripe.IdempotencyError,
    stripe.AlreadyCanceledError,
    stripe.BlockedByStripeError,
    stripe.CannotProceedError,
    stripe.CapabilityNotEnabledError,
    stripe.ControlledByAlternateResourceError,
    stripe.FeatureNotEnabledError,
    stripe.FinancialAccountNotOpenError,
    stripe.FxQuoteNeedsRefreshError,
    stripe.InsufficientFundsError,
    stripe.InvalidPaymentMethodError,
    stripe.InvalidPayoutMethodError,
    stripe.InvalidVaultedCredentialError,
    stripe.NotCancelableError,
    stripe.QuotaExceededError,
    stripe.RecipientNotNotifiableError,
    stripe.TemporarySessionExpiredError,
    stripe.VerificationAttemptFailedError,
    stripe.VerificationExpiredError,
    stripe.VerificationNotInitiatedError,
)

_KEY_PATTERN = re.compile(r"\b(?:sk|rk)_(?:test|live)_[A-Za-z0-9*]+")
_TIMEOUT_CAUSES: tuple[type[BaseException], ...] = (httpx.TimeoutException, TimeoutError)
try:  # the SDK's default client, should a user plug it in
    import requests

    _TIMEOUT_CAUSES += (requests.exceptions.Timeout,)
except ImportError:  # pragma: no cover - requests is a dependency of stripe
    pass


def _redact(text: str, api_key: str | None) -> str:
    if api_key:
        text = text.replace(api_key, "[redacted]")
    return _KEY_PATTERN.sub("[redacted]", text)


def _reason(exc: stripe.StripeError, api_key: str | None) -> str:
    error = exc.error
    parts = [
        getattr(error, "type", None) or type(exc).__name__,
        getattr(error, "code", None) or exc.code,
        getattr(error, "decline_code", None),
    ]
    label = "/".join(str(p) for p in parts if p)
    status = f" (HTTP {exc.http_status})" if exc.http_status else ""
    message = exc.user_message if isinstance(exc.user_message, str) else ""
    if isinstance(exc, stripe.APIError) and exc.http_status and not getattr(error, "type", None):
        message = "the answer was not a Stripe JSON object"  # never echo an arbitrary body
    message = _redact(message.splitlines()[0] if message else "", api_key)[:300]
    return f"{label}{status}: {message}" if message else f"{label}{status}"


def _cause(
    exc: BaseException, kinds: type[BaseException] | tuple[type[BaseException], ...]
) -> BaseException | None:
    """The first exception of ``kinds`` in ``exc``'s chain of causes, or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _is_timeout(exc: BaseException) -> bool:
    return _cause(exc, _TIMEOUT_CAUSES) is not None


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from the answer's ``Retry-After`` header (any case), if it has one."""
    return parse_retry_after(_header(headers, "retry-after"))


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """The value of the answer header ``name`` (lower case), in whatever case the SDK kept it."""
    return next((v for k, v in (headers or {}).items() if k.lower() == name), None)


@sensitive_variables(*SECRET_VARIABLES)
def map_stripe_error(
    exc: stripe.StripeError, *, operation: str, api_key: str | None = None
) -> IntegrationError:
    """Our error for one of the SDK's: see the table in API-CONTRACTS.md ("Stripe").

    Stripe's ``Stripe-Should-Retry`` answer header, when present, overrides whether the error
    is retried (as stripe-python's own retry logic does): ``false`` where a retry with the same
    idempotency key would only replay the saved answer, ``true`` for a lock conflict.
    """
    error = _map(exc, operation=operation, api_key=api_key)
    should_retry = _header(exc.headers, "stripe-should-retry")
    if should_retry in ("true", "false"):
        error.retryable = should_retry == "true"
    return error


def _map(exc: stripe.StripeError, *, operation: str, api_key: str | None) -> IntegrationError:
    reason = _reason(exc, api_key)
    status = exc.http_status
    kwargs: dict[str, Any] = {"cause": exc}
    if isinstance(exc, stripe.APIConnectionError):
        refused = _cause(exc, ResponseRefused)  # too large, or in a coding we did not ask for
        if refused is not None:
            return InvalidResponseError(SERVICE, operation, f"Stripe: {refused}", **kwargs)
        if _is_timeout(exc):
            return IntegrationTimeout(SERVICE, operation, "Stripe did not answer in time", **kwargs)
        return IntegrationUnavailable(SERVICE, operation, "Stripe could not be reached", **kwargs)
    if isinstance(exc, stripe.RateLimitError) or status == 429:
        return RateLimitedError(
            SERVICE, operation, reason, retry_after=_retry_after(exc.headers), **kwargs
        )
    if isinstance(exc, _CLIENT_ERRORS):
        return ClientRequestError(SERVICE, operation, reason, status_code=status, **kwargs)
    if isinstance(exc, stripe.SignatureVerificationError):
        # Inbound only (webhooks.providers.stripe); met here it can only mean data we cannot
        # trust: an invalid response, not retried.
        return InvalidResponseError(SERVICE, operation, reason, **kwargs)
    # APIError, the StripeError base and anything newer: decide by the HTTP status.
    if status is not None and status < 400:
        return InvalidResponseError(SERVICE, operation, reason, **kwargs)
    if status is not None and status < 500:
        return ClientRequestError(SERVICE, operation, reason, status_code=status, **kwargs)
    if status == 503:
        kwargs["retry_after"] = _retry_after(exc.headers)
    return IntegrationUnavailable(SERVICE, operation, reason, status_code=status, **kwargs)


def _without_frames(exc: BaseException) -> BaseException:
    """``exc`` and the exceptions it came from, without their tracebacks. The SDK's and httpx's
    frames hold the request's headers, ``Authorization: Bearer <API key>`` among them, and
    error reporters (Django's technical 500 page, Sentry) show frames' variables; the types
    and messages of the chain are kept (our error's message is redacted, ``_reason``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        current = current.__cause__ or current.__context__
    return exc


# --- the SDK's HTTP client ----------------------------------------------------------------------


class _HTTPXClient(stripe.HTTPXClient):
    """stripe's own httpx client, with three adjustments:

    - it sends through ``integrations.transport.bounded_client()``, as every ``ServiceClient``
      does: every socket operation of an attempt ends by the call's deadline (a Stripe that
      trickles its answer is cut there) and the answer is read up to ``MAX_RESPONSE_BYTES``;
    - each request's httpx timeouts are capped by what the call's deadline leaves;
    - the form body goes as ``content=`` (httpx deprecates ``data=<str>``; stripe-python
      passes a string there).

    The same for the SDK's async methods, through ``bounded_async_client()`` (its deadline is
    ``CallPolicy.run_async``'s ``asyncio.timeout``).
    """

    def __init__(self, policy: Timeout) -> None:
        # The SDK's own sync client is not made; ours verifies certificates as the SDK's would.
        super().__init__(timeout=httpx_timeout(policy), allow_sync_methods=False)
        verify: ssl.SSLContext | bool = False
        if self._verify_ssl_certs:
            verify = ssl.create_default_context(cafile=stripe.ca_bundle_path)
        self._client = bounded_client(verify=verify)
        # The SDK's async methods (``StripeService``'s ``*_async``) send through the async twin;
        # an instance used on an event loop serves that loop only (``_sdk_client_async``).
        self._client_async = bounded_async_client(verify=verify)
        self.policy = policy

    def _get_request_args_kwargs(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any
    ) -> tuple[Any, dict[str, Any]]:
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        data = kwargs.get("data")
        if isinstance(data, str | bytes):
            kwargs["content"] = kwargs.pop("data")
        elif not data:
            kwargs.pop("data", None)
        bounds = current_bounds()
        if bounds is not None:
            kwargs["timeout"] = httpx_timeout(self.policy.capped(bounds.time_left()))
        return args, kwargs


# --- the service --------------------------------------------------------------------------------


class StripeService:
    """Customers, payment intents and refunds on Stripe.

    ``api_key`` and ``base_url`` default to ``INTEGRATIONS["SERVICES"]["stripe"]["API_KEY"]``
    and ``["BASE_URL"]``; ``timeout``, ``retry`` and ``breaker`` override the service's policies
    (a policy object, or a dict of some of its fields), over the class attributes of the same
    names and ``max_response_bytes``, as for ``ServiceClient``. Settings are read when a call is
    made, never at construction or import. An instance keeps one SDK client (one connection
    pool) and is safe to share between threads.
    """

    service: ClassVar[str] = SERVICE
    timeout: ClassVar[Timeout | Mapping[str, Any] | None] = None
    retry: ClassVar[RetryPolicy | Mapping[str, Any] | None] = None
    breaker: ClassVar[BreakerPolicy | Mapping[str, Any] | None] = None
    max_response_bytes: ClassVar[int | None] = None

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: Timeout | Mapping[str, Any] | None = None,
        retry: RetryPolicy | Mapping[str, Any] | None = None,
        breaker: BreakerPolicy | Mapping[str, Any] | None = None,
    ) -> None:
        self._api_key = SecretStr(api_key) if api_key is not None else None
        self._base_url = base_url
        self._overrides = PolicyOverrides(timeout=timeout, retry=retry, breaker=breaker)
        self._lock = threading.Lock()
        self._client: stripe.StripeClient | None = None
        self._http_client: stripe.HTTPXClient | None = None
        self._client_config: tuple[str, str | None, Timeout] | None = None
        #: event loop -> (its config, its SDK client), for the ``*_async`` methods.
        self._async_clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop,
            tuple[tuple[str, str | None, Timeout], stripe.StripeClient, stripe.HTTPXClient],
        ] = weakref.WeakKeyDictionary()
        _services.add(self)

    # --- public API ---------------------------------------------------------------------------
    #
    # Each call is described once (``_Request``: its operation, the SDK's sync and async methods,
    # how the answer is read, its idempotency key) and made by ``_call`` or, awaited, by
    # ``_call_async``: ``create_customer`` and ``create_customer_async`` are the same call.

    def create_customer(
        self, email: str, *, name: str | None = None, idempotency_key: str | None = None
    ) -> Customer:
        return self._call(self._create_customer(email, name, idempotency_key))

    async def create_customer_async(
        self, email: str, *, name: str | None = None, idempotency_key: str | None = None
    ) -> Customer:
        return await self._call_async(self._create_customer(email, name, idempotency_key))

    def retrieve_customer(self, customer_id: str) -> Customer:
        return self._call(self._retrieve_customer(customer_id))

    async def retrieve_customer_async(self, customer_id: str) -> Customer:
        return await self._call_async(self._retrieve_customer(customer_id))

    def create_payment_intent(
        self,
        amount: int,
        currency: str,
        *,
        customer: str | None = None,
        idempotency_key: str | None = None,
    ) -> PaymentIntent:
        return self._call(self._create_payment_intent(amount, currency, customer, idempotency_key))

    async def create_payment_intent_async(
        self,
        amount: int,
        currency: str,
        *,
        customer: str | None = None,
        idempotency_key: str | None = None,
    ) -> PaymentIntent:
        return await self._call_async(
            self._create_payment_intent(amount, currency, customer, idempotency_key)
        )

    def refund(
        self,
        payment_intent: str,
        *,
        amount: int | None = None,
        idempotency_key: str | None = None,
    ) -> Refund:
        return self._call(self._refund(payment_intent, amount, idempotency_key))

    async def refund_async(
        self,
        payment_intent: str,
        *,
        amount: int | None = None,
        idempotency_key: str | None = None,
    ) -> Refund:
        return await self._call_async(self._refund(payment_intent, amount, idempotency_key))

    # --- the calls, described once -----------------------------------------------------------

    @staticmethod
    def _create_customer(
        email: str, name: str | None, idempotency_key: str | None
    ) -> _Request[Customer]:
        params: CustomerCreateParams = {"email": email}
        if name is not None:
            params["name"] = name
        return _Request(
            "create_customer",
            lambda client, options: client.v1.customers.create(params=params, options=options),
            lambda client, options: client.v1.customers.create_async(
                params=params, options=options
            ),
            _customer,
            _key(idempotency_key),
        )

    @staticmethod
    def _retrieve_customer(customer_id: str) -> _Request[Customer]:
        if not customer_id:
            raise ValueError("customer_id is required")

        def build(data: Mapping[str, Any]) -> Customer:
            if data.get("deleted") is True:
                raise _Deleted(customer_id)
            return _customer(data)

        return _Request(
            "retrieve_customer",
            lambda client, options: client.v1.customers.retrieve(customer_id, options=options),
            lambda client, options: client.v1.customers.retrieve_async(
                customer_id, options=options
            ),
            build,
        )

    @staticmethod
    def _create_payment_intent(
        amount: int, currency: str, customer: str | None, idempotency_key: str | None
    ) -> _Request[PaymentIntent]:
        params: PaymentIntentCreateParams = {"amount": amount, "currency": currency}
        if customer is not None:
            params["customer"] = customer
        return _Request(
            "create_payment_intent",
            lambda client, options: client.v1.payment_intents.create(
                params=params, options=options
            ),
            lambda client, options: client.v1.payment_intents.create_async(
                params=params, options=options
            ),
            _payment_intent,
            _key(idempotency_key),
        )

    @staticmethod
    def _refund(
        payment_intent: str, amount: int | None, idempotency_key: str | None
    ) -> _Request[Refund]:
        params: RefundCreateParams = {"payment_intent": payment_intent}
        if amount is not None:
            params["amount"] = amount
        return _Request(
            "refund",
            lambda client, options: client.v1.refunds.create(params=params, options=options),
            lambda client, options: client.v1.refunds.create_async(params=params, options=options),
            _refund,
            _key(idempotency_key),
        )

    def list_events(
        self,
        *,
        created_gte: int | None = None,
        delivery_success: bool | None = None,
        types: Sequence[str] | None = None,
        starting_after: str | None = None,
        limit: int = EVENTS_PAGE_SIZE,
    ) -> EventPage:
        """One page of ``GET /v1/events`` (newest first): events created at or after
        ``created_gte`` (Unix seconds), ``delivery_success`` false for those whose webhook
        delivery has not yet succeeded, ``types`` (up to 20 exact names), after the event id
        ``starting_after``, at most ``limit`` (1 to 100) events. A page that is not a list of
        events with ids, or holds more than ``limit`` of them, is an ``InvalidResponseError``."""
        if not 1 <= limit <= EVENTS_PAGE_SIZE:
            raise ValueError(f"limit must be 1 to {EVENTS_PAGE_SIZE}")
        params: dict[str, Any] = {"limit": limit}
        if created_gte is not None:
            params["created"] = {"gte": int(created_gte)}
        if delivery_success is not None:
            params["delivery_success"] = delivery_success
        if types:
            if len(types) > 20:
                raise ValueError("Stripe takes at most 20 event types")
            params["types"] = list(types)
        if starting_after is not None:
            params["starting_after"] = starting_after
        return self._call(
            _Request(
                "list_events",
                lambda client, options: client.v1.events.list(
                    params=params,  # type: ignore[arg-type]
                    options=options,
                ),
                lambda client, options: client.v1.events.list_async(
                    params=params,  # type: ignore[arg-type]
                    options=options,
                ),
                lambda data: _event_page(data, limit=limit),
            )
        )

    def close(self) -> None:
        """Close the SDK client's connection pool (a later call opens a new one)."""
        with self._lock:
            http_client, self._http_client = self._http_client, None
            self._client = self._client_config = None
        if http_client is not None:
            http_client.close()

    def call_policy(self) -> CallPolicy:
        """The policies of this service's calls: settings, then class attributes, then
        constructor arguments. Every call runs under it."""
        return CallPolicy.resolve(SERVICE, type(self), self._overrides)

    # --- machinery ---------------------------------------------------------------------------

    @sensitive_variables(*SECRET_VARIABLES)
    def _call(self, request: _Request[T]) -> T:
        policy = self.call_policy()
        client, api_key = self._sdk_client(service_settings(SERVICE), policy.timeout)
        options = request.options()

        def attempt(info: AttemptInfo) -> T:
            try:
                obj = request.send(client, options.copy())
            except stripe.StripeError as exc:
                error = map_stripe_error(exc, operation=request.operation, api_key=api_key)
                raise error from _without_frames(exc)
            return request.read(obj)

        return policy.run(attempt, operation=request.operation)

    @sensitive_variables(*SECRET_VARIABLES)
    async def _call_async(self, request: _Request[T]) -> T:
        """``_call`` on an event loop: the SDK's async method, under ``CallPolicy.run_async``."""
        policy = self.call_policy()
        client, api_key = self._sdk_client_async(service_settings(SERVICE), policy.timeout)
        options = request.options()

        async def attempt(info: AttemptInfo) -> T:
            try:
                obj = await request.send_async(client, options.copy())
            except stripe.StripeError as exc:
                error = map_stripe_error(exc, operation=request.operation, api_key=api_key)
                raise error from _without_frames(exc)
            return request.read(obj)

        return await policy.run_async(attempt, operation=request.operation)

    @sensitive_variables(*SECRET_VARIABLES)
    def _sdk_client(
        self, settings: Mapping[str, Any], timeout: Timeout
    ) -> tuple[stripe.StripeClient, str]:
        api_key = self._api_key or settings.get("API_KEY")
        if not api_key:
            raise ImproperlyConfigured(
                "Stripe has no API key: set INTEGRATIONS['SERVICES']['stripe']['API_KEY'] "
                "or pass StripeService(api_key=...)."
            )
        base_url = self._base_url or settings.get("BASE_URL") or None
        config = (api_key, base_url, timeout)
        with self._lock:
            if self._client is None or self._client_config != config:
                if self._http_client is not None:
                    self._http_client.close()
                self._http_client = _HTTPXClient(timeout)
                self._client = _stripe_client(api_key, base_url, self._http_client)
                self._client_config = config
            return self._client, api_key

    @sensitive_variables(*SECRET_VARIABLES)
    def _sdk_client_async(
        self, settings: Mapping[str, Any], timeout: Timeout
    ) -> tuple[stripe.StripeClient, str]:
        """The running event loop's SDK client (an async httpx client's connections belong to
        the loop that opened them): one per loop, made again when the settings change."""
        api_key = self._api_key or settings.get("API_KEY")
        if not api_key:
            raise ImproperlyConfigured(
                "Stripe has no API key: set INTEGRATIONS['SERVICES']['stripe']['API_KEY'] "
                "or pass StripeService(api_key=...)."
            )
        base_url = self._base_url or settings.get("BASE_URL") or None
        config = (api_key, base_url, timeout)
        loop = asyncio.get_running_loop()
        kept = self._async_clients.get(loop)
        if kept is None or kept[0] != config:
            http_client = _HTTPXClient(timeout)
            client = _stripe_client(api_key, base_url, http_client)
            kept = self._async_clients[loop] = (config, client, http_client)
        return kept[1], api_key

    async def aclose(self) -> None:
        """Close the running event loop's SDK connection pool (``*_async`` calls)."""
        kept = self._async_clients.pop(asyncio.get_running_loop(), None)
        if kept is not None:
            await kept[2].close_async()


#: Every live service, so that a forked child (Celery prefork, gunicorn) drops its parent's
#: connections instead of sharing their sockets.
_services: weakref.WeakSet[StripeService] = weakref.WeakSet()


def _forget_clients_after_fork() -> None:
    for service in list(_services):
        service._lock = threading.Lock()
        service._client = service._http_client = service._client_config = None
        service._async_clients = weakref.WeakKeyDictionary()


after_fork(_forget_clients_after_fork)


class _Deleted(Exception):
    pass


# --- undelivered events, for webhooks' reconcile (through tether.vendor_events) ---------------


def list_undelivered_events(
    *, since: datetime, service: StripeService | None = None
) -> Iterator[Mapping[str, Any]]:
    """The events created at or after ``since`` whose webhook delivery has not succeeded
    (``GET /v1/events?delivery_success=false``), page after page, newest first: one
    ``list_events`` call per page, each under the service's breaker, timeouts and retries.

    Registered by ``IntegrationsConfig.ready()`` as the ``"stripe"`` lister of
    ``tether.vendor_events``: every error is raised as ``ListingFailed`` (the events already
    yielded stay yielded). Bounded: at most ``MAX_EVENT_PAGES`` pages, and a page that says
    ``has_more`` must move the cursor on (an empty page, or one ending on an id already seen,
    is an invalid answer rather than a loop).
    """
    owned = service is None
    service = service or StripeService()
    seen: set[str] = set()
    cursor: str | None = None
    try:
        for _page in range(MAX_EVENT_PAGES):
            try:
                page = service.list_events(
                    created_gte=int(since.timestamp()),
                    delivery_success=False,
                    starting_after=cursor,
                )
            except IntegrationError as exc:
                raise ListingFailed(str(exc), retryable=exc.retryable) from exc
            except ImproperlyConfigured as exc:
                raise ListingFailed(str(exc), retryable=False) from exc
            yield from page.events
            if not page.has_more:
                return
            last = page.events[-1]["id"]  # a string: _event_page checked it
            if last in seen:
                raise ListingFailed(
                    "Stripe: invalid answer to list_events: has_more, but the page ends on an "
                    "event already listed",
                    retryable=False,
                )
            seen.add(last)
            cursor = last
        raise ListingFailed(
            f"Stripe: more than {MAX_EVENT_PAGES} pages of undelivered events; stopped there",
            retryable=False,
        )
    finally:
        if owned:
            service.close()


@sensitive_variables(*SECRET_VARIABLES)
def _stripe_client(
    api_key: str, base_url: str | None, http_client: stripe.HTTPXClient
) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": base_url.rstrip("/")} if base_url else None,
        http_client=http_client,
        # Our runner retries (breaker-checked, deadline-bounded, with idempotency keys stable
        # across retries); the SDK's retries would stack on ours.
        max_network_retries=0,
    )


@dataclass(frozen=True, slots=True)
class _Request(Generic[T]):
    """One Stripe call, described once for ``_call`` and ``_call_async``: its operation, the
    SDK's sync and async methods, how its answer is read, its idempotency key."""

    operation: str
    send: Callable[[stripe.StripeClient, stripe.RequestOptions], stripe.StripeObject]
    send_async: Callable[[stripe.StripeClient, stripe.RequestOptions], Awaitable[Any]]
    build: Callable[[Mapping[str, Any]], T]
    idempotency_key: str | None = None

    def options(self) -> stripe.RequestOptions:
        options: stripe.RequestOptions = {"max_network_retries": 0}
        if self.idempotency_key is not None:
            options["idempotency_key"] = self.idempotency_key
        return options

    def read(self, obj: stripe.StripeObject) -> T:
        """The call's result from the SDK's answer, or the error it maps to."""
        if not isinstance(obj, stripe.StripeObject):  # e.g. a JSON array
            raise InvalidResponseError(
                SERVICE, self.operation, "Stripe: the answer is not a JSON object"
            )
        try:
            data = obj.to_dict()
        except RecursionError as exc:  # an answer nested too deep to convert
            raise InvalidResponseError(
                SERVICE, self.operation, "Stripe's answer is nested too deep"
            ) from exc
        try:
            return self.build(data)
        except _Deleted as exc:
            raise ClientRequestError(
                SERVICE, self.operation, "the customer is deleted", status_code=404
            ) from exc
        except _BadField as exc:
            raise InvalidResponseError(SERVICE, self.operation, str(exc)) from exc


def _key(idempotency_key: str | None) -> str:
    """The caller's key as given, or a fresh one for this call (kept across our retries)."""
    if idempotency_key is None:
        return str(uuid.uuid4())
    if not idempotency_key or len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise ValueError(
            f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters long"
        )
    return idempotency_key
