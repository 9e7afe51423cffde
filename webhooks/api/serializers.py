"""Serializers of the webhook events API: what an operator needs, never a secret.

Signature secrets are not stored on events at all; the stored headers are the provider's
allow-list (ids, type, timestamp, signature, ``Content-Type``, ``User-Agent``), and the
signature among them is shown only to users with the change permission
(``selectors.visible_headers``).
"""

from __future__ import annotations

import base64
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tether.api.fields import DateOrDateTimeField, OneOrManyStringsField

from ..models import HandlerRun, WebhookEvent
from ..registry import HANDLER_NAME_MAX_CHARS
from ..selectors import visible_headers
from ..services import REASON_MAX_CHARS, UnknownHandler, checked_handlers

#: The most handlers one replay request may name.
REPLAY_HANDLERS_MAX = 50


class HandlerRunSerializer(serializers.ModelSerializer):
    """One handler's run for the event: where it stands, its attempts and last error."""

    duration = serializers.SerializerMethodField(help_text="Seconds the latest run took.")

    class Meta:
        model = HandlerRun
        fields = ("handler", "status", "attempts", "last_error", "next_attempt_at",
                  "started_at", "finished_at", "duration")  # fmt: skip
        read_only_fields = fields

    @extend_schema_field(serializers.FloatField(allow_null=True))
    def get_duration(self, run: HandlerRun) -> float | None:
        duration = run.duration
        return None if duration is None else duration.total_seconds()


class HandlersField(serializers.ListField):
    """Dotted handler names, each checked against the registry (unknown, malformed or too long:
    a 400 naming it)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            child=serializers.CharField(max_length=HANDLER_NAME_MAX_CHARS),
            allow_empty=False,
            max_length=REPLAY_HANDLERS_MAX,
            **kwargs,
        )

    def to_internal_value(self, data: Any) -> list[str]:
        names: list[str] = super().to_internal_value(data)
        if len(names) > REPLAY_HANDLERS_MAX:  # checked here: the validators see the list deduped
            raise serializers.ValidationError(f"Name at most {REPLAY_HANDLERS_MAX} handlers.")
        try:
            return checked_handlers(names)
        except UnknownHandler as exc:
            raise serializers.ValidationError(str(exc)) from None


class HandlerChoiceSerializer(serializers.Serializer):
    """Which handlers a replay runs: the failed runs (default), ``all_handlers``, or
    ``handlers``."""

    handlers = HandlersField(
        required=False,
        help_text="Run only these handlers (dotted paths as registered with @on), including "
        "handlers added after the events were processed (a backfill). Default: the failed runs.",
    )
    all_handlers = serializers.BooleanField(
        required=False, default=False, help_text="Run every matching handler again."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if attrs.get("handlers") and attrs.get("all_handlers"):
            raise serializers.ValidationError(
                {"all_handlers": ["Give handlers or all_handlers, not both."]}
            )
        return attrs

    def handler_kwargs(self) -> dict[str, Any]:
        """The validated choice as ``services.replay_events`` keywords."""
        data = self.validated_data
        return {"handlers": data.get("handlers"), "all_handlers": data["all_handlers"]}


class WebhookEventSerializer(serializers.ModelSerializer):
    """One event in a list: where it stands, without its body."""

    class Meta:
        model = WebhookEvent
        fields: tuple[str, ...] = (
            "id",
            "endpoint",
            "event_id",
            "event_type",
            "source",
            "status",
            "attempts",
            "last_error",
            "received_at",
            "occurred_at",
            "last_attempt_at",
            "next_attempt_at",
            "processed_at",
        )
        read_only_fields: tuple[str, ...] = fields


class WebhookEventDetailSerializer(WebhookEventSerializer):
    """One event in full: payload, stored headers, last error and the exact body received.

    ``body`` is the raw body as text when it is UTF-8 (``body_encoding`` ``"utf-8"``), else
    base64 (``"base64"``), so that an operator can re-verify a signature. ``headers`` are the
    stored ones the requesting user may see: without the change permission, not the signature.
    """

    headers = serializers.SerializerMethodField()
    body = serializers.SerializerMethodField()
    body_encoding = serializers.SerializerMethodField()
    handler_runs = HandlerRunSerializer(
        many=True,
        read_only=True,
        help_text="Each handler's run, in order; empty for an event stored before runs existed "
        "or that no handler matched.",
    )

    class Meta(WebhookEventSerializer.Meta):
        fields = (
            *WebhookEventSerializer.Meta.fields,
            "payload",
            "headers",
            "body",
            "body_encoding",
            "handler_runs",
        )
        read_only_fields = fields

    def _decoded(self, event: WebhookEvent) -> tuple[str, str]:
        raw = bytes(event.body or b"")
        try:
            return raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii"), "base64"

    @extend_schema_field(serializers.DictField(child=serializers.CharField()))
    def get_headers(self, event: WebhookEvent) -> dict[str, Any]:
        request = self.context.get("request")
        return visible_headers(event, getattr(request, "user", None))

    @extend_schema_field(serializers.CharField())
    def get_body(self, event: WebhookEvent) -> str:
        return self._decoded(event)[0]

    @extend_schema_field(serializers.ChoiceField(choices=["utf-8", "base64"]))
    def get_body_encoding(self, event: WebhookEvent) -> str:
        return self._decoded(event)[1]


class WebhookEventFilterSerializer(serializers.Serializer):
    """Filters of the list (query string) and of the bulk replay (JSON body)."""

    endpoint = serializers.CharField(required=False, max_length=100)
    status = serializers.ChoiceField(choices=WebhookEvent.Status.choices, required=False)
    type = serializers.CharField(
        required=False, max_length=255, help_text="Event type pattern: `invoice.*`, `*`, or a name."
    )
    event_id = OneOrManyStringsField(
        required=False, max_length=1000, help_text="The vendor's event id; repeatable."
    )
    since = DateOrDateTimeField(
        required=False, help_text="Received at or after (ISO 8601 date or datetime)."
    )
    until = DateOrDateTimeField(
        required=False, help_text="Received before (ISO 8601; exclusive, a date is its midnight)."
    )

    #: Query parameters that are not filters (pagination).
    passthrough: tuple[str, ...] = ()

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if hasattr(data, "keys"):
            unknown = sorted(set(data.keys()) - set(self.fields) - set(self.passthrough))
            if unknown:
                raise serializers.ValidationError(
                    {name: ["Unknown parameter."] for name in unknown}
                )
        values: dict[str, Any] = super().to_internal_value(data)
        return values

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        since, until = attrs.get("since"), attrs.get("until")
        if since and until and since >= until:
            raise serializers.ValidationError({"until": ["Must be later than since."]})
        return attrs

    def selector_kwargs(self) -> dict[str, Any]:
        """The validated filters as ``webhooks.selectors.filter_events`` keywords."""
        data = self.validated_data
        return {
            "status": data.get("status"),
            "endpoint": data.get("endpoint"),
            "type_pattern": data.get("type"),
            "event_ids": data.get("event_id"),
            "since": data.get("since"),
            "until": data.get("until"),
        }


class WebhookEventQuerySerializer(WebhookEventFilterSerializer):
    passthrough = ("cursor", "page_size")


class BulkReplaySerializer(HandlerChoiceSerializer, WebhookEventFilterSerializer):
    """Bulk replay: the list's filters, ``status`` defaulting to ``failed`` as in
    ``replay_webhooks``, an optional ``limit`` and ``dry_run``."""

    status = serializers.ChoiceField(
        choices=WebhookEvent.Status.choices, required=False, default=WebhookEvent.Status.FAILED
    )
    limit = serializers.IntegerField(required=False, min_value=1)
    dry_run = serializers.BooleanField(required=False, default=False)
    reason = serializers.CharField(
        required=False, allow_blank=True, max_length=REASON_MAX_CHARS, default="",
        help_text="Why; recorded in each replayed event's History (LogEntry).",
    )  # fmt: skip


class ReplayCountSerializer(serializers.Serializer):
    count = serializers.IntegerField(help_text="Events replayed, or that would be with dry_run.")


class IgnoreSerializer(serializers.Serializer):
    """The body of ``ignore``: an optional reason, recorded in the event's History (LogEntry)
    with the API user."""

    reason = serializers.CharField(
        required=False, allow_blank=True, max_length=REASON_MAX_CHARS, default=""
    )


class ReplaySerializer(HandlerChoiceSerializer, IgnoreSerializer):
    """The body of a single ``replay``: an optional reason, and which handlers run."""
