"""A trivial, fast HTTP/1.1 server for the benchmarks, run as its own process.

Answers every request with the same small JSON document, keeping connections alive (or closing
after each answer with ``--close``, as gunicorn's sync workers do). It stands in for a vendor in
``bench/outbound.py``.
Prints ``READY <port>`` once listening; stops on SIGTERM/SIGINT or after ``--max-seconds``.

    python bench/fastserver.py --port 0 [--close]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

BODY = b'{"currency": "usd", "rate": "1.0842", "as_of": "2026-11-28T18:00:00Z"}'


def response(close: bool) -> bytes:
    connection = b"close" if close else b"keep-alive"
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(BODY)).encode()
        + b"\r\nConnection: "
        + connection
        + b"\r\n\r\n"
        + BODY
    )


async def serve(port: int, close: bool, max_seconds: float) -> None:
    answer = response(close)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                writer.write(answer)
                if close:
                    await writer.drain()
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max_seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--close", action="store_true", help="close after every response")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="stop after this")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.close, args.max_seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
