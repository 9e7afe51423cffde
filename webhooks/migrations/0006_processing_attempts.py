"""Add ``ProcessingAttempt``: one row per processing attempt that recorded an outcome, written in
the outcome's transaction, deleted with its event (``CASCADE``). Events stored before this
migration have no attempt rows: their history starts with their next attempt.

``processed_at`` now means what it says: empty for an ``ignored`` event (it was not processed).
The ignored events stored before are cleared the same way, in one UPDATE (on a large table, run
it at a quiet time; it touches only ignored rows). Not reversed: the time an event was ignored
remains in its History (an operator's) or its last attempt (a handler's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import django.db.models.deletion
from django.db import migrations, models

if TYPE_CHECKING:
    from django.db.backends.base.schema import BaseDatabaseSchemaEditor
    from django.db.migrations.state import StateApps


def clear_processed_at_of_ignored(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    WebhookEvent = apps.get_model("webhooks", "WebhookEvent")
    WebhookEvent.objects.filter(status="ignored").exclude(processed_at=None).update(
        processed_at=None
    )


class Migration(migrations.Migration):

    dependencies = [
        ('webhooks', '0005_signed_content_digest'),
    ]

    operations = [
        migrations.CreateModel(
            name='ProcessingAttempt',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('number', models.PositiveIntegerField(help_text="The event's attempt count when it ran (1 after a replay).", verbose_name='attempt')),
                ('started_at', models.DateTimeField(verbose_name='started at')),
                ('finished_at', models.DateTimeField(blank=True, help_text='Empty for a lost attempt.', null=True, verbose_name='finished at')),
                ('outcome', models.CharField(choices=[('processed', 'processed'), ('ignored', 'ignored'), ('retry', 'failed, retry scheduled'), ('failed', 'failed'), ('lost', 'did not finish (worker lost)')], max_length=20, verbose_name='outcome')),
                ('error', models.TextField(blank=True, default='', help_text="As in the event's last error; bounded.", verbose_name='error')),
                ('event', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='processing_attempts', to='webhooks.webhookevent', verbose_name='event')),
            ],
            options={
                'verbose_name': 'processing attempt',
                'verbose_name_plural': 'processing attempts',
                'ordering': ('started_at', 'id'),
                'indexes': [models.Index(fields=['event', 'started_at'], name='webhooks_att_event_start_idx')],
            },
        ),
        migrations.AlterField(
            model_name="webhookevent",
            name="processed_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When it ended processed; empty for an ignored event.",
                null=True,
                verbose_name="processed at",
            ),
        ),
        migrations.RunPython(clear_processed_at_of_ignored, migrations.RunPython.noop),
    ]
