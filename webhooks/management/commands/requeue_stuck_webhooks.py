"""``manage.py requeue_stuck_webhooks``: the sweeper, from the shell or cron (Celery beat runs
the task); with ``--every SECONDS``, a process that sweeps until it is stopped, which is how the
sweeper runs beside Django Tasks' worker (Django's Tasks have no beat; see
docs/webhooks/django-tasks.md)."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from webhooks import services
from webhooks.conf import webhooks_settings
from webhooks.exceptions import BrokerUnavailable
from webhooks.management.arguments import (
    EXIT_BROKER_UNAVAILABLE,
    non_negative_seconds,
    sweep_interval,
)
from webhooks.processing import describe_outside_error


class Command(BaseCommand):
    help = (
        "Enqueue webhook events left 'received', or 'processing' past a timeout (the sweeper; "
        "Celery beat runs the same as the task webhooks.requeue_stuck), except those requeued "
        "recently, whose message may still be queued. "
        "Exit codes: 0 done, 2 bad input, 3 broker unavailable."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        stuck_after = webhooks_settings["STUCK_AFTER"]
        received_after = webhooks_settings["REQUEUE_RECEIVED_AFTER"]
        max_interval = webhooks_settings["REQUEUE_MAX_INTERVAL"]
        parser.add_argument(
            "--older-than", type=non_negative_seconds, metavar="SECONDS",
            help="Stuck after this many seconds: 'received' ones counted from received_at, "
                 "'processing' ones from their latest attempt (default: "
                 f"WEBHOOKS['REQUEUE_RECEIVED_AFTER'], now {received_after}, for 'received' "
                 f"ones and WEBHOOKS['STUCK_AFTER'], now {stuck_after}, for 'processing' ones).",
        )  # fmt: skip
        parser.add_argument(
            "--include-requeued", action="store_true",
            help="Also requeue stuck events requeued recently, whose message may still be queued "
                 "(by default the sweeper waits longer after each requeue, up to "
                 f"WEBHOOKS['REQUEUE_MAX_INTERVAL'], now {max_interval}); for when the broker "
                 "lost its messages.",
        )  # fmt: skip
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be requeued; enqueue nothing."
        )
        parser.add_argument(
            "--every", type=sweep_interval, metavar="SECONDS",
            help="Sweep every SECONDS (1 to 86,400) until stopped (SIGTERM or Ctrl-C: the sweep "
                 "in progress finishes first); a failed sweep is reported and the next one "
                 "tried. The periodic sweeper where no Celery beat runs (TASK_BACKEND 'django').",
        )  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        if options["every"] is None:
            self.sweep(options)
            return
        stopped = threading.Event()

        def stop(signum: int, frame: FrameType | None) -> None:
            stopped.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.stdout.write(f"Sweeping every {options['every']:g} s (SIGTERM or Ctrl-C stops).")
        while not stopped.is_set():
            close_old_connections()  # each sweep like a request: no broken connection kept
            try:
                self.sweep(options, quiet=True)
            except Exception as exc:  # reported; the next sweep may find the database back
                self.stderr.write(
                    f"Sweep failed ({describe_outside_error(exc)}); trying again in "
                    f"{options['every']:g} s."
                )
            stopped.wait(options["every"])
        close_old_connections()
        self.stdout.write("Stopped.")

    def sweep(self, options: dict[str, Any], *, quiet: bool = False) -> None:
        """One sweep, reported on stdout (``CommandError`` when the broker refuses); ``quiet``
        (``--every``): a sweep that requeued nothing says nothing."""
        older_than = options["older_than"]
        include_requeued = options["include_requeued"]
        waiting = 0 if include_requeued else services.recently_requeued_events(older_than).count()
        try:
            count = services.requeue_stuck(
                older_than=older_than, dry_run=options["dry_run"], include_requeued=include_requeued
            )
        except BrokerUnavailable as exc:
            raise CommandError(
                f"Broker unavailable: {exc}. The events stay stored; run this again later.",
                returncode=EXIT_BROKER_UNAVAILABLE,
            ) from None
        if quiet and not count:
            return
        left = (
            f" {waiting} other stuck event(s) were requeued recently and are left to that message "
            "(--include-requeued sends them again)."
            if waiting
            else ""
        )
        if options["dry_run"]:
            self.stdout.write(
                f"Would requeue {count} stuck event(s) (dry run: nothing sent).{left}"
            )
        else:
            self.stdout.write(self.style.SUCCESS(f"Requeued {count} stuck event(s).{left}"))
