"""Add ``ProcessingAttempt``: one row per processing attempt that recorded an outcome, written in
the outcome's transaction, deleted with its event (``CASCADE``). Events stored before this
migration have no attempt rows: their history starts with their next attempt."""

import django.db.models.deletion
from django.db import migrations, models


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
    ]
