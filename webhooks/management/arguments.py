"""Argument types shared by the webhooks management commands: bad input becomes a usage error
(a ``CommandError`` naming the argument), never a traceback."""

from __future__ import annotations

import argparse
import datetime as dt
import math

from tether.dates import parse_when

from ..providers.base import MAX_ID_LENGTH

# Exit codes of the webhooks commands.
EXIT_OK = 0
EXIT_USAGE = 2  # bad input, as argparse itself uses
EXIT_BROKER_UNAVAILABLE = 3
EXIT_NOT_ALL_PROCESSED = 4


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
