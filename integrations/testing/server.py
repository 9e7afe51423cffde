"""``FakeVendor``: a real HTTP server on 127.0.0.1, in a thread, scripted per route.

Use it where your code would call a vendor: point the service's base URL at ``vendor.url``::

    with FakeVendor() as vendor:
        vendor.route("GET", "/v1/rates/EUR", Reply.server_error(), Reply.json({"rate": "1.08"}))
        with override_settings(INTEGRATIONS={"SERVICES": {"rates": {"BASE_URL": vendor.url}}}):
            assert ExchangeRates().rate("EUR") == Decimal("1.08")
        assert vendor.count("GET", "/v1/rates/EUR") == 2

A route answers its replies in order, then repeats the last one. A reply may also be a callable
taking the ``RecordedRequest`` and returning a ``Reply``. Unrouted paths answer 404. Every request
is recorded (method, path, query, headers, body, arrival time) before it is answered, including
those the server then leaves hanging or drops; so is what each answer sent (``answers``: bytes of
body written, whether it was sent whole), and how many requests were being answered at once
(``in_flight``, ``max_in_flight``: a request counts from its arrival until just before its
answer's last bytes go out).

Besides healthy and failing answers, a reply can misbehave on the wire: ``Reply.trickle``
sends its body a few bytes at a time, ``Reply.large`` sends a body of any size (generated as it
goes, never held whole), optionally chunked and paced.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["Answer", "FakeVendor", "RecordedRequest", "Reply", "Route", "unused_port_url"]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the vendor saw it."""

    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: The client's source port: requests on one keep-alive connection share it.
    client_port: int = 0
    #: ``time.monotonic()`` in the vendor's process when the request had been read (rate
    #: limits and cool-downs are checked on these).
    received_at: float = 0.0

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive)."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return default

    @property
    def params(self) -> dict[str, list[str]]:
        return parse_qs(self.query, keep_blank_values=True)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """What the vendor does with one request. Build it with the class methods."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    #: Seconds to wait before answering.
    delay: float = 0.0
    #: ``"respond"``, ``"hang"`` (never answer until the server closes), ``"disconnect"``
    #: (close the connection without answering) or ``"truncate"`` (declare ``declared_length``
    #: bytes, send ``body``, close).
    action: str = "respond"
    declared_length: int | None = None
    #: Send this many bytes of body by repeating ``body`` (None: ``body`` once).
    length: int | None = None
    #: Send the body in pieces of this many bytes (0: in one write) ...
    piece_size: int = 0
    #: ... waiting this many seconds before each piece (a trickle).
    interval: float = 0.0
    #: ``Transfer-Encoding: chunked`` (no ``Content-Length``), one chunk per piece.
    chunked: bool = False

    @classmethod
    def json(
        cls,
        data: Any,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> Reply:
        """A healthy JSON answer."""
        return cls(
            status=status,
            body=json.dumps(data).encode(),
            headers=(("Content-Type", "application/json"), *(headers or {}).items()),
            delay=delay,
        )

    @classmethod
    def text(
        cls,
        body: str | bytes,
        *,
        status: int = 200,
        content_type: str = "text/plain; charset=utf-8",
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
    ) -> Reply:
        raw = body.encode() if isinstance(body, str) else body
        return cls(
            status=status,
            body=raw,
            headers=(("Content-Type", content_type), *(headers or {}).items()),
            delay=delay,
        )

    @classmethod
    def empty(cls, status: int = 204, *, headers: Mapping[str, str] | None = None) -> Reply:
        return cls(status=status, headers=tuple((headers or {}).items()))

    @classmethod
    def error(
        cls, status: int, data: Any = None, *, headers: Mapping[str, str] | None = None
    ) -> Reply:
        """An error status with a small JSON body (4xx or 5xx)."""
        return cls.json(
            {"error": {"status": status}} if data is None else data, status=status, headers=headers
        )

    @classmethod
    def server_error(cls, status: int = 503) -> Reply:
        return cls.error(status)

    @classmethod
    def rate_limited(
        cls, retry_after: float | int | datetime | str | None = None, *, status: int = 429
    ) -> Reply:
        """429 with ``Retry-After`` in seconds (a number), as an HTTP-date (a ``datetime``), or
        verbatim (a ``str``); no header when None."""
        headers: dict[str, str] = {}
        if isinstance(retry_after, datetime):
            headers["Retry-After"] = email.utils.format_datetime(retry_after, usegmt=True)
        elif isinstance(retry_after, int | float):
            headers["Retry-After"] = f"{retry_after:g}"
        elif retry_after is not None:
            headers["Retry-After"] = retry_after
        return cls.error(status, headers=headers)

    @classmethod
    def slow(cls, seconds: float, then: Reply | None = None) -> Reply:
        """``then`` (default an empty JSON object) after ``seconds``."""
        return replace(then or cls.json({}), delay=seconds)

    @classmethod
    def hang(cls) -> Reply:
        """Read the request, then never answer (until the server is closed)."""
        return cls(action="hang")

    @classmethod
    def garbage(
        cls,
        body: bytes = b"<html><body>502 Bad Gateway</body></html>",
        *,
        status: int = 200,
        content_type: str = "application/json",
    ) -> Reply:
        """A complete answer whose body is not what it claims (by default: HTML sent as JSON)."""
        return cls(status=status, body=body, headers=(("Content-Type", content_type),))

    @classmethod
    def truncated(cls, body: bytes = b'{"rate": "1.0', *, declared_length: int = 64) -> Reply:
        """Declare ``declared_length`` bytes, send only ``body``, then close the connection."""
        return cls(
            body=body,
            headers=(("Content-Type", "application/json"),),
            action="truncate",
            declared_length=max(declared_length, len(body) + 1),
        )

    @classmethod
    def disconnect(cls) -> Reply:
        """Close the connection without answering."""
        return cls(action="disconnect")

    @classmethod
    def trickle(
        cls, then: Reply | None = None, *, interval: float = 0.05, piece_size: int = 1
    ) -> Reply:
        """``then`` (default an empty JSON object), its status and headers at once, then its
        body ``piece_size`` bytes at a time, ``interval`` seconds apart: a vendor that never
        stops answering long enough to trip a read timeout. Stops when the client goes away."""
        return replace(then or cls.json({}), piece_size=piece_size, interval=interval)

    @classmethod
    def large(
        cls,
        size: int,
        *,
        fill: bytes = b"x",
        chunked: bool = False,
        piece_size: int = 65_536,
        interval: float = 0.0,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """A body of ``size`` bytes (``fill`` repeated), written ``piece_size`` bytes at a time
        (``interval`` seconds before each) without ever being held whole: declared with
        ``Content-Length`` unless ``chunked``. Stops when the client goes away."""
        return cls(
            body=fill,
            length=size,
            headers=(("Content-Type", content_type), *(headers or {}).items()),
            piece_size=piece_size,
            interval=interval,
            chunked=chunked,
        )

    @property
    def body_length(self) -> int:
        return len(self.body) if self.length is None else self.length

    def pieces(self) -> Iterator[bytes]:
        """The body as it goes on the wire, piece by piece (chunk framing not included)."""
        total = self.body_length
        size = self.piece_size or total or 1
        if self.length is None:
            for start in range(0, total, size):
                yield self.body[start : start + size]
            return
        pattern = self.body or b"x"
        block = pattern * (size // len(pattern) + 1)
        sent = 0
        while sent < total:
            piece = block[: min(size, total - sent)]
            sent += len(piece)
            yield piece


ReplySource = Reply | Callable[[RecordedRequest], Reply]


@dataclass
class Route:
    """A method and exact path (query ignored) with its scripted replies."""

    method: str
    path: str
    replies: list[ReplySource]
    requests: list[RecordedRequest] = field(default_factory=list)

    def next_reply(self, request: RecordedRequest) -> Reply:
        source = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        return source(request) if callable(source) else source


NOT_FOUND = Reply.json({"error": "no route scripted for this request"}, status=404)


@dataclass
class Answer:
    """What the vendor sent back for one request (filled in as it goes)."""

    request: RecordedRequest
    #: Bytes of body written to the socket (a client that went away may not have read them).
    body_bytes_sent: int = 0
    #: The whole answer was written.
    completed: bool = False
    #: ``time.monotonic()`` just before the first byte of the answer was written (None: not
    #: answered). The client cannot have had its answer before then: ``[request.received_at,
    #: replied_at]`` lies within the time its caller held the call open.
    replied_at: float | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, vendor: FakeVendor, address: tuple[str, int]) -> None:
        self.vendor = vendor
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
            self.connections.clear()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY a keep-alive client
    # waits for the delayed ACK (40 ms) on every request.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        vendor = self.server.vendor
        parts = urlsplit(self.path)
        request = RecordedRequest(
            method=self.command,
            path=parts.path,
            query=parts.query,
            headers=tuple(self.headers.items()),
            body=self._read_body(),
            client_port=self.client_address[1],
            received_at=time.monotonic(),
        )
        reply, answer = vendor._dispatch_and_count(request)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                vendor._answered()

        try:
            self._answer(vendor, reply, answer, release)
        finally:
            release()

    def _answer(
        self, vendor: FakeVendor, reply: Reply, answer: Answer, release: Callable[[], None]
    ) -> None:
        """Send ``reply``. ``release`` takes the request out of ``in_flight`` just before the
        answer's last bytes are written: a client never holds its whole answer while its request
        is still counted, so ``max_in_flight`` is exact for a caller that sends its next request
        only once it has the previous answer (a bulkhead, a probe limit)."""
        if reply.delay and vendor._closing.wait(reply.delay):
            self.close_connection = True
            return
        if reply.action == "hang":
            vendor._closing.wait()
            self.close_connection = True
            return
        if reply.action == "disconnect":
            self.close_connection = True
            return
        try:
            answer.replied_at = time.monotonic()
            self.send_response(reply.status)
            for name, value in reply.headers:
                self.send_header(name, value)
            if reply.chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                length = reply.declared_length if reply.action == "truncate" else None
                self.send_header("Content-Length", str(length or reply.body_length))
            if reply.action == "truncate":
                self.send_header("Connection", "close")
            pieces = iter(reply.pieces())
            piece = next(pieces, None)
            if piece is None and not reply.chunked:
                release()  # the headers are the last bytes
            self.end_headers()
            while piece is not None:
                if reply.interval and vendor._closing.wait(reply.interval):
                    self.close_connection = True
                    return
                following = next(pieces, None)
                if following is None and not reply.chunked:
                    release()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if reply.chunked else piece)
                answer.body_bytes_sent += len(piece)
                piece = following
            if reply.chunked:
                release()
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:  # the client gave up (its timeout, a limit) before we were done
            self.close_connection = True
            return
        answer.completed = True
        if reply.action == "truncate":
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class FakeVendor:
    """A scriptable vendor API on ``127.0.0.1`` (a real socket, served by threads).

    A context manager: ``with FakeVendor() as vendor:`` starts it and closes it, ending any
    request left hanging. ``stop()`` closes the port (calls then get "connection refused");
    ``start()`` serves again on a new port.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._port = port
        self._lock = threading.Lock()
        self._routes: dict[tuple[str, str], Route] = {}
        self._requests: list[RecordedRequest] = []
        self._answers: list[Answer] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._bound_port: int | None = None

    # Life cycle.

    def start(self) -> FakeVendor:
        if self._server is not None:
            return self
        self._closing = threading.Event()
        self._server = _Server(self, (self.host, self._port))
        self._bound_port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FakeVendor:{self._bound_port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port: requests now fail with "connection refused".
        Requests left hanging end (their connections are closed)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._closing.set()
        server.shutdown()
        server.server_close()
        server.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    close = stop

    def __enter__(self) -> FakeVendor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._bound_port is None:
            raise RuntimeError("FakeVendor has not been started")
        return self._bound_port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (still the same after ``stop()``: a closed port)."""
        return f"http://{self.host}:{self.port}"

    # Scripting.

    def route(self, method: str, path: str, *replies: ReplySource) -> Route:
        """Script ``method path``: ``replies`` in order, the last one repeated (replaces any
        earlier script of the same route)."""
        if not replies:
            raise ValueError("route() needs at least one reply")
        route = Route(method.upper(), path, list(replies))
        with self._lock:
            self._routes[(route.method, route.path)] = route
        return route

    def reset(self) -> None:
        """Forget every route, recorded request and answer, and the peak of ``in_flight``."""
        with self._lock:
            self._routes.clear()
            self._requests.clear()
            self._answers.clear()
            self._max_in_flight = self._in_flight

    def _dispatch_and_count(self, request: RecordedRequest) -> tuple[Reply, Answer]:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            reply = self._dispatch(request)
        except BaseException:
            self._answered()
            raise
        answer = Answer(request)
        with self._lock:
            self._answers.append(answer)
        return reply, answer

    def _answered(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _dispatch(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            route = self._routes.get((request.method, request.path))
            if route is None:
                return NOT_FOUND
            route.requests.append(request)
            return route.next_reply(request)

    # Assertions.

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in order."""
        with self._lock:
            return list(self._requests)

    @property
    def answers(self) -> list[Answer]:
        """What was sent back for each request, in the order the requests came."""
        with self._lock:
            return list(self._answers)

    @property
    def in_flight(self) -> int:
        """Requests received and not yet answered (or given up on) right now; a request leaves
        the count just before the last bytes of its answer are written."""
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The most requests that were being answered at once (since start or ``reset()``)."""
        with self._lock:
            return self._max_in_flight

    def requests_to(
        self, method: str | None = None, path: str | None = None
    ) -> list[RecordedRequest]:
        return [
            r
            for r in self.requests
            if (method is None or r.method == method.upper()) and (path is None or r.path == path)
        ]

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """How many requests (optionally to ``method`` and/or ``path``) the vendor saw."""
        return len(self.requests_to(method, path))

    def headers_seen(
        self, name: str, method: str | None = None, path: str | None = None
    ) -> list[str | None]:
        """The value of header ``name`` on each request, in order (None where absent)."""
        return [r.header(name) for r in self.requests_to(method, path)]


def unused_port_url(host: str = "127.0.0.1") -> str:
    """A URL on a port nothing listens on (bound, then released): connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    return f"http://{host}:{port}"
