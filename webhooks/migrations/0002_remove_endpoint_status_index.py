"""Drop the (endpoint, status) index.

Every new event paid for one more index entry, and the receive statement, prepared once per
connection, could get a cached plan that looked a duplicate up through this index (filtering
every row of the endpoint) when it was planned on a small table, instead of through the unique
(endpoint, event_id) one. Filters on endpoint use the unique index's leading column; filters on
status use (status, received_at).
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks", "0001_initial"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="webhookevent",
            name="webhooks_ev_endpoint_st_idx",
        ),
    ]
