"""Admin for stored webhook events: a read-only event log; Replay and Mark ignored as buttons on
an event's page and as actions on the list, each through a confirmation page, each recorded in
the History (``LogEntry``) by ``webhooks.services``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import Exists, OuterRef, QuerySet
from django.db.models.functions import Substr
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import selectors, services
from .models import HandlerRun, OrderingState, ProcessingAttempt, WebhookEvent
from .ordering import version_text
from .registry import HANDLER_NAME_MAX_CHARS

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldsetSpec
    from django_stubs_ext import StrOrPromise

logger = logging.getLogger(__name__)

#: The most characters of a value's pretty-printed JSON (payload, headers) the change page
#: shows, before HTML escaping; the rest is cut, with a note saying how much there is. The body
#: limit is 1 MiB by default and can be raised: the page stays small whatever the payload.
SHOWN_JSON_CHARS = 50_000
#: The deepest nesting the change page shows; deeper objects and arrays are summarised
#: (``[… 3 items]``, ``{… 2 keys}``). The receive view accepts payloads nested about 900 deep.
SHOWN_JSON_DEPTH = 20
#: The most events a bulk action's confirmation page lists (it states the whole count).
CONFIRMATION_LISTED = 20


def _pretty_json(value: Any) -> str:
    """``value`` as indented JSON in a ``<pre>``, bounded: nesting deeper than
    ``SHOWN_JSON_DEPTH`` summarised, text cut at ``SHOWN_JSON_CHARS`` with a note giving the
    whole size. Never raises: a value that cannot be shown leaves the rest of the page usable."""
    try:
        summarised, deep = _summarise_deep(value, SHOWN_JSON_DEPTH)
        encoder = json.JSONEncoder(indent=2, sort_keys=True, ensure_ascii=False, default=str)
        notes: list[StrOrPromise] = []
        if deep:
            notes.append(
                _("Objects and arrays nested deeper than %(depth)d levels are summarised.")
                % {"depth": SHOWN_JSON_DEPTH}
            )
        return _bounded_pre(encoder.iterencode(summarised), notes)
    except Exception:
        logger.exception("webhooks: the admin could not render a JSON value")
        return format_html("<p>{}</p>", _("This value cannot be shown here; see the operator API."))


def _pretty_stored_json(text: str | None) -> str:
    """JSON text as stored (``selectors.stored_payload_text``), laid out by ``_pretty_json``;
    text nested too deep for Python's parser at this depth of the page's rendering is shown as
    stored, cut at ``SHOWN_JSON_CHARS``."""
    if text is None:
        return _pretty_json(None)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return _bounded_pre([text], [_("Nested too deep to lay out: shown as stored.")])
    return _pretty_json(value)


def _bounded_pre(chunks: Iterable[str], notes: list[StrOrPromise]) -> str:
    """The first ``SHOWN_JSON_CHARS`` characters of the text made of ``chunks`` in a ``<pre>``,
    then ``notes``, led by one giving the whole size when the text was cut."""
    shown: list[str] = []
    size = 0
    for chunk in chunks:
        if size < SHOWN_JSON_CHARS:
            shown.append(chunk[: SHOWN_JSON_CHARS - size])
        size += len(chunk)
    if size > SHOWN_JSON_CHARS:
        cut = _("Cut: the first %(shown)s of %(size)s characters are shown.") % {
            "shown": f"{SHOWN_JSON_CHARS:,}",
            "size": f"{size:,}",
        }
        notes = [cut, *notes]
    return format_html(
        '<pre style="white-space: pre-wrap; margin: 0">{}</pre>{}',
        "".join(shown),
        format_html_join("", '<p class="help">{}</p>', ((note,) for note in notes)),
    )


def _summarise_deep(value: Any, levels: int) -> tuple[Any, bool]:
    """``value`` with the objects and arrays more than ``levels`` deep replaced by a summary
    text, and whether any was. Recurses at most ``levels`` deep, whatever the value's depth."""
    if not isinstance(value, dict | list):
        return value, False
    if levels == 0:
        count = len(value)
        if isinstance(value, dict):
            return f"{{… {count} {'key' if count == 1 else 'keys'}}}", True
        return f"[… {count} {'item' if count == 1 else 'items'}]", True
    deep = False
    if isinstance(value, dict):
        items = {}
        for key, item in value.items():
            items[key], cut = _summarise_deep(item, levels - 1)
            deep = deep or cut
        return items, deep
    elements = []
    for item in value:
        element, cut = _summarise_deep(item, levels - 1)
        elements.append(element)
        deep = deep or cut
    return elements, deep


class OperatorActionForm(forms.Form):
    """The reason an operator gives on a confirmation page (optional, kept in the History), and,
    for a run's Replay, the handler (hidden)."""

    reason = forms.CharField(
        label=_("Reason"),
        required=False,
        max_length=services.REASON_MAX_CHARS,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text=_("Optional; recorded in each event's History with your name."),
    )
    handler = forms.CharField(
        required=False, max_length=HANDLER_NAME_MAX_CHARS, widget=forms.HiddenInput
    )

    def clean_handler(self) -> str:
        name: str = self.cleaned_data["handler"]
        if name:
            try:
                services.checked_handlers([name])
            except services.UnknownHandler as exc:
                raise forms.ValidationError(str(exc)) from None
        return name


class FailedRunsOfHandlerFilter(admin.SimpleListFilter):
    """The events with a failed run of one handler (the handlers come from the failed runs, so
    the choices never list more than the handlers that failed)."""

    title = _("failed runs of handler")
    parameter_name = "failed_handler"
    #: The most handlers the filter lists.
    LISTED = 50

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        names = (
            HandlerRun.objects.filter(status=HandlerRun.Status.FAILED)
            .order_by("handler")
            .values_list("handler", flat=True)
            .distinct()[: self.LISTED]
        )
        return [(name, name) for name in names]

    def queryset(
        self, request: HttpRequest, queryset: QuerySet[WebhookEvent]
    ) -> QuerySet[WebhookEvent]:
        name = self.value()
        if not name:
            return queryset
        return queryset.filter(
            Exists(HandlerRun.objects.filter(event=OuterRef("pk"), handler=name[
                :HANDLER_NAME_MAX_CHARS], status=HandlerRun.Status.FAILED))
        )  # fmt: skip


#: The operator actions: name -> (title, what it does, button label).
_ACTIONS: dict[str, tuple[StrOrPromise, StrOrPromise, StrOrPromise]] = {
    "replay": (
        _("Replay"),
        _("Each event goes back to “received” with 0 attempts and is enqueued: its failed "
          "handler runs run again (all its handlers, for an event stored before runs were "
          "recorded). Its last error is kept until the next outcome."),
        _("Yes, replay"),
    ),
    "mark_ignored": (
        _("Mark ignored"),
        _("Each received, processing or failed event ends “ignored”: no more attempts. Events "
          "already processed or ignored are left alone. The last error is kept."),
        _("Yes, mark ignored"),
    ),
}  # fmt: skip


#: The most attempts the event's page lists (the latest); a replay keeps at most
#: ``services.ATTEMPTS_KEPT_PER_EVENT`` rows per event, processing adds at most ``MAX_ATTEMPTS``.
SHOWN_ATTEMPTS = 100

_OUTCOME_COLOURS: dict[str, str] = {
    ProcessingAttempt.Outcome.PROCESSED: "#2e7d32",
    ProcessingAttempt.Outcome.IGNORED: "#616161",
    ProcessingAttempt.Outcome.RETRY: "#ef6c00",
    ProcessingAttempt.Outcome.FAILED: "#c62828",
    ProcessingAttempt.Outcome.LOST: "#6a1b9a",
}


def _badge(colour: str, label: StrOrPromise) -> str:
    """A coloured label, as the breakers' admin shows their state."""
    return format_html(
        '<span style="background:{};color:#fff;padding:2px 8px;border-radius:8px;'
        'font-weight:bold;white-space:nowrap">{}</span>',
        colour,
        label,
    )


def _seconds(value: Any) -> str:
    """A time to the second, in the current time zone (Django's default format stops at the
    minute): ``2026-12-05 03:04:05 UTC``."""
    if value is None:
        return ""
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z").strip()


def _at_second(field: str, description: StrOrPromise) -> Any:
    """A display of the event's ``field`` to the second, sortable by that field."""

    @admin.display(description=description, ordering=field)
    def show(self: Any, obj: WebhookEvent) -> str:
        return _seconds(getattr(obj, field)) or "-"

    return show


#: The colour of each status's badge (as the breakers' admin colours their states).
_STATUS_COLOURS: dict[str, str] = {
    WebhookEvent.Status.RECEIVED: "#1565c0",
    WebhookEvent.Status.PROCESSING: "#ef6c00",
    WebhookEvent.Status.PROCESSED: "#2e7d32",
    WebhookEvent.Status.IGNORED: "#616161",
    WebhookEvent.Status.FAILED: "#c62828",
}
#: The most characters of ``last_error``'s first line the list shows.
LIST_ERROR_CHARS = 80


def _attempt_rows(event: WebhookEvent) -> list[tuple[int, Any, Any, Any, str]]:
    """The event's attempts, oldest first, as ``(number, started, duration, outcome badge,
    error)``, with a row for each attempt counted but without a recorded outcome (its worker
    died, or its outcome could not be written; the latest may be running now).

    Numbers restart at 1 after a replay; a missing number within a run of attempts, or after the
    last row up to the event's ``attempts``, is such an attempt."""
    rows = list(reversed(
        ProcessingAttempt.objects.filter(event=event).order_by("-started_at", "-id")
        [:SHOWN_ATTEMPTS]
    ))  # fmt: skip
    missing = _badge("#9e9e9e", _("no outcome recorded"))
    running = _badge("#1565c0", _("running, or its worker died"))
    out: list[tuple[int, Any, Any, Any, str]] = []
    previous: int | None = None
    for row in rows:
        if previous is not None and row.number <= previous:
            previous = 0  # a replay started the count again
        for number in range((previous or 0) + 1, row.number) if previous is not None else ():
            out.append((number, None, None, missing, ""))
        duration = row.duration
        out.append((row.number, row.started_at,
                    None if duration is None else f"{duration.total_seconds():.3f} s",
                    _badge(_OUTCOME_COLOURS.get(row.outcome, "#616161"),
                           row.get_outcome_display()), row.error))  # fmt: skip
        previous = row.number
    # The attempts counted after the last row (fewer counted than that row's number: a replay
    # came after it, and none of the new run's attempts has a row).
    last = previous or 0
    first = last + 1 if event.attempts >= last else 1
    for number in range(first, event.attempts + 1):
        latest = number == event.attempts
        in_progress = (
            latest
            and event.status == WebhookEvent.Status.PROCESSING
            and event.next_attempt_at is None
        )
        started = event.last_attempt_at if latest else None
        out.append((number, started, None,
                    running if in_progress else missing, ""))  # fmt: skip
    return out


def _attempt_table(event: WebhookEvent) -> str:
    rows = _attempt_rows(event)
    if not rows:
        return format_html("<p>{}</p>", _("No attempt yet."))
    body = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        (
            (number, _seconds(started), duration or "", outcome, _error_cell(error))
            for number, started, duration, outcome, error in rows
        ),
    )
    return format_html(
        '<table class="webhooks-attempts"><thead><tr><th>{}</th><th>{}</th><th>{}</th>'
        "<th>{}</th><th>{}</th></tr></thead><tbody>{}</tbody></table>",
        _("attempt"), _("started"), _("duration"), _("outcome"), _("error"), body,
    )  # fmt: skip


_RUN_COLOURS: dict[str, str] = {
    HandlerRun.Status.PENDING: "#1565c0",
    HandlerRun.Status.PROCESSING: "#ef6c00",
    HandlerRun.Status.PROCESSED: "#2e7d32",
    HandlerRun.Status.IGNORED: "#616161",
    HandlerRun.Status.SKIPPED: "#616161",
    HandlerRun.Status.FAILED: "#c62828",
}


def _run_table(event: WebhookEvent, replay_url: str | None) -> str:
    """The event's handler runs: handler, status, attempts, duration, error, and (for users who
    may change events, ``replay_url``) a Replay link per run."""
    runs = list(HandlerRun.objects.filter(event=event).order_by("id"))
    if not runs:
        return format_html("<p>{}</p>", _(
            "No handler runs: no handler matched, or the event was stored before runs were "
            "recorded (its handlers ran together)."))  # fmt: skip
    rows = []
    for run in runs:
        duration = run.duration
        link = ""
        if replay_url is not None:
            link = format_html('<a href="{}?{}" class="webhooks-replay-run">{}</a>', replay_url,
                               urlencode({"handler": run.handler}), _("Replay"))  # fmt: skip
        rows.append((
            format_html("<code>{}</code>", run.handler),
            _badge(_RUN_COLOURS.get(run.status, "#616161"), run.get_status_display()),
            run.attempts,
            "" if duration is None else f"{duration.total_seconds():.3f} s",
            _error_cell(run.last_error),
            link,
        ))  # fmt: skip
    body = format_html_join(
        "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows
    )
    return format_html(
        '<table class="webhooks-runs"><thead><tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th>'
        "<th>{}</th><th></th></tr></thead><tbody>{}</tbody></table>",
        _("handler"), _("status"), _("attempts"), _("duration"), _("error"), body,
    )  # fmt: skip


def _error_cell(error: str) -> str:
    """The error's first line; the whole (bounded) text folded under it."""
    if not error:
        return ""
    first, _sep, rest = error.partition("\n")
    if not rest:
        return format_html("<code>{}</code>", first)
    return format_html(
        '<details><summary><code>{}</code></summary><pre style="white-space: pre-wrap">{}</pre>'
        "</details>",
        first,
        error,
    )


@admin.register(WebhookEvent)
class WebhookEventAdmin(admin.ModelAdmin):
    change_form_template = "admin/webhooks/webhookevent/change_form.html"
    confirmation_template = "admin/webhooks/webhookevent/confirm_action.html"
    list_display = ("endpoint", "event_id", "event_type", "status_badge", "attempts",
                    "received_at_s", "last_error_short")  # fmt: skip
    list_filter = ("endpoint", "status", "event_type", "source", FailedRunsOfHandlerFilter)
    search_fields = ("=event_id",)  # shows the search box; get_search_results does the search
    search_help_text = _(
        "Exact vendor event id (evt_..., a GitHub delivery id) or, on PostgreSQL, a string "
        "value anywhere in the payload (a PaymentIntent or customer id: pi_..., cus_...)."
    )
    date_hierarchy = "received_at"
    ordering = ("-received_at", "-id")
    list_per_page = 50
    show_full_result_count = False
    actions = ("replay", "mark_ignored")
    fieldsets = (
        (None, {"fields": ("endpoint", "event_id", "event_type", "source", "status_badge",
                           "last_error_pretty")}),
        (
            _("Processing"),
            {"fields": ("attempts", "received_at_s", "occurred_at_s", "last_attempt_at_s",
                        "next_attempt_at_s", "processed_at_s")},
        ),
        (_("Handler runs"), {"fields": ("handler_runs",)}),
        (_("Attempts"), {"fields": ("attempt_history",)}),
        (_("Request"), {"fields": ("payload_pretty", "headers_pretty", "body_size")}),
    )  # fmt: skip

    # An event log: nothing is added or edited by hand, and events go away by prune_webhooks.
    def get_readonly_fields(
        self, request: HttpRequest, obj: WebhookEvent | None = None
    ) -> list[str]:
        names: list[str] = []
        for _name, options in self.get_fieldsets(request, obj):
            for field in options["fields"]:
                names.extend([field] if isinstance(field, str) else field)
        return names

    def get_fieldsets(self, request: HttpRequest, obj: WebhookEvent | None = None) -> _FieldsetSpec:
        """Users who may only view events see the headers without the signature one, and the runs
        without their Replay links."""
        fieldsets = self.fieldsets or ()
        if self.has_change_permission(request, obj):
            return fieldsets
        view_only: dict[Any, Any] = {"headers_pretty": "headers_without_signature",
                                     "handler_runs": "handler_runs_readonly"}  # fmt: skip
        return tuple(
            (name, {**options, "fields": tuple(
                view_only.get(field, field) for field in options["fields"])})
            for name, options in fieldsets
        )  # fmt: skip

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[WebhookEvent], search_term: str
    ) -> tuple[QuerySet[WebhookEvent], bool]:
        """``selectors.search_events``: the exact event id, or a string value in the payload."""
        if not search_term.strip():
            return queryset, False
        return selectors.search_events(queryset, search_term), False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: WebhookEvent | None = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[WebhookEvent]:
        # The payload is never loaded through the model here: the change page reads it as
        # stored text (``payload_pretty``), so a payload nested too deep for Python's parser at
        # this depth of the request still leaves the page usable.
        queryset = super().get_queryset(request).defer("payload")
        match = getattr(request, "resolver_match", None)
        if match is not None and match.url_name and match.url_name.endswith("_changelist"):
            # The list shows only the first line of last_error (up to 8 KiB each).
            queryset = queryset.defer("body", "headers", "last_error").annotate(
                last_error_head=Substr("last_error", 1, LIST_ERROR_CHARS + 1)
            )
        return queryset

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self) -> list[URLPattern]:
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("<path:object_id>/replay/", self.admin_site.admin_view(self.replay_view),
                 name=f"{prefix}_replay"),
            path("<path:object_id>/ignore/", self.admin_site.admin_view(self.ignore_view),
                 name=f"{prefix}_ignore"),
            *super().get_urls(),
        ]  # fmt: skip

    def replay_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The Replay button: a confirmation page (GET), the replay (POST)."""
        return self._object_action(request, object_id, "replay")

    def ignore_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The Mark ignored button: a confirmation page (GET), the action (POST)."""
        return self._object_action(request, object_id, "mark_ignored")

    def _object_action(self, request: HttpRequest, object_id: str, name: str) -> HttpResponse:
        event = self.get_object(request, object_id)
        if event is None:
            raise Http404(_("No webhook event with this id."))
        if not self.has_change_permission(request, event):
            raise PermissionDenied
        change_url = reverse("admin:webhooks_webhookevent_change", args=[event.pk],
                             current_app=self.admin_site.name)  # fmt: skip
        handler = ""
        if name == "replay":
            handler = request.POST.get("handler", request.GET.get("handler", ""))
        form = OperatorActionForm(
            request.POST if request.method == "POST" else None, initial={"handler": handler}
        )
        queryset = WebhookEvent.objects.filter(pk=event.pk)
        if handler:
            # A run's Replay: the handler must be registered and handle this event.
            check = OperatorActionForm({"handler": handler})
            problem: StrOrPromise | None = None
            if not check.is_valid():
                problem = "; ".join(str(e) for e in check.errors.get("handler", []))
            elif not services.handled_by(queryset, [handler]).exists():
                problem = _("this handler does not handle this event")
            if problem is not None:
                self.message_user(request, _("Cannot replay this run: %(problem)s") %
                                  {"problem": problem}, messages.ERROR)  # fmt: skip
                return HttpResponseRedirect(change_url)
        if request.method == "POST" and form.is_valid():
            self._perform(request, name, queryset, form.cleaned_data["reason"], via="admin",
                          handlers=[handler] if handler else None)  # fmt: skip
            return HttpResponseRedirect(change_url)
        return self._confirmation(request, name, form, events=[event], count=1,
                                  cancel_url=change_url, handler=handler)  # fmt: skip

    def _confirmation(
        self,
        request: HttpRequest,
        name: str,
        form: OperatorActionForm,
        *,
        events: list[WebhookEvent],
        count: int,
        cancel_url: str,
        bulk: dict[str, Any] | None = None,
        handler: str = "",
    ) -> TemplateResponse:
        """The confirmation page of an action on ``count`` events (the first ``events`` listed)."""
        title, explanation, button = _ACTIONS[name]
        eligible = count
        if name == "mark_ignored" and bulk is not None:
            eligible = bulk.pop("eligible")
        context = {
            **self.admin_site.each_context(request),
            "title": _("%(action)s: are you sure?") % {"action": title},
            "opts": self.opts,
            "action_name": name,
            "action_title": title,
            "explanation": (
                _(
                    "The run of %(handler)s goes back to “pending” and the event to “received”: "
                    "only this handler runs."
                )
                % {"handler": handler}
                if handler
                else explanation
            ),
            "button": button,
            "form": form,
            "events": events,
            "count": count,
            "eligible": eligible,
            "shown": len(events),
            "cancel_url": cancel_url,
            "bulk": bulk,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, self.confirmation_template, context)

    def _perform(self, request: HttpRequest, name: str, queryset: QuerySet[WebhookEvent],
                 reason: str, *, via: str, handlers: list[str] | None = None) -> None:  # fmt: skip
        """Run the action through ``webhooks.services`` and say what it did."""
        if name == "replay":
            count = services.replay_events(queryset, actor=request.user, via=via, reason=reason,
                                           handlers=handlers)  # fmt: skip
            self.message_user(
                request,
                ngettext("%(count)d event queued for replay.",
                         "%(count)d events queued for replay.", count) % {"count": count},
                messages.SUCCESS,
            )  # fmt: skip
            return
        changed, skipped = services.mark_ignored_many(queryset, actor=request.user, via=via,
                                                      reason=reason)  # fmt: skip
        self.message_user(
            request,
            ngettext("%(count)d event marked ignored.", "%(count)d events marked ignored.",
                     changed) % {"count": changed},
            messages.SUCCESS,
        )  # fmt: skip
        if skipped > 0:
            self.message_user(
                request,
                ngettext(
                    "%(count)d event was left alone (already processed or ignored).",
                    "%(count)d events were left alone (already processed or ignored).",
                    skipped,
                )
                % {"count": skipped},
                messages.WARNING,
            )

    def _bulk_action(self, request: HttpRequest, queryset: QuerySet[WebhookEvent],
                     name: str) -> HttpResponse | None:  # fmt: skip
        """A changelist action: its confirmation page, stating how many events it touches;
        once confirmed (``post``), the action."""
        form = OperatorActionForm(request.POST if request.POST.get("post") else None)
        if request.POST.get("post") and form.is_valid():
            self._perform(request, name, queryset, form.cleaned_data["reason"],
                          via="admin action")  # fmt: skip
            return None  # back to the changelist
        queryset = queryset.order_by()
        count = queryset.count()
        bulk: dict[str, Any] = {
            "action": name,
            "select_across": request.POST.get("select_across", "0"),
            "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
            "index": request.POST.get("index", "0"),
        }
        if name == "mark_ignored":
            bulk["eligible"] = services.count_ignorable(queryset)
        shown = list(queryset.defer("body", "payload", "headers").order_by("-received_at", "-id")
                     [:CONFIRMATION_LISTED])  # fmt: skip
        changelist = reverse("admin:webhooks_webhookevent_changelist",
                             current_app=self.admin_site.name)  # fmt: skip
        return self._confirmation(request, name, form, events=shown, count=count,
                                  cancel_url=changelist, bulk=bulk)  # fmt: skip

    received_at_s = _at_second("received_at", _("received at"))
    occurred_at_s = _at_second("occurred_at", _("occurred at"))
    last_attempt_at_s = _at_second("last_attempt_at", _("last attempt at"))
    next_attempt_at_s = _at_second("next_attempt_at", _("next attempt at"))
    processed_at_s = _at_second("processed_at", _("processed at"))

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, obj: WebhookEvent) -> str:
        return _badge(_STATUS_COLOURS.get(obj.status, "#616161"), obj.get_status_display())

    @admin.display(description=_("last error"))
    def last_error_short(self, obj: WebhookEvent) -> str:
        """The first line of ``last_error``, cut at ``LIST_ERROR_CHARS``."""
        head = getattr(obj, "last_error_head", None)
        first = (obj.last_error if head is None else head).split("\n", 1)[0]
        if len(first) > LIST_ERROR_CHARS:
            first = first[: LIST_ERROR_CHARS - 1] + "…"
        return first

    @admin.display(description=_("last error"))
    def last_error_pretty(self, obj: WebhookEvent) -> str:
        if not obj.last_error:
            return "-"
        return format_html('<pre style="white-space: pre-wrap; margin: 0">{}</pre>',
                           obj.last_error)  # fmt: skip

    @admin.display(description=_("history"))
    def attempt_history(self, obj: WebhookEvent) -> str:
        return _attempt_table(obj)

    @admin.display(description=_("runs"))
    def handler_runs(self, obj: WebhookEvent) -> str:
        """The runs with a Replay link each (for users who may change events)."""
        replay_url = reverse("admin:webhooks_webhookevent_replay", args=[obj.pk],
                             current_app=self.admin_site.name)  # fmt: skip
        return _run_table(obj, replay_url)

    @admin.display(description=_("runs"))
    def handler_runs_readonly(self, obj: WebhookEvent) -> str:
        return _run_table(obj, None)

    @admin.display(description=_("payload"))
    def payload_pretty(self, obj: WebhookEvent) -> str:
        return _pretty_stored_json(selectors.stored_payload_text(obj.pk))

    @admin.display(description=_("headers"))
    def headers_pretty(self, obj: WebhookEvent) -> str:
        return _pretty_json(obj.headers)

    @admin.display(description=_("headers (signature hidden)"))
    def headers_without_signature(self, obj: WebhookEvent) -> str:
        return _pretty_json(selectors.headers_without_signature(obj))

    @admin.display(description=_("body"))
    def body_size(self, obj: WebhookEvent) -> str:
        size = len(obj.body or b"")
        return ngettext("%(size)d byte, stored as received", "%(size)d bytes, stored as received",
                        size) % {"size": size}  # fmt: skip

    @admin.action(description=_("Replay selected events"), permissions=["change"])
    def replay(self, request: HttpRequest, queryset: QuerySet[WebhookEvent]) -> HttpResponse | None:
        return self._bulk_action(request, queryset, "replay")

    @admin.action(description=_("Mark selected events ignored"), permissions=["change"])
    def mark_ignored(
        self, request: HttpRequest, queryset: QuerySet[WebhookEvent]
    ) -> HttpResponse | None:
        return self._bulk_action(request, queryset, "mark_ignored")


@admin.register(OrderingState)
class OrderingStateAdmin(admin.ModelAdmin):
    """What each ordered handler has applied, per key (``webhooks.ordering``): read-only, as the
    runs write it. Deleting a row forgets the key's newest version, so that the key's next
    event applies whatever its version (the way out after an event with a wrong, far-future
    version made every later one stale); it needs the delete permission."""

    list_display = ("handler", "key", "newest_version", "applied_by", "applied_at")
    list_filter = ("handler", "version_kind")
    search_fields = ("=key", "=event_id", "handler")
    search_help_text = _("An exact ordering key or event id, or part of a handler's path.")
    ordering = ("handler", "key")
    list_per_page = 100
    show_full_result_count = False
    fields = ("handler", "key", "newest_version", "version_kind", "applied_by", "applied_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("newest version applied"), ordering="version")
    def newest_version(self, state: OrderingState) -> str:
        if state.version is None:
            return "-"
        return version_text(state.version, state.version_kind)

    @admin.display(description=_("applied by event"), ordering="event_id")
    def applied_by(self, state: OrderingState) -> str:
        if not state.event_id:
            return "-"
        url = reverse("admin:webhooks_webhookevent_changelist")
        return format_html(
            '<a href="{}?{}">{}</a>', url, urlencode({"q": state.event_id}), state.event_id
        )
