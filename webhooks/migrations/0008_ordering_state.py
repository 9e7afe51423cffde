"""Add ``OrderingState``: the newest version an ordered handler applied per key
(``webhooks.ordering``). A new table: existing events and handlers are unaffected; an ordered
handler's first event of each key creates its row."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('webhooks', '0007_handler_runs'),
    ]

    operations = [
        migrations.CreateModel(
            name='OrderingState',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('handler', models.CharField(help_text="The handler's dotted path, as its runs name it.", max_length=255, verbose_name='handler')),
                ('key', models.CharField(max_length=255, verbose_name='ordering key')),
                ('version', models.DecimalField(blank=True, decimal_places=6, help_text='Empty until an event of the key is applied.', max_digits=32, null=True, verbose_name='newest version applied')),
                ('version_kind', models.CharField(blank=True, choices=[('number', 'number'), ('time', 'time')], default='', max_length=10, verbose_name='version kind')),
                ('event_id', models.CharField(blank=True, default='', help_text="The vendor's id of the event that applied the newest version.", max_length=255, verbose_name='applied by event')),
                ('applied_at', models.DateTimeField(blank=True, null=True, verbose_name='applied at')),
            ],
            options={
                'verbose_name': 'ordering state',
                'verbose_name_plural': 'ordering states',
                'constraints': [models.UniqueConstraint(fields=('handler', 'key'), name='webhooks_ordering_handler_key_uniq')],
            },
        ),
    ]
