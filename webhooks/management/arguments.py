"""Argument types shared by the webhooks management commands: bad input becomes a usage error
(a ``CommandError`` naming the argument), never a traceback."""

from __future__ import annotations

import argparse
import datetime as dt
import math

from tether.dates import parse_when

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
