"""``manage.py ignore_webhooks``: end matching unfinished or failed events ``ignored``."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from webhooks import services
from webhooks.management.arguments import (
    add_audit_arguments,
    add_chunk_size_argument,
    add_event_filter_arguments,
    audit_actor,
    filtered_events,
)


class Command(BaseCommand):
    help = (
        "Mark stored webhook events ignored: received, processing and failed ones end "
        "'ignored' (no more attempts; the last error is kept); processed and ignored ones are "
        "left alone. Filters combine (--status defaults to failed). Each event changed gets a "
        "History entry naming --user (default: the system user) and --reason. "
        "Exit codes: 0 done, 2 bad input."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_event_filter_arguments(parser, verb="Mark")
        add_chunk_size_argument(parser)
        parser.add_argument(
            "--dry-run", action="store_true",
            help="Count what would be marked ignored; change nothing.",
        )  # fmt: skip
        add_audit_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        queryset = filtered_events(options)
        actor = audit_actor(options)
        if options["dry_run"]:
            count = services.count_ignorable(queryset)
            self.stdout.write(f"Would mark {count} event(s) ignored (dry run: nothing changed).")
            return
        changed, skipped = services.mark_ignored_many(
            queryset,
            reason=options["reason"],
            chunk_size=options["chunk_size"],
            actor=actor,
            via="command ignore_webhooks",
        )
        self.stdout.write(
            self.style.SUCCESS(
                f"Marked {changed} event(s) ignored; {skipped} left alone "
                "(already processed or ignored)."
            )
        )
