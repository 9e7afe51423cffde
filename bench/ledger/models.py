from django.db import models


class Effect(models.Model):
    """What the soak's handler did for one event: at most one row per event id, written in the
    handler's transaction (committed with the event's ``processed`` mark, or not at all)."""

    event_id = models.CharField(max_length=255, unique=True)
    attempt = models.PositiveIntegerField(help_text="The event's attempt that wrote it.")
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "chaos_effect"

    def __str__(self) -> str:
        return self.event_id
