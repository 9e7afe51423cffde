"""Raw HTTP/1.1 for tests against a real server (``tests.servers.GunicornServer``): lying
lengths, chunked bodies, exactly the headers given."""

from __future__ import annotations

import socket


def raw_request(
    port: int, data: bytes, *, timeout: float = 15, half_close: bool = True
) -> tuple[int, bytes]:
    """Send raw bytes over one connection, read until the server closes; (status, body).
    ``half_close``: shut the sending side once sent (uvicorn takes that for a disconnect and
    drops the request: pass False for it, the request says ``Connection: close``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, body


def http_request(
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes = b"",
    *,
    content_length: int | None,
) -> bytes:
    """An HTTP/1.1 request's bytes with exactly the given headers (no computed length unless
    ``content_length`` is given)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes, size: int = 65536) -> bytes:
    """``body`` in HTTP/1.1 chunked transfer coding."""
    out = []
    for start in range(0, len(body), size):
        piece = body[start : start + size]
        out.append(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    return b"".join(out) + b"0\r\n\r\n"
