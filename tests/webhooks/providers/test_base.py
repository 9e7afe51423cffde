"""The building blocks every provider shares: the bounded conversion of input times
(``utc_datetime``, ``datetime_from_unix``) and JSON parsing (``load_json_object``)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from webhooks.exceptions import MalformedPayload
from webhooks.providers.base import (
    ParsedEvent,
    datetime_from_unix,
    load_json_object,
    utc_datetime,
)

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


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        (1.5, datetime(1970, 1, 1, 0, 0, 1, 500000, tzinfo=UTC)),
        (253_402_300_799, LAST_SECOND),
        (-62_135_596_800, FIRST),
        (253_402_300_800, None),  # year 10000
        (-62_135_596_801, None),  # year 0
        (1e20, None),
        (10**30, None),
        (10**400, None),  # too large even for a float
        (math.nan, None),
        (math.inf, None),
        (-math.inf, None),
        (True, None),
        ("1614265330", None),
        (None, None),
    ],
)
def test_datetime_from_unix(value, expected):
    assert datetime_from_unix(value) == expected


# -- JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"amount": NaN}',
        b'{"amount": Infinity}',
        b'{"amount": -Infinity}',
        b'{"amount": 1e999}',
        b'{"amount": -1e999}',
        b'{"amount": 1.5E+400}',
        b'{"a": {"b": [1, 2, {"c": 1e309}]}}',  # anywhere in the document
        b'{"a": [0.5, NaN]}',
    ],
)
def test_non_finite_numbers_are_malformed(body):
    with pytest.raises(MalformedPayload, match="NaN, Infinity or a number out of range"):
        load_json_object(body)
    with pytest.raises(MalformedPayload):
        load_json_object(body.decode())


def test_finite_numbers_are_kept_as_parsed():
    payload = load_json_object(b'{"a": 1.7976931348623157e308, "b": 1e-999, "c": -0.0, "d": 10}')
    assert payload == {"a": 1.7976931348623157e308, "b": 0.0, "c": -0.0, "d": 10}
    assert isinstance(payload["a"], float) and isinstance(payload["d"], int)
    assert load_json_object('{"name": "NaN", "n": "Infinity"}') == {"name": "NaN", "n": "Infinity"}


def test_any_providers_occurred_time_is_bounded():
    # A user's provider may build the time itself: ParsedEvent applies the same rule.
    far = datetime(9999, 12, 31, 23, 59, 59, tzinfo=offset(-23, -59))
    assert ParsedEvent("evt_1", "a.b", far, {}).occurred_at is None
    assert ParsedEvent("evt_1", "a.b", None, {}).occurred_at is None
    local = datetime(2026, 3, 1, 12, tzinfo=offset(2))
    occurred = ParsedEvent("evt_1", "a.b", local, {}).occurred_at
    assert occurred == local and occurred.tzinfo is UTC
    assert ParsedEvent("e", "t", datetime(2026, 3, 1), {}).occurred_at == datetime(
        2026, 3, 1, tzinfo=UTC
    )
