"""The HTTP transport under every outbound call: each attempt bounded in time and in size.

``ServiceClient``'s pooled clients and ``StripeService``'s SDK client (``stripe.HTTPXClient``) both
send through ``bounded_client()``, an ``httpx.Client`` whose transport (``BoundedTransport``):

- makes every socket operation of an attempt (connect, TLS handshake, each write, each read)
  wait at most until the attempt's deadline, whatever its own httpx timeout says. httpx's
  timeouts are per operation: connect + write + read could add up to three times the time left,
  and a vendor that trickles its answer a byte at a time never trips a read timeout at all. Past
  the deadline the next operation fails at once with httpx's own timeout error;
- refuses an answer larger than ``MAX_RESPONSE_BYTES``: a declared ``Content-Length`` over the
  limit before the body is read, otherwise as the bytes arrive, counted after decompression
  (gzip and deflate are decoded here, in steps that never produce more than the room left, so
  that a small compressed body cannot inflate past the limit; the answer handed on then has no
  ``Content-Encoding`` nor ``Content-Length``). An answer in another content coding (we ask for
  ``gzip, deflate`` only) is refused too. Either refusal is a ``ResponseRefused`` (an
  ``httpx.DecodingError``; ``ResponseTooLarge`` for the size), and the connection is closed,
  never left half-read in the pool.

The limits of the attempt in progress are an ``AttemptBounds`` (a context manager that
``CallPolicy.run`` puts around each attempt) held in a context variable, since one transport serves
every thread. Outside any
attempt there is no deadline, and the limit is ``INTEGRATIONS["MAX_RESPONSE_BYTES"]``.
Name resolution (DNS) happens inside connect but is not bounded: the system resolver's own
timeouts apply.
"""

from __future__ import annotations

import contextvars
import functools
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import httpcore
import httpx
from httpx._utils import get_environment_proxies  # what httpx.Client(trust_env=True) uses

from .conf import integrations_settings
from .policies import Timeout

__all__ = [
    "ACCEPT_ENCODING",
    "AsyncBoundedTransport",
    "AttemptBounds",
    "BoundedTransport",
    "ResponseRefused",
    "ResponseTooLarge",
    "bounded_async_client",
    "bounded_client",
    "current_bounds",
    "httpx_timeout",
]

#: The content codings we ask for, and the only ones we decode (with a bound) or accept.
ACCEPT_ENCODING = "gzip, deflate"
#: A write of more than this many bytes is sent in pieces, each bounded by the deadline.
WRITE_PIECE = 65_536

_current: contextvars.ContextVar[AttemptBounds | None] = contextvars.ContextVar(
    "tether_attempt_bounds", default=None
)


class AttemptBounds:
    """The limits of one attempt: ``seconds`` from now until its deadline, and the largest
    answer it may read. In force for the transport inside ``with AttemptBounds(...):``."""

    __slots__ = ("_token", "deadline", "max_response_bytes")

    def __init__(self, seconds: float, max_response_bytes: int) -> None:
        self.deadline = time.monotonic() + seconds
        self.max_response_bytes = max_response_bytes

    def __enter__(self) -> AttemptBounds:
        self._token = _current.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._token)

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


def current_bounds() -> AttemptBounds | None:
    """The bounds of the attempt this thread (or task) is making, if any."""
    return _current.get()


@functools.lru_cache(maxsize=256)
def httpx_timeout(limits: Timeout) -> httpx.Timeout:
    """httpx's four timeouts for our ``Timeout`` policy (cached: a policy is immutable)."""
    return httpx.Timeout(
        connect=limits.connect, read=limits.read, write=limits.write, pool=limits.pool
    )


class ResponseRefused(httpx.DecodingError):
    """An answer the transport would not hand on. Its text is ours, never the vendor's (safe to
    show in an error message)."""


class ResponseTooLarge(ResponseRefused):
    """The answer is larger than the limit (``MAX_RESPONSE_BYTES``); its body is never shown."""

    def __init__(self, limit: int, *, declared: int | None = None) -> None:
        self.limit = limit
        self.declared = declared
        what = f"declares {declared} bytes" if declared is not None else "is larger"
        super().__init__(f"the answer {what}, over MAX_RESPONSE_BYTES ({limit} bytes)")


# --- the deadline, for every socket operation ----------------------------------------------------


def _within_deadline(timeout: float | None, error: type[Exception]) -> float | None:
    """``timeout`` shortened to what the current attempt's deadline leaves; ``error`` once the
    deadline has passed."""
    bounds = _current.get()
    if bounds is None:
        return timeout
    left = bounds.deadline - time.monotonic()
    if left <= 0:
        raise error("the call's deadline has passed")
    return left if timeout is None or timeout > left else timeout


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation respects the deadline of the attempt using it (a
    pooled connection serves many attempts: the deadline is read at each operation)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _within_deadline(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if len(buffer) <= WRITE_PIECE or _current.get() is None:
            self._stream.write(buffer, _within_deadline(timeout, httpcore.WriteTimeout))
            return
        for start in range(0, len(buffer), WRITE_PIECE):
            piece = buffer[start : start + WRITE_PIECE]
            self._stream.write(piece, _within_deadline(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        limit = _within_deadline(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, limit))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend, its connections wrapped in ``_DeadlineStream``."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        limit = _within_deadline(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._backend.connect_tcp(host, port, limit, local_address, socket_options)
        )

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        limit = _within_deadline(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, limit, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


# --- the size limit ----------------------------------------------------------------------------


class _Inflate:
    """gzip or deflate, decoded in steps that never produce more than asked for."""

    __slots__ = ("_fallback", "_zlib")

    def __init__(self, coding: str) -> None:
        gzip = coding in ("gzip", "x-gzip")
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 16 if gzip else zlib.MAX_WBITS)
        # "deflate" is meant to be zlib-wrapped, but some servers send it raw (as httpx allows).
        self._fallback = not gzip

    def decode(self, data: bytes, room: int) -> Iterator[bytes]:
        """The decoded bytes of ``data``, in pieces of at most ``room + 1`` bytes (one more than
        the room left tells the caller it is over)."""
        while data:
            try:
                out = self._zlib.decompress(data, room + 1)
            except zlib.error as exc:
                if not self._fallback:
                    raise httpx.DecodingError(f"the compressed answer is corrupt ({exc})") from exc
                self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                self._fallback = False
                continue
            self._fallback = False
            data = self._zlib.unconsumed_tail
            if not out:  # all input taken (or the stream ended) without more output
                return
            yield out
            room = max(0, room - len(out))

    def flush(self) -> bytes:
        try:
            return self._zlib.flush()
        except zlib.error as exc:  # pragma: no cover - flush after decompress rarely fails
            raise httpx.DecodingError(f"the compressed answer is corrupt ({exc})") from exc


class _Counter:
    """The answer's bytes as they arrive, decoded and counted against ``limit`` (the bodies of
    both transports, sync and async, read through one)."""

    __slots__ = ("inflate", "limit", "received")

    def __init__(self, limit: int, inflate: _Inflate | None) -> None:
        self.limit = limit
        self.inflate = inflate
        self.received = 0

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        inflate = self.inflate
        pieces = (chunk,) if inflate is None else inflate.decode(chunk, self.limit - self.received)
        for piece in pieces:
            self.received += len(piece)
            if self.received > self.limit:
                raise ResponseTooLarge(self.limit)
            yield piece

    def end(self) -> bytes:
        if self.inflate is None:
            return b""
        tail = self.inflate.flush()
        if self.received + len(tail) > self.limit:
            raise ResponseTooLarge(self.limit)
        return tail


class _BoundedBody(httpx.SyncByteStream):
    """The answer's body, counted (after decoding) as it arrives; over ``limit`` it closes the
    connection and raises ``ResponseTooLarge``."""

    def __init__(self, raw: httpx.SyncByteStream, limit: int, inflate: _Inflate | None) -> None:
        self._raw = raw
        self._counter = _Counter(limit, inflate)

    def __iter__(self) -> Iterator[bytes]:
        counter = self._counter
        try:
            for chunk in self._raw:
                yield from counter.feed(chunk)
            tail = counter.end()
            if tail:
                yield tail
        except BaseException:
            self.close()  # a half-read connection is closed, never pooled
            raise

    def close(self) -> None:
        self._raw.close()


class _AsyncBoundedBody(httpx.AsyncByteStream):
    """``_BoundedBody`` for ``AsyncBoundedTransport``."""

    def __init__(self, raw: httpx.AsyncByteStream, limit: int, inflate: _Inflate | None) -> None:
        self._raw = raw
        self._counter = _Counter(limit, inflate)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        counter = self._counter
        try:
            async for chunk in self._raw:
                for piece in counter.feed(chunk):
                    yield piece
            tail = counter.end()
            if tail:
                yield tail
        except BaseException:
            await self.aclose()  # a half-read (or cancelled) connection is closed, never pooled
            raise

    async def aclose(self) -> None:
        await self._raw.aclose()


def _default_limit() -> int:
    return int(integrations_settings.MAX_RESPONSE_BYTES)


class BoundedTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` with the attempt's deadline on every socket operation and the
    answer's size limit (see the module's doc)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # httpx builds its httpcore pool without a way to pass a network backend: wrap the one
        # the pool made (every connection, direct or through a proxy, is opened through it).
        pool: Any = self._pool
        pool._network_backend = _DeadlineBackend(pool._network_backend)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        limit = _limit()
        response = super().handle_request(request)
        plan = _plan(request, response, limit)
        if isinstance(plan, ResponseRefused):
            response.close()
            raise plan
        if plan is not None:
            raw = cast(httpx.SyncByteStream, response.stream)
            response.stream = _BoundedBody(raw, limit, plan if isinstance(plan, _Inflate) else None)
        return response


class AsyncBoundedTransport(httpx.AsyncHTTPTransport):
    """``BoundedTransport`` for ``httpx.AsyncClient`` (``AsyncServiceClient``): the same size
    limit and content codings. The attempt's deadline is not needed per socket operation
    here: ``CallPolicy.run_async`` cancels the whole attempt when it passes
    (``asyncio.timeout``), and a cancelled request's connection is closed."""

    def open_connections(self) -> int:
        """Connections of this transport's pool that are open (idle or in use)."""
        pool: Any = self._pool
        return sum(1 for connection in pool.connections if not connection.is_closed())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        limit = _limit()
        response = await super().handle_async_request(request)
        plan = _plan(request, response, limit)
        if isinstance(plan, ResponseRefused):
            await response.aclose()
            raise plan
        if plan is not None:
            raw = cast(httpx.AsyncByteStream, response.stream)
            response.stream = _AsyncBoundedBody(
                raw, limit, plan if isinstance(plan, _Inflate) else None
            )
        return response


def _limit() -> int:
    bounds = _current.get()
    return bounds.max_response_bytes if bounds is not None else _default_limit()


def _plan(
    request: httpx.Request, response: httpx.Response, limit: int
) -> ResponseRefused | _Inflate | bool | None:
    """What the transport does with ``response``'s body: None, hand it on as it is; a
    ``ResponseRefused``, refuse it (the caller closes the connection); otherwise count it, and
    decode it with the ``_Inflate`` given (False: not encoded). Removes the headers of an
    encoding decoded here."""
    if request.method == "HEAD" or response.status_code in (204, 304):
        return None  # no body, whatever the headers declare
    headers = response.headers
    length = coding = None
    chunked = False
    for name, value in headers.raw:  # one pass: this runs on every answer
        name = name.lower()
        if name == b"content-length":
            length = value
        elif name == b"content-encoding":
            coding = value.decode("latin-1")
        elif name == b"transfer-encoding":
            chunked = True
    if length is not None and length.isdigit():
        if int(length) > limit:
            return ResponseTooLarge(limit, declared=int(length))
        if coding is None and not chunked:
            return None  # the HTTP parser never reads past a declared length
    inflate: _Inflate | bool = False
    if coding is not None:
        codings = [c.strip().lower() for c in coding.split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if codings:
            if len(codings) > 1 or codings[0] not in ("gzip", "x-gzip", "deflate"):
                return ResponseRefused(
                    f"the answer is in a content coding we did not ask for "
                    f"(we accept {ACCEPT_ENCODING})"
                )
            inflate = _Inflate(codings[0])
        # The body handed on is the decoded one: httpx must not decode it again.
        del headers["content-encoding"]
        headers.pop("content-length", None)
    return inflate


def bounded_client(
    *, verify: Any = True, headers: dict[str, str] | None = None, **kwargs: Any
) -> httpx.Client:
    """An ``httpx.Client`` sending through ``BoundedTransport``, proxies from the environment
    included (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, as httpx reads them),
    asking for ``gzip, deflate`` only. ``kwargs`` go to ``httpx.Client``."""
    mounts = {
        pattern: None if proxy is None else BoundedTransport(verify=verify, proxy=proxy)
        for pattern, proxy in get_environment_proxies().items()
    }
    return httpx.Client(
        transport=BoundedTransport(verify=verify),
        mounts=mounts,
        headers={"Accept-Encoding": ACCEPT_ENCODING, **(headers or {})},
        **kwargs,
    )


def bounded_async_client(
    *, verify: Any = True, headers: dict[str, str] | None = None, **kwargs: Any
) -> httpx.AsyncClient:
    """``bounded_client`` for an event loop: an ``httpx.AsyncClient`` sending through
    ``AsyncBoundedTransport``, with the same proxies and codings."""
    mounts = {
        pattern: None if proxy is None else AsyncBoundedTransport(verify=verify, proxy=proxy)
        for pattern, proxy in get_environment_proxies().items()
    }
    return httpx.AsyncClient(
        transport=AsyncBoundedTransport(verify=verify),
        mounts=mounts,
        headers={"Accept-Encoding": ACCEPT_ENCODING, **(headers or {})},
        **kwargs,
    )
