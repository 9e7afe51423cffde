"""Webhook events API: list, detail, replay, ignore and bulk replay. Thin views over
``webhooks.selectors`` and ``webhooks.services``."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from tether.api.base import OperatorAPIMixin

from .. import selectors, services
from ..conf import webhooks_settings
from ..models import WebhookEvent
from .pagination import WebhookEventCursorPagination
from .serializers import (
    BulkReplaySerializer,
    IgnoreSerializer,
    ReplayCountSerializer,
    ReplaySerializer,
    WebhookEventDetailSerializer,
    WebhookEventQuerySerializer,
    WebhookEventSerializer,
)

VIEW = "webhooks.view_webhookevent"
CHANGE = "webhooks.change_webhookevent"
CONFLICT = OpenApiResponse(description="The event's status does not allow the action.")
#: How the History (LogEntry) names this way of acting.
VIA = "operator API"
BAD_REQUEST = OpenApiResponse(description="A filter value is invalid; the body names it.")


@extend_schema_view(
    list=extend_schema(
        summary="List webhook events, newest first",
        parameters=[WebhookEventQuerySerializer],
        responses={200: WebhookEventSerializer(many=True), 400: BAD_REQUEST},
    ),
    retrieve=extend_schema(summary="One webhook event with payload, headers, body and error"),
)
class WebhookEventViewSet(OperatorAPIMixin, viewsets.ReadOnlyModelViewSet):
    """Stored webhook events: inspect them, replay them, mark them ignored."""

    app_settings = webhooks_settings
    settings_name = "WEBHOOKS"
    throttle_scope = "webhooks"
    pagination_class = WebhookEventCursorPagination
    lookup_value_regex = r"\d+"
    action_permissions = {
        "*": (VIEW,),
        "replay": (VIEW, CHANGE),
        "ignore": (VIEW, CHANGE),
        "bulk_replay": (VIEW, CHANGE),
    }
    queryset = WebhookEvent.objects.all()

    def get_serializer_class(self) -> type:
        return WebhookEventSerializer if self.action == "list" else WebhookEventDetailSerializer

    def get_queryset(self) -> QuerySet[WebhookEvent]:
        if self.action != "list":
            return WebhookEvent.objects.prefetch_related("handler_runs")
        query = WebhookEventQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        events = selectors.filter_events(**query.selector_kwargs())
        return events.defer("body", "payload", "headers")

    @extend_schema(
        summary="Replay one event: back to `received`, attempts 0, enqueued; its failed runs "
        "(default), `all_handlers`, or the `handlers` named",
        request=ReplaySerializer,
        responses={202: WebhookEventDetailSerializer},
    )
    @action(detail=True, methods=["post"])
    def replay(self, request: Request, pk: Any = None) -> Response:
        event = self.get_object()
        body = ReplaySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        handlers = body.validated_data.get("handlers")
        if handlers and not services.handled_by(self.get_queryset().filter(pk=event.pk),
                                                handlers).exists():  # fmt: skip
            return Response({"handlers": ["None of these handlers handles this event."]},
                            status=status.HTTP_400_BAD_REQUEST)  # fmt: skip
        services.replay_event(event, actor=request.user, via=VIA,
                              reason=body.validated_data["reason"],
                              **body.handler_kwargs())  # fmt: skip
        return Response(self.get_serializer(event).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        summary="Mark one event ignored",
        request=IgnoreSerializer,
        responses={200: WebhookEventDetailSerializer, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"])
    def ignore(self, request: Request, pk: Any = None) -> Response:
        event = self.get_object()
        body = IgnoreSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        reason = body.validated_data["reason"]
        if not services.mark_ignored(event, reason=reason, actor=request.user, via=VIA):
            return Response(
                {"detail": f"An event in status {event.status!r} cannot be marked ignored."},
                status=status.HTTP_409_CONFLICT,
            )
        return Response(self.get_serializer(event).data)

    @extend_schema(
        operation_id="webhook_events_bulk_replay",
        summary="Replay the events matching filters (status defaults to `failed`)",
        request=BulkReplaySerializer,
        responses={200: ReplayCountSerializer, 202: ReplayCountSerializer, 400: BAD_REQUEST},
    )
    @action(detail=False, methods=["post"], url_path="replay")
    def bulk_replay(self, request: Request) -> Response:
        body = BulkReplaySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        events = selectors.filter_events(**body.selector_kwargs())
        limit = body.validated_data.get("limit")
        if limit is not None:
            first = events.order_by("received_at", "id").values("pk")[:limit]
            events = WebhookEvent.objects.filter(pk__in=first)
        dry_run = body.validated_data["dry_run"]
        count = services.replay_events(events, dry_run=dry_run, actor=request.user, via=VIA,
                                       reason=body.validated_data["reason"],
                                       **body.handler_kwargs())  # fmt: skip
        return Response(
            {"count": count},
            status=status.HTTP_200_OK if dry_run else status.HTTP_202_ACCEPTED,
        )
