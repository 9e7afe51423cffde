"""``manage.py replay_webhooks``: set matching events back to ``received`` and process them: their
failed handler runs by default, every handler with ``--all-handlers``, or the handlers named by
``--handler`` (a backfill of a handler added later)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from webhooks import services
from webhooks.management.arguments import (
    EXIT_NOT_ALL_PROCESSED,
    EXIT_USAGE,
    add_audit_arguments,
    add_chunk_size_argument,
    add_event_filter_arguments,
    audit_actor,
    filtered_events,
)


class Command(BaseCommand):
    help = (
        "Replay stored webhook events: set them back to 'received' with 0 attempts and enqueue "
        "them (or process them here with --sync). Filters combine. Rows are streamed in chunks. "
        "By default only each event's failed handler runs run again. "
        "Exit codes: 0 done, 2 bad input, 4 with --sync when some event did not end processed "
        "or ignored."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_event_filter_arguments(parser, verb="Replay")
        add_chunk_size_argument(parser)
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be replayed; change nothing."
        )
        parser.add_argument(
            "--sync", action="store_true",
            help="Process each event in this process instead of enqueuing it.",
        )  # fmt: skip
        which = parser.add_mutually_exclusive_group()
        which.add_argument(
            "--all-handlers", action="store_true",
            help="Run every handler matching each event again, not only the failed runs.",
        )  # fmt: skip
        which.add_argument(
            "--handler", dest="handlers", action="append", metavar="DOTTED.PATH",
            help="Run only this handler (module.function, as registered with @on); repeat for "
            "several. Only the events it handles are replayed, including events processed "
            "before it existed (a backfill: combine with --status processed, and count first "
            "with --dry-run).",
        )  # fmt: skip
        add_audit_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        queryset = filtered_events(options)
        actor = audit_actor(options)
        handlers = options["handlers"]
        if handlers is not None:
            try:
                handlers = services.checked_handlers(handlers)
            except services.UnknownHandler as exc:
                raise CommandError(f"--handler: {exc}", returncode=EXIT_USAGE) from None
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
            handlers=handlers,
            all_handlers=options["all_handlers"],
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
