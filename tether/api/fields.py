"""Serializer fields shared by the operator APIs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tether.dates import DateOutOfRange, parse_when


@extend_schema_field(OpenApiTypes.DATETIME)
class DateOrDateTimeField(serializers.Field):
    """An ISO 8601 date (``2026-03-01``, meaning its midnight) or datetime
    (``2026-03-01T12:00:00Z``; without an offset, in the current time zone), parsed by
    ``tether.dates.parse_when`` as the commands do. The value is an aware ``datetime`` in
    UTC; one outside the years 1-9999 once in UTC is refused (``out_of_range``)."""

    default_error_messages = {
        "invalid": (
            "Enter an ISO 8601 date (YYYY-MM-DD) or datetime (YYYY-MM-DDThh:mm[:ss][+hh:mm])."
        ),
        "out_of_range": "Enter a date or datetime within the years 1-9999 once in UTC.",
    }

    def to_internal_value(self, data: Any) -> dt.datetime:
        if not isinstance(data, str) or len(data) > 64:
            self.fail("invalid")
        try:
            return parse_when(data)
        except DateOutOfRange:
            self.fail("out_of_range")
        except ValueError:
            self.fail("invalid")

    def to_representation(self, value: dt.datetime) -> str:
        return value.isoformat()


class OneOrManyStringsField(serializers.ListField):
    """A list of strings that also takes a single string (``"evt_1"`` or ``["evt_1", "evt_2"]``);
    in a query string, repeat the parameter."""

    child = serializers.CharField(max_length=255)

    def to_internal_value(self, data: Any) -> list[str]:
        if isinstance(data, str):
            data = [data]
        return super().to_internal_value(data)
