"""Add ``content_digest`` and the partial unique constraint on ``(endpoint, content_digest)``.

For schemes whose event id is outside what the signature covers (GitHub's ``X-GitHub-Delivery``,
an ``hmac`` id from a header), the same signed content re-sent under a new id is a replay: the
receive insert stores the SHA-256 of the signed content, and this constraint makes such a resend
a conflict, race-safely, as the ``(endpoint, event_id)`` one does for ids. The index is partial:
events without a digest (Stripe, Standard Webhooks) have no entry in it. Existing events keep no
digest (NULL), so a resend of an event stored before this migration is not recognised by it.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks", "0004_webhookevent_requeued_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="webhookevent",
            name="content_digest",
            field=models.BinaryField(
                blank=True,
                editable=False,
                help_text=(
                    "SHA-256 of what the signature covers, for schemes whose event id is outside "
                    "it (GitHub): the same signed content under another id is a replay."
                ),
                null=True,
                verbose_name="signed content digest",
            ),
        ),
        migrations.AddConstraint(
            model_name="webhookevent",
            constraint=models.UniqueConstraint(
                condition=models.Q(("content_digest__isnull", False)),
                fields=("endpoint", "content_digest"),
                name="webhooks_event_endpoint_digest_uniq",
            ),
        ),
    ]
