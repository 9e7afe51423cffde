"""Add ``requeued_at``: when the sweeper last published an event's task again.

The sweeper (``services.requeue_stuck``) waits before requeueing an event again, longer each
time, instead of publishing another message for it on every run while workers are down. The
column is nullable and has no index: new events insert NULL, and the sweeper only filters on it
among the unfinished events it finds through the ``(status, received_at)`` index.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks", "0003_clear_unreadable_occurred_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="webhookevent",
            name="requeued_at",
            field=models.DateTimeField(
                blank=True,
                help_text=(
                    "When the sweeper last published this event's task again; it waits before "
                    "doing so again, since that message may still be queued."
                ),
                null=True,
                verbose_name="requeued at",
            ),
        ),
    ]
