"""Argument types shared by the webhooks management commands: bad input becomes a usage error
(a ``CommandError`` naming the argument), never a traceback."""

from __future__ import annotations

import argparse
import datetime as dt
import math
from collections.abc import Mapping
from typing import Any

from tether.audit import EXIT_USAGE, add_user_argument, command_user, reason_argument
from tether.dates import parse_when

from ..conf import webhooks_settings
from ..providers.base import MAX_ID_LENGTH

# Exit codes of the webhooks commands.
EXIT_OK = 0
# EXIT_USAGE (2, tether.audit): bad input, as argparse itself uses.
EXIT_BROKER_UNAVAILABLE = 3
EXIT_NOT_ALL_PROCESSED = 4
#: reconcile_webhooks: the listing or the storing stopped part way, or listed events were refused.
EXIT_RECONCILE_INCOMPLETE = 5
#: reconcile_webhooks: the endpoint cannot be reconciled here (no vendor API, no lister).
EXIT_RECONCILE_UNAVAILABLE = 6


def iso_datetime(value: str) -> dt.datetime:
    try:
        return parse_when(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: The largest number an argument takes, by what it counts: each ends up in a ``timedelta``
#: (seconds, days) or a SQL ``LIMIT`` (counts), which must stay finite and in range.
MAX_SECONDS = 10 * 365 * 86_400  # ten years
MAX_DAYS = 36_500  # a hundred years
MAX_COUNT = 1_000_000_000


def _number(value: str, kind: type[int] | type[float], largest: float) -> float:
    try:
        number = kind(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{value!r} is not a finite number")
    if number > largest:
        raise argparse.ArgumentTypeError(f"{value} is too large; give at most {largest:,}")
    return number


def non_negative_seconds(value: str) -> float:
    number = _number(value, float, MAX_SECONDS)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give zero or more")
    return number


#: The longest ``requeue_stuck_webhooks --every`` interval: a day.
MAX_SWEEP_INTERVAL = 86_400


def sweep_interval(value: str) -> float:
    """Seconds between two sweeps: 1 to ``MAX_SWEEP_INTERVAL``."""
    number = _number(value, float, MAX_SWEEP_INTERVAL)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is too small; give at least 1")
    return number


def non_negative_days(value: str) -> int:
    number = int(_number(value, int, MAX_DAYS))
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; give zero or more")
    return number


def positive_int(value: str) -> int:
    number = int(_number(value, int, MAX_COUNT))
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number")
    return number


def event_identifier(value: str) -> str:
    """An event id or type given to a command (``send_test_webhook --id/--type``). It may be
    sent in a header (GitHub's ``X-GitHub-Delivery``/``X-GitHub-Event``, Standard Webhooks'
    ``webhook-id``), so: 1 to 255 printable ASCII characters, no spaces."""
    if not (
        0 < len(value) <= MAX_ID_LENGTH
        and value.isascii()
        and value.isprintable()
        and " " not in value
    ):
        raise argparse.ArgumentTypeError(
            f"{value[:80]!r} is not usable: give 1 to {MAX_ID_LENGTH} printable ASCII "
            "characters without spaces"
        )
    return value


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    """``--user`` (``tether.audit.add_user_argument``) and ``--reason``: whom the action's
    History entries (``LogEntry``) name, and why."""
    from ..services import REASON_MAX_CHARS

    add_user_argument(parser)
    parser.add_argument(
        "--reason",
        type=reason_argument(REASON_MAX_CHARS),
        default="",
        help="Why, recorded in each event's History (at most 1,000 characters).",
    )


def audit_actor(options: dict[str, Any]) -> Any:
    """The user ``--user`` names (None: the services use the system user); a ``CommandError``
    with ``EXIT_USAGE`` if there is none by that name."""
    return command_user(options, returncode=EXIT_USAGE)


def add_chunk_size_argument(parser: argparse.ArgumentParser) -> None:
    """``--chunk-size``: rows read per database round trip by an action on many events."""
    from ..services import CHUNK_SIZE

    parser.add_argument(
        "--chunk-size",
        type=positive_int,
        default=CHUNK_SIZE,
        help=f"Rows read per database round trip (default: {CHUNK_SIZE}).",
    )


def add_event_filter_arguments(parser: argparse.ArgumentParser, *, verb: str) -> None:
    """The filters of the commands that act on stored events (``replay_webhooks``,
    ``ignore_webhooks``): ``--status`` (default ``failed``), ``--endpoint``, ``--type``,
    ``--since``, ``--until``, ``--id``, ``--limit``; ``filtered_events`` applies them."""
    from ..models import WebhookEvent

    parser.add_argument(
        "--status",
        choices=[*WebhookEvent.Status.values, "any"],
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
        help=f"{verb} at most this many, oldest first (default: no limit).",
    )


def filtered_events(options: dict[str, Any]) -> Any:
    """The events ``add_event_filter_arguments``' options select (a ``CommandError`` with
    ``EXIT_USAGE`` for a bad combination)."""
    from django.core.management.base import CommandError

    from ..selectors import filter_events

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
    return queryset


def known_endpoints() -> str:
    """The configured endpoint names, for an error about an unknown one."""
    endpoints = webhooks_settings["ENDPOINTS"]
    names = sorted(map(str, endpoints)) if isinstance(endpoints, Mapping) else []
    if not names:
        return "no endpoint is configured"
    return f"known endpoints: {', '.join(names)}"
