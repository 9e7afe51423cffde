"""The chaos soak's vendor: delivers signed webhook events to the run's gunicorn as a vendor does,
and records every answer it gets, per event id. Run as its own process by ``bench/chaos.py``.

    python bench/chaos_vendor.py --port 8000 --events 20000 --seconds 300 --out DIR

- Events (``bench.ingest.event_body``: Stripe ``payment_intent.succeeded``) are sent at an even
  pace over ``--seconds``, on ``--concurrency`` connections (kept alive unless the server closes
  them), each delivery signed when it is sent (``webhooks.testing.sign_request``), as a vendor
  signs every attempt.
- A delivery answered 5xx, or that got no answer (connection refused or reset, timeout), is
  sent again after a backoff (0.5 s doubling to 8 s, jittered), until ``--give-up-after``
  seconds past the sending window. A 4xx is final (it is recorded and not retried).
- ``--duplicate-share`` of the events (chosen from ``--seed``) are delivered once more, a few
  seconds after their first 200, as a vendor's redelivery: the answer must be ``duplicate``.

Writes ``answers.json`` (event id -> list of ``[status, kind]``, one per delivery; status 0
for no answer, kind the body's ``status``/``error`` or the exception's name) into ``--out``,
``progress.json`` about once a second while it runs, and prints one JSON line of totals.
Every loop is bounded by the event count and the give-up deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import itertools
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)  # so that `webhooks` is the app, not bench/webhooks.py

from bench.database import setup_django  # noqa: E402
from bench.ingest import event_body, raw_post  # noqa: E402
from bench.loadgen import read_response  # noqa: E402

SETTINGS_MODULE = os.environ.get("TETHER_CHAOS_SETTINGS", "bench.chaos_settings")
NO_ANSWER = 0
#: Answers that make the vendor try again later, as vendors do.
RETRY_STATUSES = range(500, 600)
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 8.0
DUPLICATE_DELAY = (1.0, 10.0)


@dataclass
class Delivery:
    index: int
    duplicate: bool = False
    tries: int = 0


class Vendor:
    def __init__(self, args: argparse.Namespace) -> None:
        from bench.ledger import ENDPOINT
        from webhooks.testing import sign_request

        self.args = args
        self.endpoint = ENDPOINT
        self.path = f"/webhooks/{ENDPOINT}/"
        self.sign = sign_request
        self.rng = random.Random(args.seed)
        self.bodies = [event_body(args.run_id, i) for i in range(args.events)]
        self.event_ids = [json.loads(body)["id"] for body in self.bodies]
        share = round(args.events * args.duplicate_share)
        self.resend = set(self.rng.sample(range(args.events), share))
        self.answers: dict[str, list[list]] = {}
        self.due: list[tuple[float, int, Delivery]] = []
        self.sequence = itertools.count()
        self.in_flight = 0
        self.deliveries = 0
        self.retries = 0
        self.duplicates_sent = 0
        self.gave_up: list[str] = []
        self.answered: set[int] = set()
        self.last_answer_200_at = 0.0
        self.start = 0.0
        self.deadline = 0.0

    def schedule(self, at: float, delivery: Delivery) -> None:
        heapq.heappush(self.due, (at, next(self.sequence), delivery))

    async def run(self) -> dict:
        self.start = time.monotonic()
        pace = self.args.seconds / max(self.args.events, 1)
        for index in range(self.args.events):
            self.schedule(self.start + index * pace, Delivery(index))
        self.deadline = self.start + self.args.seconds + self.args.give_up_after
        progress = asyncio.create_task(self.report_progress())
        await asyncio.gather(*(self.connection() for _ in range(self.args.concurrency)))
        progress.cancel()
        self.write_progress(done=True)
        return self.totals()

    async def connection(self) -> None:
        reader = writer = None
        while self.due or self.in_flight:
            if not self.due:
                await asyncio.sleep(0.02)  # another connection's delivery may yet be retried
                continue
            at = self.due[0][0]
            now = time.monotonic()
            if at > now:
                await asyncio.sleep(min(at - now, 0.05))
                continue
            _, _, delivery = heapq.heappop(self.due)
            self.in_flight += 1
            try:
                status, kind, reader, writer = await self.deliver(delivery, reader, writer)
            finally:
                self.in_flight -= 1
            self.after(delivery, status, kind)
        if writer is not None:
            writer.close()

    async def deliver(self, delivery: Delivery, reader, writer):
        """Send one delivery; (status, kind, reader, writer), the connection None if closed."""
        body = self.bodies[delivery.index]
        request = raw_post(self.args.port, self.path, body, self.sign(self.endpoint, body))
        self.deliveries += 1
        delivery.tries += 1
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.args.host, self.args.port), self.args.timeout
                )
            writer.write(request)
            status, answer, close = await asyncio.wait_for(read_response(reader), self.args.timeout)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            if writer is not None:
                writer.close()
            return NO_ANSWER, type(exc).__name__, None, None
        if close:
            writer.close()
            reader = writer = None
        return status, self.kind(delivery, status, answer), reader, writer

    def kind(self, delivery: Delivery, status: int, answer: bytes) -> str:
        """What the answer says: the body's ``status`` or ``error``, else ``unreadable``; a 200
        for another event is ``wrong_event``."""
        try:
            data = json.loads(answer)
        except ValueError:
            return "unreadable"
        if not isinstance(data, dict):
            return "unreadable"
        if status == 200 and data.get("event_id") != self.event_ids[delivery.index]:
            return "wrong_event"
        return str(data.get("status") or data.get("error") or "unreadable")[:40]

    def after(self, delivery: Delivery, status: int, kind: str) -> None:
        event_id = self.event_ids[delivery.index]
        self.answers.setdefault(event_id, []).append([status, kind])
        now = time.monotonic()
        if status == 200:
            self.last_answer_200_at = time.time()
            first_200 = delivery.index not in self.answered
            self.answered.add(delivery.index)
            if first_200 and not delivery.duplicate and delivery.index in self.resend:
                self.schedule(now + self.rng.uniform(*DUPLICATE_DELAY), Delivery(
                    delivery.index, duplicate=True))  # fmt: skip
                self.duplicates_sent += 1
            return
        if status != NO_ANSWER and status not in RETRY_STATUSES:
            return  # a 4xx is final for a vendor
        backoff = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (delivery.tries - 1))
        at = now + backoff * self.rng.uniform(0.5, 1.0)
        if at > self.deadline:
            self.gave_up.append(event_id)
            return
        self.retries += 1
        self.schedule(at, delivery)

    async def report_progress(self) -> None:
        while True:
            self.write_progress(done=False)
            await asyncio.sleep(1.0)

    def write_progress(self, *, done: bool) -> None:
        path = self.args.out / "progress.json"
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps({
            "sent": len(self.answers), "answered_200": len(self.answered),
            "deliveries": self.deliveries, "retries": self.retries, "done": done,
        }))  # fmt: skip
        partial.replace(path)

    def totals(self) -> dict:
        (self.args.out / "answers.json").write_text(json.dumps(self.answers))
        return {
            "events": self.args.events,
            "sent": len(self.answers),
            "answered_200": len(self.answered),
            "deliveries": self.deliveries,
            "retries": self.retries,
            "duplicates_sent": self.duplicates_sent,
            "gave_up": len(self.gave_up),
            "wall_s": time.monotonic() - self.start,
            "last_answer_200_at": self.last_answer_200_at,
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--events", type=int, required=True, help="distinct events to send")
    parser.add_argument("--seconds", type=float, required=True, help="the sending window")
    parser.add_argument("--out", type=Path, required=True, help="directory for answers.json")
    parser.add_argument("--run-id", default="c0", help="prefix of the event ids")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duplicate-share", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per delivery")
    parser.add_argument(
        "--give-up-after", type=float, default=120.0, help="seconds past the window to retry"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_django(SETTINGS_MODULE)
    totals = asyncio.run(Vendor(args).run())
    print(json.dumps(totals), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
