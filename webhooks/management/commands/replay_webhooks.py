"""``manage.py replay_webhooks``: set matching events back to ``received`` and process them."""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from webhooks import services
from webhooks.management.arguments import (
    EXIT_NOT_ALL_PROCESSED,
    EXIT_USAGE,
    add_audit_arguments,
    audit_actor,
    iso_datetime,
    positive_int,
)
from webhooks.models import WebhookEvent
from webhooks.selectors import filter_events

STATUSES = [*WebhookEvent.Status.values, "any"]


class Command(BaseCommand):
    help = (
        "Replay stored webhook events: set them back to 'received' with 0 attempts and enqueue "
        "them (or process them here with --sync). Filters combine. Rows are streamed in chunks. "
        "Exit codes: 0 done, 2 bad input, 4 with --sync when some event did not end processed "
        "or ignored."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--status",
            choices=STATUSES,
            default=WebhookEvent.Status.FAILED,
            help="Only events in this status; 'any' for all (default: failed).",
        )
        parser.add_argument("--endpoint", help="Only this endpoint (default: all).")
        parser.add_argument(
            "--type",
            dest="type_pattern",
            metavar="PATTERN",
            help="Event type pattern: a glob ('invoice.*') or a name that also matches the "
            "names below it ('pull_request'). Default: all.",
        )
        parser.add_argument(
            "--since",
            type=iso_datetime,
            metavar="ISO8601",
            help="Received at or after this ISO 8601 date or datetime (a date means its "
            "midnight; naive times are in TIME_ZONE).",
        )
        parser.add_argument(
            "--until",
            type=iso_datetime,
            metavar="ISO8601",
            help="Received before this ISO 8601 date or datetime (exclusive).",
        )
        parser.add_argument(
            "--id",
            dest="event_ids",
            action="append",
            metavar="EVENT_ID",
            help="The vendor's event id; repeat for several.",
        )
        parser.add_argument(
            "--limit",
            type=positive_int,
            help="Replay at most this many, oldest first (default: no limit).",
        )
        parser.add_argument(
            "--chunk-size",
            type=positive_int,
            default=services.CHUNK_SIZE,
            help=f"Rows read per database round trip (default: {services.CHUNK_SIZE}).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be replayed; change nothing."
        )
        parser.add_argument(
            "--sync", action="store_true",
            help="Process each event in this process instead of enqueuing it.",
        )  # fmt: skip
        add_audit_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["since"] and options["until"] and options["since"] >= options["until"]:
            raise CommandError("--since must be before --until", returncode=EXIT_USAGE)
        status = None if options["status"] == "any" else options["status"]
        try:
            queryset = filter_events(
                status=status,
                endpoint=options["endpoint"],
                type_pattern=options["type_pattern"],
                since=options["since"],
                until=options["until"],
                event_ids=options["event_ids"],
            )
        except ValueError as exc:
            raise CommandError(str(exc), returncode=EXIT_USAGE) from None
        if options["limit"]:
            queryset = queryset.order_by("received_at", "id")[: options["limit"]]

        actor = audit_actor(options)
        outcomes: Counter[str] = Counter()
        count = services.replay_events(
            queryset,
            sync=options["sync"],
            dry_run=options["dry_run"],
            chunk_size=options["chunk_size"],
            on_result=lambda pk, result: outcomes.update([result or "skipped"]),
            actor=actor,
            via="command replay_webhooks",
            reason=options["reason"],
        )

        if options["dry_run"]:
            self.stdout.write(f"Would replay {count} event(s) (dry run: nothing changed).")
            return
        if not options["sync"]:
            self.stdout.write(self.style.SUCCESS(f"Replayed {count} event(s): enqueued."))
            return
        details = ", ".join(
            f"{outcomes[key]} {label}"
            for key, label in [
                ("processed", "processed"),
                ("ignored", "ignored"),
                ("failed", "failed"),
                ("processing", "retry scheduled"),
                ("skipped", "skipped"),
            ]
        )
        self.stdout.write(f"Replayed {count} event(s) in this process: {details}.")
        unfinished = count - outcomes["processed"] - outcomes["ignored"]
        if unfinished:
            raise CommandError(
                f"{unfinished} replayed event(s) did not end processed or ignored",
                returncode=EXIT_NOT_ALL_PROCESSED,
            )
