"""Serializers of the circuit breakers API."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tether.api.fields import DateOrDateTimeField

from ..fleet_status import fleet_status
from ..models import BreakerTransition, CircuitBreaker

#: Transitions shown with a breaker's detail, newest first.
RECENT_TRANSITIONS = 20


class BreakerTransitionSerializer(serializers.ModelSerializer):
    class Meta:
        model = BreakerTransition
        fields = ("from_state", "to_state", "reason", "actor", "snapshot", "created_at")
        read_only_fields = fields


class FleetStatusSerializer(serializers.Serializer):
    """The service's fleet policies and their state in Redis (``integrations.fleet_status``);
    a policy that is off, and its state, are null."""

    rate_limit = serializers.CharField(allow_null=True, help_text='e.g. "80/1s (burst 10)".')
    rate_per_second = serializers.FloatField(allow_null=True)
    rate_used_last_second = serializers.IntegerField(
        allow_null=True, help_text="Calls let out in the last whole second, fleet-wide."
    )
    shared_cooldown = serializers.BooleanField()
    cooldown_left = serializers.FloatField(
        allow_null=True, help_text="Seconds left of the cool-down in force (0: none)."
    )
    cooldown_reason = serializers.CharField(allow_blank=True)
    retry_budget = serializers.CharField(allow_null=True)
    budget_first_attempts = serializers.FloatField(allow_null=True)
    budget_retries = serializers.FloatField(allow_null=True)
    budget_retries_allowed = serializers.FloatField(allow_null=True)
    max_concurrency = serializers.IntegerField(allow_null=True)
    cluster_max_concurrency = serializers.IntegerField(allow_null=True)
    cluster_in_flight = serializers.IntegerField(allow_null=True)
    adaptive_throttle = serializers.CharField(allow_null=True, help_text='e.g. "K=2 over 120s".')
    throttle_probability = serializers.FloatField(
        allow_null=True,
        help_text="The probability the adaptive throttle rejects an attempt now, in the process "
        "that answered this request (it is per process).",
    )
    throttle_rejected = serializers.IntegerField(
        allow_null=True, help_text="Attempts the answering process's adaptive throttle rejected."
    )
    error = serializers.CharField(
        allow_null=True, help_text="Why Redis could not be read (its state is then null)."
    )


class CircuitBreakerSerializer(serializers.ModelSerializer):
    fleet = serializers.SerializerMethodField()

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
            "fleet",
        )
        read_only_fields = fields

    @extend_schema_field(FleetStatusSerializer)
    def get_fleet(self, breaker: CircuitBreaker) -> dict[str, Any]:
        status = fleet_status(breaker.name).as_dict()
        status.pop("service")
        return status


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
