"""A small HTTP/1.1 poster, run as its own process by ``bench/ingest.py`` for case (d).

Case (d) posts exactly N events and waits until all are processed; wrk (which drives the other
cases, ``bench/wrk.py``) cannot stop after N requests. Standard library only (asyncio): it sends
pre-built raw requests (signed before timing) over ``--concurrency`` connections, keeps each
connection alive unless the server closes it (gunicorn's sync workers close after every
response), checks every answer, and prints one JSON object with its counts, latency
percentiles, wall time and its own CPU time. It costs several times wrk's CPU per request: not a
generator to measure a server's rate with.

    python bench/loadgen.py --port 8000 --requests FILE --concurrency 16 --duration 10

``FILE`` is a pickled ``list[bytes]`` of complete requests. Every loop is bounded by
``--count`` and ``--duration``; each request by ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pickle
import resource
import sys
import time
from pathlib import Path


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Run:
    def __init__(
        self, args: argparse.Namespace, requests: list[bytes], start: int, count: int
    ) -> None:
        self.args = args
        self.requests = requests
        self.start = start
        self.stop = start + count
        self.next_index = start
        self.latencies: list[float] = []
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.first_error = ""
        self.connects = 0
        self.deadline = 0.0

    def take(self) -> bytes | None:
        """The next request to send, or None when the count or the time is used up."""
        if self.next_index >= self.stop or time.perf_counter() >= self.deadline:
            return None
        if self.next_index >= len(self.requests):
            return None
        request = self.requests[self.next_index]
        self.next_index += 1
        return request

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if not self.first_error:
            self.first_error = f"{kind}: {detail[:300]}"

    async def connection(self) -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        expect = self.args.expect.encode() if self.args.expect else b""
        while (request := self.take()) is not None:
            start = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(self.args.host, self.args.port)
                    self.connects += 1
                writer.write(request)
                status, body, close = await asyncio.wait_for(
                    read_response(reader), self.args.timeout
                )
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                self.error(type(exc).__name__, repr(exc))
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            elapsed = time.perf_counter() - start
            if status != self.args.status or (expect and expect not in body):
                self.error(f"http_{status}", body.decode("utf-8", "replace"))
            else:
                self.ok += 1
                self.latencies.append(elapsed)
            if close:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = None
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
    if length is None:  # no length: the body runs to the end of the connection
        return status, await reader.read(), True
    return status, await reader.readexactly(length), close


async def main_async(args: argparse.Namespace, requests: list[bytes]) -> dict:
    run = Run(args, requests, args.offset, args.count)
    cpu_start = cpu_seconds()
    wall_start = time.perf_counter()
    run.deadline = wall_start + args.duration
    await asyncio.gather(*(run.connection() for _ in range(args.concurrency)))
    wall = time.perf_counter() - wall_start
    cpu = cpu_seconds() - cpu_start
    latencies = sorted(run.latencies)
    return {
        "sent": run.next_index - run.start,
        "ok": run.ok,
        "errors": run.errors,
        "first_error": run.first_error,
        "connects": run.connects,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_share": cpu / wall if wall else 0.0,
        "cpu_us_per_request": 1e6 * cpu / run.ok if run.ok else 0.0,
        "throughput": run.ok / wall if wall else 0.0,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p90_ms": 1000 * percentile(latencies, 90),
        "p99_ms": 1000 * percentile(latencies, 99),
        "max_ms": 1000 * (latencies[-1] if latencies else 0.0),
        "mean_ms": 1000 * sum(latencies) / len(latencies) if latencies else 0.0,
        "started_at": time.time() - wall,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=Path, required=True, help="pickled list[bytes]")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--count", type=int, default=10**9, help="stop after this many")
    parser.add_argument("--duration", type=float, default=10.0, help="stop after seconds")
    parser.add_argument("--offset", type=int, default=0, help="start at this request")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--status", type=int, default=200, help="expected status")
    parser.add_argument("--expect", default="", help="expected substring of every body")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    requests = pickle.loads(args.requests.read_bytes())
    if not requests:
        print(json.dumps({"error": "no requests"}))
        return 2
    result = asyncio.run(main_async(args, requests))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
