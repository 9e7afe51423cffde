"""Admin for stored webhook events: a read-only event log with replay and mark-ignored actions."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from . import selectors, services
from .models import WebhookEvent


def _pretty_json(value: Any) -> str:
    return format_html(
        '<pre style="white-space: pre-wrap; margin: 0">{}</pre>',
        json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str),
    )


@admin.register(WebhookEvent)
class WebhookEventAdmin(admin.ModelAdmin):
    list_display = ("endpoint", "event_id", "event_type", "status", "attempts", "received_at")
    list_filter = ("endpoint", "status", "event_type")
    search_fields = ("=event_id",)
    search_help_text = _("Exact vendor event id (e.g. evt_... or a GitHub delivery id).")
    date_hierarchy = "received_at"
    ordering = ("-received_at", "-id")
    list_per_page = 50
    show_full_result_count = False
    actions = ("replay", "mark_ignored")
    fieldsets = (
        (None, {"fields": ("endpoint", "event_id", "event_type", "status", "last_error")}),
        (
            _("Processing"),
            {"fields": ("attempts", "received_at", "occurred_at", "last_attempt_at",
                        "next_attempt_at", "processed_at")},
        ),
        (_("Request"), {"fields": ("payload_pretty", "headers_pretty", "body_size")}),
    )  # fmt: skip

    # An event log: nothing is added or edited by hand, and events go away by prune_webhooks.
    def get_readonly_fields(self, request: HttpRequest, obj: WebhookEvent | None = None):
        return [field for fieldset in self.get_fieldsets(request, obj)
                for field in fieldset[1]["fields"]]  # fmt: skip

    def get_fieldsets(self, request: HttpRequest, obj: WebhookEvent | None = None):
        """Users who may only view events see the headers without the signature one."""
        if self.has_change_permission(request, obj):
            return self.fieldsets
        return tuple(
            (name, {**options, "fields": tuple(
                "headers_without_signature" if field == "headers_pretty" else field
                for field in options["fields"])})
            for name, options in self.fieldsets
        )  # fmt: skip

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: WebhookEvent | None = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[WebhookEvent]:
        queryset = super().get_queryset(request)
        match = getattr(request, "resolver_match", None)
        if match is not None and match.url_name and match.url_name.endswith("_changelist"):
            queryset = queryset.defer("body", "payload", "headers")
        return queryset

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
        }
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description=_("payload"))
    def payload_pretty(self, obj: WebhookEvent) -> str:
        return _pretty_json(obj.payload)

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
    def replay(self, request: HttpRequest, queryset: QuerySet[WebhookEvent]) -> None:
        count = services.replay_events(queryset)
        self.message_user(
            request,
            ngettext("%(count)d event queued for replay.", "%(count)d events queued for replay.",
                     count) % {"count": count},
            messages.SUCCESS,
        )  # fmt: skip

    @admin.action(description=_("Mark selected events ignored"), permissions=["change"])
    def mark_ignored(self, request: HttpRequest, queryset: QuerySet[WebhookEvent]) -> None:
        reason = f"marked ignored in the admin by {request.user.get_username()}"
        changed, skipped = services.mark_ignored_many(queryset, reason=reason)
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
