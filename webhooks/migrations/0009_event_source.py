"""Add ``WebhookEvent.source``: ``delivery`` (a signed delivery) or ``reconcile`` (listed from
the vendor's API by ``reconcile_webhooks``). Every event stored before was delivered: the column
is added with a database default of ``delivery`` (PostgreSQL adds it without rewriting the
table), which the receive path's own insert also writes."""

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks", "0008_ordering_state"),
    ]

    operations = [
        migrations.AddField(
            model_name="webhookevent",
            name="source",
            field=models.CharField(
                choices=[
                    ("delivery", "delivered by the vendor"),
                    ("reconcile", "fetched from the vendor's API (reconcile)"),
                ],
                db_default="delivery",
                default="delivery",
                help_text=(
                    "How it arrived: a signed delivery, or listed from the vendor's API by "
                    "reconcile_webhooks (an authenticated call: no signature to check)."
                ),
                max_length=20,
                verbose_name="source",
            ),
        ),
    ]
