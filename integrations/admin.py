"""Admin for circuit breakers: state at a glance, the transition history, operator actions.

The actions are thin: each calls an operator action of ``integrations.breaker`` with the acting
username as actor, as does saving a breaker's policy overrides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from .breaker import (
    OperatorAction,
    disable_breaker,
    force_open_breaker,
    reset_breaker,
    set_breaker_overrides,
)
from .exceptions import BreakerNotFound
from .fleet_status import fleet_status
from .models import BreakerState, BreakerTransition, CircuitBreaker

if TYPE_CHECKING:
    from django.contrib.admin.options import InlineModelAdmin
    from django_stubs_ext import StrOrPromise

DEFAULT_REASON = "admin action"

_BADGE_COLOURS: dict[str, str] = {
    BreakerState.CLOSED: "#2e7d32",
    BreakerState.OPEN: "#c62828",
    BreakerState.HALF_OPEN: "#ef6c00",
    BreakerState.FORCED_OPEN: "#6a1b9a",
    BreakerState.DISABLED: "#616161",
}


class ReadOnlyMixin:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class BreakerTransitionInline(ReadOnlyMixin, admin.TabularInline):
    """The latest transitions of one breaker; the full history is one link away."""

    model = BreakerTransition
    extra = 0
    max_shown = 50
    ordering = ("-created_at", "-id")
    fields = ("created_at", "from_state", "to_state", "reason", "actor", "snapshot")
    readonly_fields = fields
    show_change_link = False
    verbose_name_plural = _("transition history (newest first, latest 50)")
    breaker: CircuitBreaker | None = None

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        if self.breaker is None:
            return queryset.none()
        latest = (
            BreakerTransition.objects.filter(breaker=self.breaker)
            .order_by("-created_at", "-id")
            .values_list("pk", flat=True)[: self.max_shown]
        )
        return queryset.filter(pk__in=list(latest))


@admin.register(CircuitBreaker)
class CircuitBreakerAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "state_badge",
        "consecutive_failures",
        "total_failures",
        "total_successes",
        "opened_at",
        "last_failure_at",
        "last_error",
        "forced_until",
        "fleet_policies",
    )
    list_filter = ("state",)
    search_fields = ("name",)
    ordering = ("name",)
    actions = ("reset_selected", "force_open_selected", "disable_selected")
    inlines = (BreakerTransitionInline,)
    readonly_fields = (
        "name",
        "state_badge",
        "all_transitions",
        "fleet_policies",
        "fleet_details",
        "version",
        "consecutive_failures",
        "total_successes",
        "total_failures",
        "half_open_in_flight",
        "probe_lease_until",
        "window_start",
        "window_calls",
        "window_failures",
        "previous_window_calls",
        "previous_window_failures",
        "opened_at",
        "last_failure_at",
        "last_error",
        "forced_until",
        "created_at",
        "updated_at",
    )
    fieldsets = (
        (
            None,
            {"fields": ("name", "state_badge", "forced_until", "last_error", "all_transitions")},
        ),
        (
            _("Counts"),
            {
                "fields": (
                    "consecutive_failures",
                    "total_failures",
                    "total_successes",
                    "half_open_in_flight",
                    "probe_lease_until",
                    "opened_at",
                    "last_failure_at",
                )
            },
        ),
        (
            _("Failure-rate window"),
            {
                "classes": ("collapse",),
                "fields": (
                    "window_start",
                    "window_calls",
                    "window_failures",
                    "previous_window_calls",
                    "previous_window_failures",
                ),
            },
        ),
        (
            _("Fleet policies (shared by every process, state in Redis)"),
            {"fields": ("fleet_policies", "fleet_details")},
        ),
        (
            _("Policy overrides (empty = from settings)"),
            {"fields": ("failure_threshold", "reset_timeout", "half_open_max_calls")},
        ),
        (_("Record"), {"fields": ("version", "created_at", "updated_at")}),
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a breaker row is created by its service's first call

    def get_inline_instances(
        self, request: HttpRequest, obj: CircuitBreaker | None = None
    ) -> list[InlineModelAdmin[Any, Any]]:
        inlines = super().get_inline_instances(request, obj)
        for inline in inlines:
            if isinstance(inline, BreakerTransitionInline):
                inline.breaker = obj  # a fresh instance per request: safe to set
        return inlines

    @admin.display(description=_("history"))
    def all_transitions(self, obj: CircuitBreaker) -> str:
        url = reverse("admin:integrations_breakertransition_changelist")
        return format_html(
            '<a href="{}?breaker__id__exact={}">{}</a>',
            url,
            obj.pk,
            _("all %(count)d transitions") % {"count": obj.transitions.count()},
        )

    def save_model(
        self, request: HttpRequest, obj: CircuitBreaker, form: Any, change: bool
    ) -> None:
        """Write only the policy overrides that changed: a full save would overwrite counters
        that other processes incremented since the page was read."""
        if form.changed_data:
            set_breaker_overrides(
                obj.name, {field: getattr(obj, field) for field in form.changed_data}
            )

    @admin.display(description=_("fleet policies"))
    def fleet_policies(self, obj: CircuitBreaker) -> str:
        """The service's rate limit (used / limit), cool-down, retry budget and bulkhead now
        (``integrations.fleet_status``); "-" when it has none."""
        return fleet_status(obj.name).summary()

    @admin.display(description=_("fleet policy details"))
    def fleet_details(self, obj: CircuitBreaker) -> str:
        status = fleet_status(obj.name)
        if not status.active:
            return "-"
        rows = [
            (k, v) for k, v in status.as_dict().items() if k != "service" and v not in (None, "")
        ]
        return format_html_join(
            "", "<div><code>{}</code>: {}</div>", ((name, value) for name, value in rows)
        )

    @admin.display(description=_("state"), ordering="state")
    def state_badge(self, obj: CircuitBreaker) -> str:
        return format_html(
            '<span style="background:{};color:#fff;padding:2px 8px;border-radius:8px;'
            'font-weight:bold;white-space:nowrap">{}</span>',
            _BADGE_COLOURS.get(obj.state, "#616161"),
            obj.get_state_display(),
        )

    def _apply(
        self,
        request: HttpRequest,
        queryset: QuerySet[CircuitBreaker],
        action: OperatorAction,
        done: StrOrPromise,
    ) -> None:
        actor = request.user.get_username()
        done_names = []
        for name in queryset.values_list("name", flat=True):
            try:
                action(name, actor=actor, reason=DEFAULT_REASON)
            except BreakerNotFound:
                self.message_user(request, _("%s no longer exists.") % name, messages.WARNING)
            else:
                done_names.append(name)
        if done_names:
            self.message_user(request, f"{done}: {', '.join(done_names)}", messages.SUCCESS)

    @admin.action(description=_("Reset selected breakers (close)"), permissions=("change",))
    def reset_selected(self, request: HttpRequest, queryset: QuerySet[CircuitBreaker]) -> None:
        self._apply(request, queryset, reset_breaker, _("Reset"))

    @admin.action(description=_("Force open selected breakers"), permissions=("change",))
    def force_open_selected(self, request: HttpRequest, queryset: QuerySet[CircuitBreaker]) -> None:
        self._apply(request, queryset, force_open_breaker, _("Forced open"))

    @admin.action(description=_("Disable selected breakers"), permissions=("change",))
    def disable_selected(self, request: HttpRequest, queryset: QuerySet[CircuitBreaker]) -> None:
        self._apply(request, queryset, disable_breaker, _("Disabled"))


@admin.register(BreakerTransition)
class BreakerTransitionAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("created_at", "breaker", "from_state", "to_state", "actor", "reason")
    list_filter = ("to_state", "breaker")
    search_fields = ("breaker__name", "reason", "actor")
    list_select_related = ("breaker",)
    ordering = ("-created_at", "-id")
    date_hierarchy = "created_at"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).select_related("breaker")
