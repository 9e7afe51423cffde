"""``manage.py prune_webhooks``: delete finished events past the retention, in batches."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from webhooks import services
from webhooks.conf import webhooks_settings
from webhooks.management.arguments import non_negative_days, positive_int


class Command(BaseCommand):
    help = (
        "Delete 'processed' and 'ignored' webhook events received more than DAYS ago, in "
        "batches ('failed' ones too with --include-failed). A pruned event id is no longer "
        "recognised as a duplicate: keep the retention longer than every sender retries "
        "(Stripe: 3 days). Exit codes: 0 done, 2 bad input."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        retention = webhooks_settings["RETENTION_DAYS"]
        parser.add_argument(
            "--older-than",
            type=non_negative_days,
            metavar="DAYS",
            help=f"Age in days, from received_at (default: WEBHOOKS['RETENTION_DAYS'], now "
            f"{retention}).",
        )
        parser.add_argument(
            "--include-failed", action="store_true", help="Delete old 'failed' events too."
        )
        parser.add_argument(
            "--batch-size",
            type=positive_int,
            default=services.CHUNK_SIZE,
            help=f"Rows deleted per statement (default: {services.CHUNK_SIZE}).",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would be deleted; delete nothing."
        )  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        days = options["older_than"]
        count = services.prune_events(
            older_than_days=days,
            include_failed=options["include_failed"],
            dry_run=options["dry_run"],
            batch_size=options["batch_size"],
        )
        if days is None:
            days = webhooks_settings["RETENTION_DAYS"]
        statuses = "processed, ignored" + (", failed" if options["include_failed"] else "")
        if options["dry_run"]:
            self.stdout.write(
                f"Would delete {count} event(s) ({statuses}) older than {days} day(s) "
                "(dry run: nothing deleted)."
            )
        else:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Deleted {count} event(s) ({statuses}) older than {days} day(s)."
                )
            )
