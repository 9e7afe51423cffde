"""Add ``HandlerRun``: one row per (event, handler), written in the handler's own transaction.

Existing events get no rows (nothing is backfilled: the table starts empty, so the migration is
quick on a large event table). Such an event appears without runs: the admin says so, the API
gives ``handler_runs: []``, and its status stays what it was. If it is processed again (a
retry still due, a replay), it is processed as before runs existed: every matching handler
runs, and from then on each has its run. ``replay_webhooks --handler`` gives an old event a run
of just that handler (a backfill).
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('webhooks', '0006_processing_attempts'),
    ]

    operations = [
        migrations.CreateModel(
            name='HandlerRun',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('handler', models.CharField(help_text="The handler's dotted name (module.qualname).", max_length=255, verbose_name='handler')),
                ('status', models.CharField(choices=[('pending', 'pending'), ('processing', 'processing (retry due)'), ('processed', 'processed'), ('ignored', 'ignored'), ('skipped', 'skipped'), ('failed', 'failed')], default='pending', max_length=20, verbose_name='status')),
                ('attempts', models.PositiveIntegerField(default=0, verbose_name='attempts')),
                ('last_error', models.TextField(blank=True, default='', verbose_name='last error')),
                ('next_attempt_at', models.DateTimeField(blank=True, null=True, verbose_name='next attempt at')),
                ('started_at', models.DateTimeField(blank=True, null=True, verbose_name='started at')),
                ('finished_at', models.DateTimeField(blank=True, null=True, verbose_name='finished at')),
                ('event', models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='handler_runs', to='webhooks.webhookevent', verbose_name='event')),
            ],
            options={
                'verbose_name': 'handler run',
                'verbose_name_plural': 'handler runs',
                'ordering': ('event', 'id'),
                'indexes': [models.Index(condition=models.Q(('status', 'failed')), fields=['handler', 'event'], name='webhooks_run_failed_idx')],
                'constraints': [models.UniqueConstraint(fields=('event', 'handler'), name='webhooks_run_event_handler_uniq')],
            },
        ),
    ]
