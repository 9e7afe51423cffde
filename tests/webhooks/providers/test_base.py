"""The building blocks every provider shares: the bounded conversion of Unix times
(``datetime_from_unix``, through ``tether.dates.utc_datetime``) and JSON parsing
(``load_json_object``)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest

from webhooks.exceptions import MalformedPayload
from webhooks.providers.base import (
    ParsedEvent,
    datetime_from_unix,
    load_json_object,
)

LAST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
LAST_SECOND = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
FIRST = datetime(1, 1, 1, tzinfo=UTC)


def offset(hours: int, minutes: int = 0) -> timezone:
    return timezone(timedelta(hours=hours, minutes=minutes))


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


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-be", "utf-32"])
def test_bodies_are_decoded_as_json_loads_decodes_them(encoding):
    # The encodings the JSON standard allows, a byte order mark or not, as json.loads reads them.
    text = '{"id": "evt_\u00e9", "n": [1.5, 2]}'
    assert load_json_object(text.encode(encoding)) == {"id": "evt_\u00e9", "n": [1.5, 2]}


@pytest.mark.parametrize("body", [b"\xff\xfe{", b'{"a": "\xc3"}', "\ufeff{}", b"", "[1]"])
def test_undecodable_or_not_an_object_is_malformed(body):
    with pytest.raises(MalformedPayload):
        load_json_object(body)


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
