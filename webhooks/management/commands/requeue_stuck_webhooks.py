"""``manage.py requeue_stuck_webhooks``: the sweeper, from the shell (beat runs the task)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from webhooks import services
from webhooks.conf import webhooks_settings
from webhooks.exceptions import BrokerUnavailable
from webhooks.management.arguments import EXIT_BROKER_UNAVAILABLE, non_negative_float


class Command(BaseCommand):
    help = (
        "Enqueue webhook events left 'received', or 'processing' past a timeout (the sweeper; "
        "Celery beat runs the same as the task webhooks.requeue_stuck). "
        "Exit codes: 0 done, 2 bad input, 3 broker unavailable."
    )

    def add_arguments(self, parser):
        stuck_after = webhooks_settings["STUCK_AFTER"]
        received_after = webhooks_settings["REQUEUE_RECEIVED_AFTER"]
        parser.add_argument(
            "--older-than", type=non_negative_float, metavar="SECONDS",
            help="Stuck after this many seconds: 'received' ones counted from received_at, "
                 "'processing' ones from their latest attempt (default: "
                 f"WEBHOOKS['REQUEUE_RECEIVED_AFTER'], now {received_after}, for 'received' "
                 f"ones and WEBHOOKS['STUCK_AFTER'], now {stuck_after}, for 'processing' ones).",
        )  # fmt: skip
        parser.add_argument(
            "--dry-run", action="store_true", help="Count the stuck events; enqueue nothing."
        )

    def handle(self, *args, **options):
        try:
            count = services.requeue_stuck(
                older_than=options["older_than"], dry_run=options["dry_run"]
            )
        except BrokerUnavailable as exc:
            raise CommandError(
                f"Broker unavailable: {exc}. The events stay stored; run this again later.",
                returncode=EXIT_BROKER_UNAVAILABLE,
            ) from None
        if options["dry_run"]:
            self.stdout.write(f"Would requeue {count} stuck event(s) (dry run: nothing sent).")
        else:
            self.stdout.write(self.style.SUCCESS(f"Requeued {count} stuck event(s)."))
