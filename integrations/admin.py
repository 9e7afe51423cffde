"""Admin for circuit breakers: state at a glance, the policy in force, the transition history,
and the operator actions.

Reset, Force open and Disable are buttons on a breaker's page (Django's object-tools). Each asks
for a reason (required) and, for the holds, an optional ``until``, shows a confirmation page,
then calls the operator action of ``integrations.breaker`` (the one path that writes
transitions) with the acting username as actor, and writes a ``LogEntry`` (the History tab) in
the same transaction (``integrations.breaker.act_and_log``, as the command and the API do).
They need the change permission. The changelist has no bulk actions: an action on many
breakers at once is the ``circuit_breakers`` command's or the operator API's, one call each.
No breaker is deleted here: a configured service's breaker is recreated on its next call
anyway, and deleting it would delete its transition history, the audit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _

from tether.dates import parse_when

from .breaker import (
    DISABLED,
    FORCED_OPEN,
    HALF_OPEN,
    MAX_HOLD,
    OPEN,
    Breaker,
    act_and_log,
    check_until,
    disable_breaker,
    force_open_breaker,
    reset_breaker,
    set_breaker_overrides,
)
from .exceptions import BreakerNotFound, InvalidExpiry
from .fleet_status import fleet_status
from .models import BreakerState, BreakerTransition, CircuitBreaker
from .storage import LAST_ERROR_MAX, snapshot_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from django.contrib.admin.options import InlineModelAdmin
    from django_stubs_ext import StrOrPromise

_BADGE_COLOURS: dict[str, str] = {
    BreakerState.CLOSED: "#2e7d32",
    BreakerState.OPEN: "#c62828",
    BreakerState.HALF_OPEN: "#ef6c00",
    BreakerState.FORCED_OPEN: "#6a1b9a",
    BreakerState.DISABLED: "#616161",
}

#: The longest reason kept: the transition's ``reason`` column.
REASON_MAX = LAST_ERROR_MAX


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


@dataclass(frozen=True)
class BreakerAction:
    """One operator action as the admin offers it: a button, a form, a confirmation."""

    slug: str
    label: StrOrPromise
    run: Callable[..., CircuitBreaker]
    to_state: str
    takes_until: bool
    effect: StrOrPromise


BREAKER_ACTIONS: dict[str, BreakerAction] = {
    action.slug: action
    for action in (
        BreakerAction(
            "reset",
            _("Reset"),
            reset_breaker,
            BreakerState.CLOSED,
            False,
            _(
                "Close the breaker: calls go to the vendor again. Failure counts go back to "
                "zero (the totals are kept); a forced-open or disabled hold ends."
            ),
        ),
        BreakerAction(
            "force-open",
            _("Force open"),
            force_open_breaker,
            FORCED_OPEN,
            True,
            _(
                "Hold the breaker open: every call fails fast with CircuitOpenError, without "
                "reaching the vendor, until it is reset or until the time given."
            ),
        ),
        BreakerAction(
            "disable",
            _("Disable"),
            disable_breaker,
            DISABLED,
            True,
            _(
                "Let every call through whatever fails (outcomes are still counted), until it "
                "is reset or until the time given; then the breaker is closed again."
            ),
        ),
    )
}


class BreakerActionForm(forms.Form):
    """Why (required, at most ``REASON_MAX`` characters) and, for the holds, until when: an
    ISO 8601 date or datetime (``tether.dates.parse_when``, naive = the project's time zone),
    in the future and at most ``MAX_HOLD`` away (``integrations.breaker.check_until``)."""

    reason = forms.CharField(
        label=_("Reason"),
        max_length=REASON_MAX,
        strip=True,
        widget=forms.TextInput(attrs={"size": 80, "autofocus": True}),
        help_text=_("Recorded in the transition and the History tab."),
    )
    until = forms.CharField(
        label=_("Until"),
        required=False,
        max_length=64,
        widget=forms.TextInput(attrs={"placeholder": "YYYY-MM-DD hh:mm", "size": 25}),
    )

    def __init__(self, *args: Any, takes_until: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if takes_until:
            self.fields["until"].help_text = _(
                "Optional: when the breaker returns to closed by itself (ISO 8601 date or "
                "datetime; without an offset, in %(zone)s), at most %(days)d days ahead. "
                "Empty: until someone resets it."
            ) % {"zone": timezone.get_current_timezone_name(), "days": MAX_HOLD.days}
        else:
            del self.fields["until"]

    def clean_until(self) -> datetime | None:
        text = self.cleaned_data.get("until", "").strip()
        if not text:
            return None
        try:
            until = parse_when(text)
            check_until(until)
        except (ValueError, InvalidExpiry) as exc:  # InvalidExpiry is a ValueError too
            raise forms.ValidationError(str(exc)) from None
        return until


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
    actions = ()  # the buttons on each breaker's page (see the module's docstring)
    inlines = (BreakerTransitionInline,)
    change_form_template = "admin/integrations/circuitbreaker/change_form.html"
    action_form_template = "admin/integrations/circuitbreaker/action_form.html"
    readonly_fields = (
        "name",
        "state_badge",
        "next_probe",
        "policy_in_force",
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
            {
                "fields": (
                    "name",
                    "state_badge",
                    "next_probe",
                    "forced_until",
                    "last_error",
                    "all_transitions",
                )
            },
        ),
        (_("Policy in force"), {"fields": ("policy_in_force",)}),
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
            _("Policy overrides of this breaker (empty = the settings' value, shown above)"),
            {"fields": ("failure_threshold", "reset_timeout", "half_open_max_calls")},
        ),
        (_("Record"), {"fields": ("version", "created_at", "updated_at")}),
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # a breaker row is created by its service's first call

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # recreated on the next call anyway; its transitions are the audit

    def get_inline_instances(
        self, request: HttpRequest, obj: CircuitBreaker | None = None
    ) -> list[InlineModelAdmin[Any, Any]]:
        inlines = super().get_inline_instances(request, obj)
        for inline in inlines:
            if isinstance(inline, BreakerTransitionInline):
                inline.breaker = obj  # a fresh instance per request: safe to set
        return inlines

    # -- the operator actions: buttons, form, confirmation ------------------------------------

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<path:object_id>/action/<slug:action>/",
                self.admin_site.admin_view(self.breaker_action_view),
                name="integrations_circuitbreaker_action",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        obj = self.get_object(request, unquote(object_id))
        buttons = []
        if obj is not None and self.has_change_permission(request, obj):
            buttons = [
                {"label": action.label, "url": self._action_url(obj, action)}
                for action in BREAKER_ACTIONS.values()
            ]
        context = {**(extra_context or {}), "breaker_actions": buttons}
        return super().change_view(request, object_id, form_url, context)

    def _action_url(self, obj: CircuitBreaker, action: BreakerAction) -> str:
        return reverse(
            f"{self.admin_site.name}:integrations_circuitbreaker_action",
            args=[obj.pk, action.slug],
        )

    def breaker_action_view(
        self, request: HttpRequest, object_id: str, action: str
    ) -> HttpResponse:
        """GET: the form. POST: the form again with its errors, or the confirmation page, or
        (with ``confirm``) the action itself, then back to the breaker's page."""
        chosen = BREAKER_ACTIONS.get(action)
        if chosen is None:
            raise Http404(f"no breaker action {action!r}")
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404(f"no circuit breaker with id {object_id!r}")
        if not self.has_change_permission(request, obj):
            raise PermissionDenied
        if request.method != "POST":
            form = BreakerActionForm(takes_until=chosen.takes_until)
            return self._render_action(request, obj, chosen, form, confirming=False)
        form = BreakerActionForm(request.POST, takes_until=chosen.takes_until)
        if not form.is_valid():
            return self._render_action(request, obj, chosen, form, confirming=False)
        if request.POST.get("confirm") != "yes":
            return self._render_action(request, obj, chosen, form, confirming=True)
        reason: str = form.cleaned_data["reason"]
        until: datetime | None = form.cleaned_data.get("until")
        kwargs: dict[str, Any] = {"until": until} if chosen.takes_until else {}
        try:
            row = act_and_log(
                chosen.run,
                obj.name,
                user=request.user,
                via="admin",
                actor=request.user.get_username(),
                reason=reason,
                **kwargs,
            )
        except BreakerNotFound:
            self.message_user(request, _("%s no longer exists.") % obj.name, messages.WARNING)
            return HttpResponseRedirect(
                reverse(f"{self.admin_site.name}:integrations_circuitbreaker_changelist")
            )
        except InvalidExpiry as exc:  # the time passed while the page was open
            form.add_error("until", str(exc))
            return self._render_action(request, obj, chosen, form, confirming=False)
        self.message_user(
            request,
            _("%(action)s: %(name)s is now %(state)s.")
            % {"action": chosen.label, "name": row.name, "state": row.get_state_display()},
            messages.SUCCESS,
        )
        return HttpResponseRedirect(
            reverse(f"{self.admin_site.name}:integrations_circuitbreaker_change", args=[row.pk])
        )

    def _render_action(
        self,
        request: HttpRequest,
        obj: CircuitBreaker,
        action: BreakerAction,
        form: BreakerActionForm,
        *,
        confirming: bool,
    ) -> TemplateResponse:
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{action.label}: {obj.name}",
            "subtitle": None,
            "breaker": obj,
            "action": action,
            "to_state_label": BreakerState(action.to_state).label,
            "form": form,
            "confirming": confirming,
            "reason": form.cleaned_data.get("reason") if confirming else None,
            "until": form.cleaned_data.get("until") if confirming else None,
            "has_view_permission": self.has_view_permission(request, obj),
        }
        return TemplateResponse(request, self.action_form_template, context)

    # -- what the page shows ----------------------------------------------------------------

    @admin.display(description=_("history"))
    def all_transitions(self, obj: CircuitBreaker) -> str:
        url = reverse("admin:integrations_breakertransition_changelist")
        return format_html(
            '<a href="{}?breaker__id__exact={}">{}</a>',
            url,
            obj.pk,
            _("all %(count)d transitions") % {"count": obj.transitions.count()},
        )

    @admin.display(description=_("policy in force"))
    def policy_in_force(self, obj: CircuitBreaker) -> str:
        """The service's effective settings (``INTEGRATIONS``), with this row's overrides."""
        try:
            breaker = Breaker(obj.name)
        except ImproperlyConfigured as exc:
            return format_html("<strong>{}</strong> {}", _("Settings error:"), exc)
        policy = breaker.policy_in_force(snapshot_of(obj))
        overridden = {
            field
            for field in ("failure_threshold", "reset_timeout", "half_open_max_calls")
            if getattr(obj, field) is not None
        }
        rate = (
            _("off")
            if policy.failure_rate is None
            else _("opens at %(rate)s of at least %(calls)d calls over %(window)gs")
            % {
                "rate": f"{policy.failure_rate:.0%}",
                "calls": policy.minimum_calls,
                "window": policy.window,
            }
        )
        rows = [
            ("failure_threshold", _("failure threshold"), policy.failure_threshold, ""),
            ("reset_timeout", _("reset timeout"), f"{policy.reset_timeout:g}", "s"),
            ("half_open_max_calls", _("half-open max calls"), policy.half_open_max_calls, ""),
            ("failure_rate", _("failure-rate rule"), rate, ""),
            ("cache_ttl", _("state cache TTL"), f"{policy.cache_ttl:g}", "s"),
            (
                "fail_open_on_db_error",
                _("database unreachable"),
                _("calls go through") if policy.fail_open_on_db_error else _("calls refused"),
                "",
            ),
        ]
        return format_html(
            '<table class="policy-in-force">{}</table>',
            format_html_join(
                "",
                "<tr><th>{}</th><td>{}{}</td><td>{}</td></tr>",
                (
                    (
                        label,
                        value,
                        unit,
                        _("override of this breaker")
                        if field in overridden
                        else _("INTEGRATIONS settings"),
                    )
                    for field, label, value, unit in rows
                ),
            ),
        )

    @admin.display(description=_("next probe"))
    def next_probe(self, obj: CircuitBreaker) -> str:
        """When the breaker may let a call through again, and why."""
        if obj.state == HALF_OPEN:
            lease = obj.probe_lease_until
            return str(
                _("probing now: %(count)d probe(s) in flight, lease until %(lease)s")
                % {"count": obj.half_open_in_flight, "lease": _when(lease)}
            )
        try:
            at = Breaker(obj.name).next_probe_at(snapshot_of(obj))
        except ImproperlyConfigured:
            return "-"
        if obj.state == OPEN and at is not None:
            moment = datetime.fromtimestamp(at, tz=UTC)
            if moment <= timezone.now():
                return str(
                    _("now: the next call is a probe (reset timeout passed at %s)") % _when(moment)
                )
            return str(_("%s (opened at + reset timeout)") % _when(moment))
        if obj.state in (FORCED_OPEN, DISABLED):
            if at is None:
                return str(_("none by itself: held by an operator until someone resets it"))
            return str(
                _("%s (the hold ends; then closed)") % _when(datetime.fromtimestamp(at, tz=UTC))
            )
        return str(_("none needed: closed, calls go through"))

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


def _when(moment: datetime | None) -> str:
    """A time to the second, in the project's time zone, with its offset."""
    if moment is None:
        return "-"
    return timezone.localtime(moment).isoformat(sep=" ", timespec="seconds")


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
