"""Times taken from input (``tether.dates``): the one bounded conversion, ``utc_datetime``, and
the operators' dates, ``parse_when``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from django.test import override_settings

from tether.dates import DateOutOfRange, parse_when, utc_datetime

LAST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
LAST_SECOND = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
FIRST = datetime(1, 1, 1, tzinfo=UTC)


def offset(hours: int, minutes: int = 0) -> timezone:
    return timezone(timedelta(hours=hours, minutes=minutes))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (LAST_SECOND, LAST_SECOND),
        (LAST, LAST),
        (FIRST, FIRST),
        (datetime(2026, 3, 1, 12, tzinfo=offset(2)), datetime(2026, 3, 1, 10, tzinfo=UTC)),
        # An offset that keeps the UTC time within range.
        (datetime(9999, 12, 31, 23, tzinfo=offset(1)), datetime(9999, 12, 31, 22, tzinfo=UTC)),
        (datetime(1, 1, 1, tzinfo=offset(-5)), datetime(1, 1, 1, 5, tzinfo=UTC)),
        (datetime(1, 1, 2, tzinfo=offset(14)), datetime(1, 1, 1, 10, tzinfo=UTC)),
        # Offsets pushing the UTC time across either end.
        (datetime(9999, 12, 31, 23, 59, 59, tzinfo=offset(-23, -59)), None),
        (datetime(9999, 12, 31, 23, 59, 59, tzinfo=offset(0, -1)), None),
        (datetime(1, 1, 1, tzinfo=offset(14)), None),
        (datetime(1, 1, 1, 0, 0, 59, tzinfo=offset(0, 1)), None),
        # Naive: UTC by default.
        (datetime(9999, 12, 31, 23, 59, 59), LAST_SECOND),
        (datetime(1, 1, 1), FIRST),
    ],
)
def test_utc_datetime(value, expected):
    result = utc_datetime(value)
    assert result == expected
    if result is not None:
        assert result.tzinfo is UTC
        assert (result.year, result.month, result.day) == (
            expected.year,
            expected.month,
            expected.day,
        )


def test_utc_datetime_takes_naive_values_in_the_given_zone():
    new_york, tokyo = ZoneInfo("America/New_York"), ZoneInfo("Asia/Tokyo")
    assert utc_datetime(datetime(2026, 7, 1, 12), naive_zone=new_york) == datetime(
        2026, 7, 1, 16, tzinfo=UTC
    )
    assert utc_datetime(datetime(9999, 12, 31, 23), naive_zone=new_york) is None
    assert utc_datetime(datetime(1, 1, 1, 3), naive_zone=tokyo) is None
    # An aware value keeps its own offset whatever the zone for naive ones.
    assert utc_datetime(LAST, naive_zone=tokyo) == LAST


@override_settings(TIME_ZONE="Asia/Tokyo")
def test_parse_when_reads_dates_and_naive_times_in_the_current_zone():
    assert parse_when("2026-03-01") == datetime(2026, 2, 28, 15, tzinfo=UTC)
    assert parse_when(" 2026-03-01T12:00 ") == datetime(2026, 3, 1, 3, tzinfo=UTC)
    assert parse_when("2026-03-01T12:00:00+01:00") == datetime(2026, 3, 1, 11, tzinfo=UTC)
    assert parse_when("9999-12-31T23:59:59Z") == LAST_SECOND


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01", "2026-03-01T25:00"])
def test_parse_when_refuses_what_is_not_iso_8601(text):
    with pytest.raises(ValueError, match="is not an ISO 8601 date") as info:
        parse_when(text)
    assert not isinstance(info.value, DateOutOfRange)


@pytest.mark.parametrize("text", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"])
def test_parse_when_refuses_what_falls_outside_the_years_1_to_9999_in_utc(text):
    with pytest.raises(DateOutOfRange, match="outside the years 1-9999 once in UTC"):
        parse_when(text)
