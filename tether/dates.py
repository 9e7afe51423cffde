"""Times taken from input, bounded by one rule: aware, in UTC, within the years 1-9999.

``utc_datetime`` is the rule (webhook payloads' occurred times go through it); ``parse_when``
reads the ISO 8601 dates and datetimes operators give the commands and the operator APIs.
"""

from __future__ import annotations

import datetime as dt
from datetime import UTC, datetime, tzinfo

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

__all__ = ["DateOutOfRange", "parse_when", "utc_datetime"]


def utc_datetime(value: datetime, *, naive_zone: tzinfo = UTC) -> datetime | None:
    """``value`` as an aware datetime in UTC, or None when it is unusable: outside the years
    1-9999 once converted to UTC. A naive ``value`` is taken in ``naive_zone``.

    The one rule for every time taken from input: occurred times
    (``webhooks.providers.base.datetime_from_unix``, Standard Webhooks' ISO 8601 ``timestamp``)
    and the dates given to the commands and the operator APIs (``parse_when``). A legal ISO 8601
    value can fall outside: ``9999-12-31T23:59:59-23:59`` is year 10000 in UTC, which PostgreSQL
    stores but Python cannot read back (every later read of the row fails), and SQLite's adapter
    cannot convert.
    """
    if value.utcoffset() is None:
        value = value.replace(tzinfo=naive_zone)
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        return None


class DateOutOfRange(ValueError):
    """A date or datetime that parses but falls outside the years 1-9999 once in UTC."""


def parse_when(value: str | dt.date | dt.datetime) -> dt.datetime:
    """An ISO 8601 date or datetime as an aware datetime in UTC; a date means its midnight.

    Naive values are in the current time zone (``TIME_ZONE``). Raises ``ValueError`` with a
    readable message for anything else: ``DateOutOfRange`` for a value outside the years 1-9999
    once in UTC (``utc_datetime``, the rule for every time taken from input), e.g.
    ``9999-12-31T23:59:59-23:59``, which a database would store and then fail to read back.
    """
    parsed: dt.datetime | None
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, dt.date):
        parsed = dt.datetime.combine(value, dt.time.min)
    else:
        text = str(value).strip()
        try:
            parsed = parse_datetime(text)
            if parsed is None:
                day = parse_date(text)
                parsed = dt.datetime.combine(day, dt.time.min) if day else None
        except ValueError:
            parsed = None
        if parsed is None:
            raise ValueError(
                f"{text!r} is not an ISO 8601 date (YYYY-MM-DD) or datetime "
                "(YYYY-MM-DDThh:mm[:ss][+hh:mm])"
            )
    bounded = utc_datetime(parsed, naive_zone=timezone.get_current_timezone())
    if bounded is None:
        raise DateOutOfRange(f"{str(value).strip()!r} is outside the years 1-9999 once in UTC")
    return bounded
