"""Serializers of the circuit breakers API."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tether.api.fields import DateOrDateTimeField

from ..models import BreakerTransition, CircuitBreaker

#: Transitions shown with a breaker's detail, newest first.
RECENT_TRANSITIONS = 20


class BreakerTransitionSerializer(serializers.ModelSerializer):
    class Meta:
        model = BreakerTransition
        fields = ("from_state", "to_state", "reason", "actor", "snapshot", "created_at")
        read_only_fields = fields


class CircuitBreakerSerializer(serializers.ModelSerializer):
    class Meta:
        model = CircuitBreaker
        fields: tuple[str, ...] = (
            "name",
            "state",
            "consecutive_failures",
            "total_successes",
            "total_failures",
            "half_open_in_flight",
            "opened_at",
            "last_failure_at",
            "last_error",
            "forced_until",
            "failure_threshold",
            "reset_timeout",
            "half_open_max_calls",
            "updated_at",
        )
        read_only_fields = fields


class CircuitBreakerDetailSerializer(CircuitBreakerSerializer):
    recent_transitions = serializers.SerializerMethodField()

    class Meta(CircuitBreakerSerializer.Meta):
        fields = (*CircuitBreakerSerializer.Meta.fields, "recent_transitions")
        read_only_fields = fields

    @extend_schema_field(BreakerTransitionSerializer(many=True))
    def get_recent_transitions(self, breaker: CircuitBreaker) -> list[dict[str, Any]]:
        rows = breaker.transitions.order_by("-created_at", "-id")[:RECENT_TRANSITIONS]
        # drf-stubs type a serializer made with many=True as itself, not the ListSerializer it
        # is, so its .data as a dict (typeddjango/djangorestframework-stubs#260).
        return BreakerTransitionSerializer(rows, many=True).data  # type: ignore[return-value]


class BreakerActionSerializer(serializers.Serializer):
    """Body of reset, open and disable: why, and (open, disable) until when."""

    reason = serializers.CharField(
        max_length=500,
        allow_blank=True,
        required=False,
        default="",
        help_text="Why; recorded in the transition and the breaker's History (LogEntry).",
    )

    def validate_reason(self, value: str) -> str:
        return value.strip()


class BreakerHoldSerializer(BreakerActionSerializer):
    reason = serializers.CharField(
        max_length=500,
        help_text="Why; recorded in the transition and the breaker's History (LogEntry) "
        "(required).",
    )
    until = DateOrDateTimeField(
        required=False,
        allow_null=True,
        help_text="When the breaker returns to closed by itself (ISO 8601); empty = never.",
    )

    def validate_reason(self, value: str) -> str:
        value = value.strip()
        if not value:
            raise serializers.ValidationError("A reason is required.")
        return value
