"""Circuit breakers API: list, detail with recent transitions, reset, open, disable.

Thin views over the operator actions of ``integrations.breaker``; each action is recorded as a
``BreakerTransition`` with the actor ``api:<username>`` and the reason given, and, in the same
transaction, as a ``LogEntry`` on the breaker (the admin's History) by the request's user.
"""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from tether.api.base import OperatorAPIMixin

from ..breaker import (
    OperatorAction,
    act_and_log,
    disable_breaker,
    force_open_breaker,
    reset_breaker,
)
from ..conf import integrations_settings
from ..exceptions import BreakerNotFound, InvalidExpiry
from ..models import CircuitBreaker
from .serializers import (
    BreakerActionSerializer,
    BreakerHoldSerializer,
    CircuitBreakerDetailSerializer,
    CircuitBreakerSerializer,
)

VIEW = "integrations.view_circuitbreaker"
CHANGE = "integrations.change_circuitbreaker"
#: How the History (LogEntry) names this way of acting.
VIA = "operator API"


def api_actor(request: Request) -> str:
    """Who did it, as recorded in the transition: ``api:`` plus the username."""
    return f"api:{request.user.get_username()}"


@extend_schema_view(
    list=extend_schema(summary="List circuit breakers"),
    retrieve=extend_schema(summary="One circuit breaker with its recent transitions"),
)
class CircuitBreakerViewSet(OperatorAPIMixin, viewsets.ReadOnlyModelViewSet):
    """Circuit breakers, one per service: inspect them, reset, force open or disable them."""

    app_settings = integrations_settings
    settings_name = "INTEGRATIONS"
    throttle_scope = "integrations"
    lookup_field = "name"
    lookup_value_regex = r"[^/]+"
    pagination_class = None  # one row per service: a short list
    action_permissions = {
        "*": (VIEW,),
        "reset": (VIEW, CHANGE),
        "force_open": (VIEW, CHANGE),
        "disable": (VIEW, CHANGE),
    }
    queryset = CircuitBreaker.objects.all()

    def get_queryset(self) -> QuerySet[CircuitBreaker]:
        return CircuitBreaker.objects.order_by("name")

    def get_serializer_class(self) -> type[CircuitBreakerSerializer]:
        return CircuitBreakerSerializer if self.action == "list" else CircuitBreakerDetailSerializer

    def _act(
        self, operator_action: OperatorAction, serializer_class: type[BreakerActionSerializer]
    ) -> Response:
        """Run one operator action on the breaker named in the URL.

        Which names exist (a breaker already created, or a configured service's) is the
        operator actions' rule; any other name is a 404.
        """
        name = self.kwargs["name"]
        body = serializer_class(data=self.request.data)
        body.is_valid(raise_exception=True)
        try:
            breaker = act_and_log(
                operator_action,
                name,
                user=self.request.user,
                via=VIA,
                actor=api_actor(self.request),
                **body.validated_data,
            )
        except BreakerNotFound as exc:
            raise NotFound(f"No circuit breaker named {name!r}.") from exc
        except InvalidExpiry as exc:
            raise ValidationError({"until": [str(exc)]}) from exc
        return Response(CircuitBreakerDetailSerializer(breaker).data)

    @extend_schema(
        summary="Reset to closed (counters cleared)",
        request=BreakerActionSerializer,
        responses={200: CircuitBreakerDetailSerializer},
    )
    @action(detail=True, methods=["post"])
    def reset(self, request: Request, name: str | None = None) -> Response:
        return self._act(reset_breaker, BreakerActionSerializer)

    @extend_schema(
        summary="Force open: refuse every call until reset or `until`",
        request=BreakerHoldSerializer,
        responses={200: CircuitBreakerDetailSerializer},
    )
    @action(detail=True, methods=["post"], url_path="open", url_name="open")
    def force_open(self, request: Request, name: str | None = None) -> Response:
        return self._act(force_open_breaker, BreakerHoldSerializer)

    @extend_schema(
        summary="Disable: let every call through, breaker not consulted, until reset or `until`",
        request=BreakerHoldSerializer,
        responses={200: CircuitBreakerDetailSerializer},
    )
    @action(detail=True, methods=["post"])
    def disable(self, request: Request, name: str | None = None) -> Response:
        return self._act(disable_breaker, BreakerHoldSerializer)
