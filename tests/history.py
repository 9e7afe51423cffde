"""What the admin's History shows for an object: its ``LogEntry`` rows, oldest first."""

from __future__ import annotations

from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db.models import Model


def history(obj: Model) -> list[tuple[str, int, str]]:
    """``(username, action_flag, change_message)`` of each History entry of ``obj``."""
    entries = LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(type(obj)), object_id=str(obj.pk)
    )
    return list(
        entries.order_by("pk").values_list("user__username", "action_flag", "change_message")
    )
