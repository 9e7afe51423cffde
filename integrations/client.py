"""``ServiceClient``: the base class for calling one vendor's HTTP API resiliently.

A subclass names its service and says what it extracts; everything else happens here (pooled
connections, where a request may go, idempotency keys, error mapping) and in the service's
``integrations.calls.CallPolicy`` (timeouts, retries, the circuit breaker, bounded attempts)::

    class ExchangeRates(ServiceClient):
        service = "exchange-rates"
        base_url = "https://rates.example.com"

        def rate(self, currency: str) -> Decimal:
            data = self.get_json(f"/v1/rates/{currency}", operation="rate", required=["rate"])
            return Decimal(str(data["rate"]))
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json as jsonlib
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar
from urllib.parse import unquote

import httpx
from django.core.exceptions import ImproperlyConfigured

from tether.fork import after_fork

from .calls import CallPolicy, PolicyOverrides
from .conf import service_settings
from .exceptions import (
    ClientRequestError,
    DisallowedURLError,
    IntegrationError,
    IntegrationTimeout,
    IntegrationUnavailable,
    InvalidResponseError,
    RateLimitedError,
    bounded_retry_after,
)
from .policies import BreakerPolicy, RetryPolicy, Timeout
from .resilience import AttemptInfo
from .transport import (
    AsyncBoundedTransport,
    ResponseRefused,
    bounded_async_client,
    bounded_client,
    httpx_timeout,
)

if TYPE_CHECKING:
    from .breaker import Breaker

__all__ = [
    "ServiceClient",
    "ServiceClientBase",
    "aclose_pools",
    "close_pools",
    "open_async_connections",
    "parse_retry_after",
    "require_fields",
]

T = TypeVar("T")

#: Methods that get an idempotency key even when the caller passes none.
AUTO_IDEMPOTENT_METHODS = frozenset({"POST", "PATCH"})

# --- one pooled httpx.Client per service and process ---------------------------------------------

_pools: dict[str, httpx.Client] = {}
_pools_lock = threading.Lock()


#: How every pooled client is made, sync and async alike.
_POOL_OPTIONS: dict[str, Any] = {
    "follow_redirects": False,
    # Sent with every request unless the request sets its own.
    "headers": {"User-Agent": "django-tether", "Accept": "application/json"},
    # Per-request timeouts are always passed; this only guards direct use.
    "timeout": httpx.Timeout(10.0, connect=3.05),
}


def _pool_for(service: str) -> httpx.Client:
    client = _pools.get(service)
    if client is None:
        with _pools_lock:
            client = _pools.get(service)
            if client is None:
                client = _pools[service] = bounded_client(**_POOL_OPTIONS)
    return client


#: event loop -> service -> its ``httpx.AsyncClient`` (an async client's connections belong to
#: the loop that opened them; a loop that is gone takes its clients with it).
_async_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, httpx.AsyncClient]]
_async_pools = weakref.WeakKeyDictionary()


def _async_pool_for(service: str) -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    pools = _async_pools.get(loop)
    if pools is None:
        pools = _async_pools[loop] = {}
    client = pools.get(service)
    if client is None:  # one loop runs one task at a time: no lock needed
        client = pools[service] = bounded_async_client(**_POOL_OPTIONS)
    return client


def open_async_connections(service: str) -> int:
    """Connections the running event loop keeps open to ``service`` (idle or in use): a call
    that ended, was cancelled or failed leaves none in use."""
    client = _async_pools.get(asyncio.get_running_loop(), {}).get(service)
    if client is None:
        return 0
    transport = client._transport
    return transport.open_connections() if isinstance(transport, AsyncBoundedTransport) else 0


def close_pools() -> None:
    """Close every pooled connection of this process (tests, and after a fork). The event
    loops' clients are forgotten (``aclose_pools`` closes the running loop's)."""
    with _pools_lock:
        clients = list(_pools.values())
        _pools.clear()
    _async_pools.clear()
    for client in clients:
        client.close()


async def aclose_pools() -> None:
    """Close the running event loop's pooled connections (at the end of an ``asyncio.run``, an
    ASGI lifespan's shutdown, or a test)."""
    pools = _async_pools.pop(asyncio.get_running_loop(), {})
    for client in pools.values():
        await client.aclose()


def _forget_pools_after_fork() -> None:
    # A forked child (Celery prefork, gunicorn) must not share its parent's sockets.
    global _pools_lock
    _pools.clear()
    _async_pools.clear()
    _pools_lock = threading.Lock()


after_fork(_forget_pools_after_fork)


# --- response helpers ----------------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP-date.

    Returns None when the header is absent or unreadable (NaN included); otherwise a wait in
    ``[0, MAX_RETRY_AFTER]`` (``integrations.exceptions.bounded_retry_after``): a negative value
    or a past date is 0, a huge or infinite one, or a date years away, is the cap.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = datetime.fromtimestamp(time.time() if now is None else now, tz=UTC)
        seconds = (when - current).total_seconds()
    return bounded_retry_after(seconds)


_MISSING = object()


def _lookup(data: Any, path: str) -> Any:
    current = data
    for part in path.split("."):
        if isinstance(current, Mapping):
            current = current.get(part, _MISSING)
        elif isinstance(current, list) and part.lstrip("-").isdigit():
            index = int(part)
            current = current[index] if -len(current) <= index < len(current) else _MISSING
        else:
            return _MISSING
        if current is _MISSING:
            return _MISSING
    return current


def require_fields(data: Any, fields: Iterable[str], *, service: str, operation: str) -> Any:
    """Return ``data`` if every dotted path in ``fields`` is present and not null (``"rate"``,
    ``"customer.id"``, ``"items.0.id"``); otherwise raise ``InvalidResponseError`` naming the
    missing ones. Fields nobody asked for are ignored."""
    missing = [path for path in fields if _lookup(data, path) in (_MISSING, None)]
    if missing:
        raise InvalidResponseError(
            service, operation, f"response lacks required field(s): {', '.join(missing)}"
        )
    return data


def _unparsed(response: httpx.Response) -> httpx.Response:
    """The ``parse`` of a call that returns the response itself (``ServiceClient.request``)."""
    return response


def _shown(method: str, url: httpx.URL) -> str:
    """How a request appears in messages: method and path, never the query string."""
    return f"{method} {url.path or '/'}"


# --- where a request may go --------------------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: An absolute URL (``scheme://...``) or a network-path reference (``//host/...``).
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|//")

Origin = tuple[str, str, int | None]


def _origin(url: httpx.URL) -> Origin:
    """Scheme, host and port (the scheme's default when none is written)."""
    return (url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme))


def _show_origin(origin: Origin) -> str:
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if port == _DEFAULT_PORTS.get(scheme) else f":{port}")


def _normalized_path(path: str) -> str | None:
    """``path`` as the most lenient server could read it: percent-decoded until nothing changes
    (``%2e%2e`` and ``%252e%252e`` are ``..``), backslashes as slashes, empty segments (``//``)
    dropped, then ``.`` and ``..`` resolved (never above the root). None when it is still
    percent-encoded after five decodings."""
    for _ in range(5):
        if "%" not in path:
            break
        decoded = unquote(path)
        if decoded == path:
            break
        path = decoded
    else:
        if "%" in path and unquote(path) != path:
            return None
    segments: list[str] = []
    for segment in path.replace("\\", "/").split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    return "/" + "/".join(segments)


def _within(path: str, prefix: str) -> bool:
    """Whether ``path`` (a raw path, without query) stays under ``prefix`` (a normalized
    path without its trailing slash; "" for the root)."""
    if not ("." in path or "%" in path or "\\" in path or "//" in path):
        normal: str | None = path  # nothing to decode or resolve: the common case
    else:
        normal = _normalized_path(path)
    return normal is not None and (
        not prefix or normal == prefix or normal.startswith(prefix + "/")
    )


@functools.lru_cache(maxsize=128)
def _base(base_url: str) -> tuple[str, Origin, str]:
    """The base URL without its trailing slash (relative paths are joined to it), its origin,
    and its normalized path without the trailing slash (what every path must stay under)."""
    url = httpx.URL(base_url)
    prefix = _normalized_path(url.raw_path.decode("ascii").split("?", 1)[0]) or "/"
    return base_url.rstrip("/"), _origin(url), prefix.rstrip("/")


#: The longest URL text whose parse is remembered by ``_parsed``.
_PARSED_MAX_CHARS = 2048


@functools.lru_cache(maxsize=512)
def _parsed_cached(text: str) -> httpx.URL:
    return httpx.URL(text)


def _parsed(text: str) -> httpx.URL:
    """``httpx.URL(text)``, remembered for the 512 latest short URLs: a service calls the same
    few URLs over and over, and parsing one is most of what a call refused by an open breaker
    costs. ``httpx.URL`` is immutable, so one parse can serve every call."""
    if len(text) > _PARSED_MAX_CHARS:
        return httpx.URL(text)
    return _parsed_cached(text)


@functools.lru_cache(maxsize=128)
def _origins(urls: tuple[str, ...]) -> frozenset[Origin]:
    return frozenset(_origin(httpx.URL(url)) for url in urls)


# --- the client ----------------------------------------------------------------------------------


class ServiceClientBase:
    """What ``ServiceClient`` and ``AsyncServiceClient`` share: the service's name, settings and
    policies, where a request may go, its headers and idempotency key, and how an answer or a
    transport error becomes a result or an ``IntegrationError``. Only the call itself (blocking
    or awaited) differs between them.

    Base class for one vendor's HTTP API. Subclasses set ``service`` and usually nothing else.

    Class attributes (all optional except ``service``): ``base_url``; ``timeout``, ``retry`` and
    ``breaker``, each a policy object or a dict of some fields, overriding the settings;
    ``max_response_bytes`` and ``allowed_origins``, overriding the settings of the same names;
    and ``idempotency_header``. Constructor arguments override the class attributes the same way.

    Credentials (``default_headers()``) only ever go to the base URL's origin, and every path,
    relative or absolute, must stay under the base URL's path; another origin is refused
    (``DisallowedURLError``) unless listed in ``allowed_origins``, and then gets no credentials.
    """

    #: The service's name: its key in ``INTEGRATIONS["SERVICES"]`` and its breaker's name.
    service: ClassVar[str] = ""
    #: The vendor's base URL; else ``INTEGRATIONS["SERVICES"][service]["BASE_URL"]``.
    base_url: ClassVar[str | None] = None
    timeout: ClassVar[Timeout | Mapping[str, Any] | None] = None
    retry: ClassVar[RetryPolicy | Mapping[str, Any] | None] = None
    breaker: ClassVar[BreakerPolicy | Mapping[str, Any] | None] = None
    #: Header carrying the idempotency key (POST and PATCH always get one).
    idempotency_header: ClassVar[str] = "Idempotency-Key"
    #: The largest answer read (bytes, after decompression); else
    #: ``INTEGRATIONS["SERVICES"][service]["MAX_RESPONSE_BYTES"]``, else the global one.
    max_response_bytes: ClassVar[int | None] = None
    #: Other origins (``"https://files.example.com"``) that absolute URLs may name; requests
    #: to them go without ``default_headers()``. Else the service's ``ALLOWED_ORIGINS`` setting.
    allowed_origins: ClassVar[Iterable[str] | None] = None

    def __init__(
        self,
        *,
        base_url: str | None = None,
        timeout: Timeout | Mapping[str, Any] | None = None,
        retry: RetryPolicy | Mapping[str, Any] | None = None,
        breaker: BreakerPolicy | Mapping[str, Any] | None = None,
    ) -> None:
        if not self.service:
            raise ImproperlyConfigured(f"{type(self).__name__} must set the `service` attribute.")
        self._base_url = base_url
        self._overrides = PolicyOverrides(timeout=timeout, retry=retry, breaker=breaker)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} service={self.service!r}>"

    # Policies, resolved at call time so that settings changes apply at once.

    def get_base_url(self) -> str:
        url = self._base_url or type(self).base_url
        if not url:
            url = service_settings(self.service).get("BASE_URL") or None
        if not url:
            raise ImproperlyConfigured(
                f"No base URL for service {self.service!r}: set "
                f'INTEGRATIONS["SERVICES"][{self.service!r}]["BASE_URL"], the class attribute '
                f"`base_url` or the constructor's `base_url=`."
            )
        return str(url)

    def call_policy(self) -> CallPolicy:
        """The policies of this client's calls: settings, then class attributes, then
        constructor arguments. Every call runs under it."""
        return CallPolicy.resolve(self.service, type(self), self._overrides)

    def get_timeout(self) -> Timeout:
        return self.call_policy().timeout

    def get_retry_policy(self) -> RetryPolicy:
        return self.call_policy().retry

    def get_breaker_policy(self) -> BreakerPolicy:
        return self.call_policy().breaker

    def get_max_response_bytes(self) -> int:
        return self.call_policy().max_response_bytes

    def get_allowed_origins(self) -> tuple[str, ...]:
        """Origins other than the base URL's that absolute URLs may name (no credentials)."""
        origins = type(self).allowed_origins
        if origins is None:
            origins = service_settings(self.service).get("ALLOWED_ORIGINS") or ()
        return tuple(origins)

    def get_breaker(self) -> Breaker:
        """The service's breaker, with this client's breaker policy. A half-open probe's lease
        outlasts this client's call deadline, which bounds every attempt of ours."""
        return self.call_policy().get_breaker()

    def default_headers(self) -> dict[str, str]:
        """Headers sent with every request (override to add credentials, read at call time)."""
        return {}

    def require(self, data: Any, *fields: str, operation: str) -> Any:
        """``data`` if every dotted path in ``fields`` is present, else ``InvalidResponseError``
        (raised after the call, so it does not count against the breaker: prefer ``required=``)."""
        return require_fields(data, fields, service=self.service, operation=operation)

    # Internals.

    def _headers(
        self,
        method: str,
        headers: Mapping[str, str] | None,
        idempotency_key: str | None,
        *,
        credentials: bool = True,
    ) -> dict[str, str]:
        """``default_headers()`` (only when ``credentials``), then the caller's ``headers``,
        then the idempotency key."""
        merged = dict(self.default_headers()) if credentials else {}
        if headers:
            merged.update(headers)
        if idempotency_key is None and method in AUTO_IDEMPOTENT_METHODS:
            # One key per call, generated before the first attempt: every retry resends it.
            idempotency_key = str(uuid.uuid4())
        wanted = self.idempotency_header.lower()
        if idempotency_key is not None and not any(name.lower() == wanted for name in merged):
            merged[self.idempotency_header] = idempotency_key
        return merged

    def _target(self, method: str, path: str, operation: str) -> tuple[httpx.URL, bool]:
        """The URL ``path`` names, and whether it is the service's own origin (the only one
        credentials go to); ``DisallowedURLError`` when it may not be sent at all.

        A relative path is joined to the base URL; an absolute URL (``https://...``, or
        ``//host/...`` with the base URL's scheme) is taken as is. Either must be on the base
        URL's origin (scheme, host and port) and stay under its path once normalized (see
        ``_normalized_path``), or be on an origin listed in ``get_allowed_origins()``. A URL
        with ``user:password@`` is refused. The URL is parsed once, by httpx, which sends it.
        """
        joined, origin, prefix = _base(self.get_base_url())
        absolute = _ABSOLUTE.match(path) is not None
        try:
            if absolute:
                url = _parsed(f"{origin[0]}:{path}" if path.startswith("//") else path)
            else:  # after the "/" we put, nothing in ``path`` can change the base's authority
                url = _parsed(joined + "/" + path.lstrip("/"))
        except httpx.InvalidURL as exc:
            raise DisallowedURLError(
                self.service, operation, f"{method} refused: not a valid URL", cause=exc
            ) from exc
        target = _origin(url) if absolute else origin
        if absolute and url.userinfo:
            reason = "a URL may not carry credentials (user:password@)"
        elif target == origin:
            if _within(url.raw_path.decode("ascii").split("?", 1)[0], prefix):
                return url, True
            reason = f"the path leaves the base URL's path ({prefix or '/'})"
        elif target in _origins(self.get_allowed_origins()):
            return url, False
        else:
            reason = (
                f"{_show_origin(target)} is not the service's origin ({_show_origin(origin)}) "
                "nor in its ALLOWED_ORIGINS"
            )
        raise DisallowedURLError(
            self.service, operation, f"{_shown(method, url)} refused: {reason}"
        )

    # What both clients' calls share.

    def _prepare_request(
        self,
        method: str,
        path: str,
        operation: str,
        idempotency_key: str | None,
        httpx_kwargs: dict[str, Any],
    ) -> tuple[str, httpx.URL, dict[str, str], dict[str, Any]]:
        """``request``'s method, URL, headers and httpx arguments."""
        method = method.upper()
        url, own = self._target(method, path, operation)
        headers = self._headers(
            method, httpx_kwargs.pop("headers", None), idempotency_key, credentials=own
        )
        if not own:
            httpx_kwargs.pop("auth", None)  # credentials never leave the service's origin
        return method, url, headers, httpx_kwargs

    def _prepare_json(
        self,
        method: str,
        path: str,
        operation: str,
        headers: Mapping[str, str] | None,
        kwargs: dict[str, Any],
        required: Iterable[str],
        idempotency_key: str | None,
    ) -> tuple[httpx.URL, dict[str, str], dict[str, Any], Callable[[httpx.Response], Any]]:
        """A JSON call's URL, headers, httpx arguments and parser (``required`` checked)."""
        required = tuple(required)
        url, own = self._target(method, path, operation)
        merged = self._headers(method, headers, idempotency_key, credentials=own)

        def parse(response: httpx.Response) -> Any:
            return self._parse_json(response, operation, required)

        return url, merged, {k: v for k, v in kwargs.items() if v is not None}, parse

    def _answered(
        self,
        response: httpx.Response,
        operation: str,
        method: str,
        url: httpx.URL,
        parse: Callable[[httpx.Response], T],
    ) -> T:
        """An attempt's result from the vendor's answer: ``parse``'s, or the error it maps to."""
        if response.status_code >= 400:
            self._raise_for_status(response, operation, _shown(method, url))
        return parse(response)

    def _map_transport_error(
        self, exc: httpx.HTTPError, operation: str, shown: str
    ) -> IntegrationError:
        kind = type(exc).__name__
        if isinstance(exc, ResponseRefused):  # its text is ours: too large, unasked coding
            return InvalidResponseError(self.service, operation, f"{shown}: {exc}", cause=exc)
        if isinstance(exc, httpx.TimeoutException):
            return IntegrationTimeout(
                self.service, operation, f"{shown} timed out ({kind})", cause=exc
            )
        if isinstance(exc, httpx.DecodingError):
            return InvalidResponseError(
                self.service, operation, f"{shown} answered an undecodable body", cause=exc
            )
        return IntegrationUnavailable(
            self.service, operation, f"{shown} failed ({kind})", cause=exc
        )

    def _raise_for_status(self, response: httpx.Response, operation: str, shown: str) -> None:
        status = response.status_code
        message = f"{shown} answered {status}"
        if status == 429:
            raise RateLimitedError(
                self.service,
                operation,
                message,
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        if status >= 500:
            retry_after = (
                parse_retry_after(response.headers.get("Retry-After")) if status == 503 else None
            )
            raise IntegrationUnavailable(
                self.service, operation, message, status_code=status, retry_after=retry_after
            )
        error = ClientRequestError(self.service, operation, message, status_code=status)
        error.response = response
        raise error

    def _parse_json(
        self, response: httpx.Response, operation: str, required: tuple[str, ...]
    ) -> Any:
        if not 200 <= response.status_code < 300:
            raise InvalidResponseError(
                self.service, operation, f"unexpected status {response.status_code}"
            )
        if response.status_code == 204 or (not response.content and not required):
            return None
        try:
            data = jsonlib.loads(response.content)
        except ValueError as exc:
            raise InvalidResponseError(
                self.service, operation, f"response is not JSON ({type(exc).__name__})", cause=exc
            ) from exc
        return require_fields(data, required, service=self.service, operation=operation)


class ServiceClient(ServiceClientBase):
    """A vendor's HTTP API, called from ordinary (blocking) code; see ``ServiceClientBase``.
    On an event loop use ``integrations.AsyncServiceClient``, its twin."""

    def request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        idempotency_key: str | None = None,
        **httpx_kwargs: Any,
    ) -> httpx.Response:
        """One call (with its retries): the response, whose status is below 400.

        POST and PATCH carry an idempotency key (``idempotency_key`` or a fresh one), the same on
        every retry of this call; other methods carry one only when given.
        """
        method, url, headers, httpx_kwargs = self._prepare_request(
            method, path, operation, idempotency_key, httpx_kwargs
        )
        return self._call(method, url, operation, headers, httpx_kwargs, parse=_unparsed)

    def get_json(
        self,
        path: str,
        *,
        operation: str,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        required: Iterable[str] = (),
    ) -> Any:
        """GET ``path`` and return its parsed JSON (``required`` dotted paths must be present)."""
        return self._json_call(
            "GET", path, operation, headers, {"params": params}, required, idempotency_key=None
        )

    def post_json(
        self,
        path: str,
        *,
        operation: str,
        json: Any = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        required: Iterable[str] = (),
    ) -> Any:
        return self._json_call(
            "POST",
            path,
            operation,
            headers,
            {"json": json},
            required,
            idempotency_key=idempotency_key,
        )

    def put_json(
        self,
        path: str,
        *,
        operation: str,
        json: Any = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        required: Iterable[str] = (),
    ) -> Any:
        return self._json_call(
            "PUT",
            path,
            operation,
            headers,
            {"json": json},
            required,
            idempotency_key=idempotency_key,
        )

    def patch_json(
        self,
        path: str,
        *,
        operation: str,
        json: Any = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str] | None = None,
        required: Iterable[str] = (),
    ) -> Any:
        return self._json_call(
            "PATCH",
            path,
            operation,
            headers,
            {"json": json},
            required,
            idempotency_key=idempotency_key,
        )

    def delete(
        self, path: str, *, operation: str, idempotency_key: str | None = None
    ) -> httpx.Response:
        return self.request("DELETE", path, operation=operation, idempotency_key=idempotency_key)

    def _json_call(
        self,
        method: str,
        path: str,
        operation: str,
        headers: Mapping[str, str] | None,
        kwargs: dict[str, Any],
        required: Iterable[str],
        *,
        idempotency_key: str | None,
    ) -> Any:
        url, merged, kwargs, parse = self._prepare_json(
            method, path, operation, headers, kwargs, required, idempotency_key
        )
        return self._call(method, url, operation, merged, kwargs, parse=parse)

    def _call(
        self,
        method: str,
        url: httpx.URL,
        operation: str,
        headers: dict[str, str],
        kwargs: dict[str, Any],
        *,
        parse: Callable[[httpx.Response], T],
    ) -> T:
        """One call under this client's ``CallPolicy``: each attempt sends the request and
        hands a response below 400 to ``parse``, whose result is the call's."""
        policy = self.call_policy()
        timeout = policy.timeout
        client = _pool_for(self.service)
        kwargs.pop("timeout", None)

        def attempt(info: AttemptInfo) -> T:
            try:
                response = client.request(
                    method,
                    url,
                    headers=headers or None,
                    timeout=httpx_timeout(timeout.capped(info.remaining)),
                    **kwargs,
                )
            except httpx.HTTPError as exc:
                raise self._map_transport_error(exc, operation, _shown(method, url)) from exc
            return self._answered(response, operation, method, url, parse)

        return policy.run(attempt, operation=operation)
