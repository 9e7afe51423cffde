"""Empty the occurred times that Python cannot read back.

Earlier versions stored a payload's occurred time as given: a legal ISO 8601 value such as
``9999-12-31T23:59:59-23:59`` is year 10000 in UTC, which PostgreSQL stores but Python cannot
represent, so every read of the row failed (the admin's list, the operator API, processing,
replay). Occurred times are now bounded before they are stored
(``webhooks.providers.base.utc_datetime``); this empties (``NULL``) those stored before, outside
0001-01-01..9999-12-31 in UTC, as an unusable occurred time is now.

Only PostgreSQL can hold them: SQLite refused such a value before storing it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import migrations

if TYPE_CHECKING:
    from django.db.backends.base.schema import BaseDatabaseSchemaEditor
    from django.db.migrations.state import StateApps

#: The first instant after what Python reads back, and the first it reads, in UTC.
AFTER_LAST = "10000-01-01 00:00:00+00"
FIRST = "0001-01-01 00:00:00+00"


def clear_unreadable_occurred_at(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    table = connection.ops.quote_name(apps.get_model("webhooks", "WebhookEvent")._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET occurred_at = NULL "
            "WHERE occurred_at >= %s::timestamptz OR occurred_at < %s::timestamptz",
            [AFTER_LAST, FIRST],
        )


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks", "0002_remove_endpoint_status_index"),
    ]

    operations = [
        migrations.RunPython(clear_unreadable_occurred_at, migrations.RunPython.noop, elidable=True),
    ]
