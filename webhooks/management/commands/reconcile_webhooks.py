"""``manage.py reconcile_webhooks ENDPOINT [--since DATE] [--dry-run]``: store the events the
vendor failed to deliver, listed from its API (``webhooks.reconciling``)."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from webhooks.exceptions import UnknownEndpoint, WebhookConfigurationError
from webhooks.management.arguments import (
    EXIT_RECONCILE_INCOMPLETE,
    EXIT_RECONCILE_UNAVAILABLE,
    EXIT_USAGE,
    iso_datetime,
    known_endpoints,
)
from webhooks.reconciling import InvalidSince, ReconcileUnavailable, reconcile

#: Refused events listed one per line (the rest are counted).
MAX_REFUSALS_SHOWN = 20


class Command(BaseCommand):
    help = (
        "Heal gaps: list the events ENDPOINT's vendor failed to deliver (Stripe: GET /v1/events "
        "with delivery_success=false) and store those a handler matches, as a delivery would "
        "be stored: what arrived meanwhile is a duplicate, new events are enqueued. Exit codes: "
        "0 done, 2 bad input, 5 the listing or storing stopped part way or events were refused "
        "(run again: nothing is stored twice), 6 this endpoint cannot be reconciled here."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("endpoint", help="The endpoint's name in WEBHOOKS['ENDPOINTS'].")
        parser.add_argument(
            "--since",
            type=_since,
            default=None,
            help="ISO 8601 date or datetime: events created at or after it (default: as far "
            "back as the vendor keeps them, 30 days for Stripe).",
        )
        parser.add_argument(
            "--dry-run",
            action="store_true",
            help="List and count what would be stored; store nothing.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        endpoint = options["endpoint"]
        try:
            report = reconcile(endpoint, since=options["since"], dry_run=options["dry_run"])
        except UnknownEndpoint as exc:
            raise CommandError(
                f"unknown endpoint {endpoint!r}: not in WEBHOOKS['ENDPOINTS'] "
                f"({known_endpoints()})",
                returncode=EXIT_USAGE,
            ) from exc
        except WebhookConfigurationError as exc:
            raise CommandError(str(exc), returncode=EXIT_USAGE) from exc
        except InvalidSince as exc:
            raise CommandError(f"--since: {exc}", returncode=EXIT_USAGE) from exc
        except ReconcileUnavailable as exc:
            raise CommandError(str(exc), returncode=EXIT_RECONCILE_UNAVAILABLE) from exc

        verb = "would store" if report.dry_run else "stored and enqueued"
        self.stdout.write(
            f"Reconcile {report.endpoint} since {report.since.isoformat(timespec='seconds')}"
            f"{' (dry run: nothing stored)' if report.dry_run else ''}: {report.vendor} listed "
            f"{report.listed} undelivered event(s); {verb} {report.stored}, already stored "
            f"{report.already_stored}, not handled {report.unhandled}, refused {report.refused}."
        )
        for event_id, reason in report.refusals[:MAX_REFUSALS_SHOWN]:
            self.stderr.write(f"refused event {event_id!r}: {reason}")
        if report.refused > MAX_REFUSALS_SHOWN:
            self.stderr.write(f"... and {report.refused - MAX_REFUSALS_SHOWN} more refused")
        if report.error is not None:
            raise CommandError(
                f"stopped part way: {report.error}. What was stored stays stored; run again "
                "(nothing is stored twice).",
                returncode=EXIT_RECONCILE_INCOMPLETE,
            )
        if report.refused:
            raise CommandError(
                f"{report.refused} listed event(s) refused (see above and the log)",
                returncode=EXIT_RECONCILE_INCOMPLETE,
            )


def _since(value: str) -> dt.datetime:
    if len(value) > 64:
        raise argparse.ArgumentTypeError("too long for a date")
    return iso_datetime(value)
