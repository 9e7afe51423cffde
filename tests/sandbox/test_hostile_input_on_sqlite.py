"""Hostile input on the sandbox's embedded default, SQLite, where the database itself catches
less than PostgreSQL: the answers must be decided before the insert, the same on both; and the
admin's change page, which reads the payload as stored text, on SQLite.

Runs in a subprocess on the sandbox's own settings (as ``make run`` starts it, in a temporary
state directory), driven by Django's test client through the real view and operator API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from tests.servers import ROOT

pytestmark = pytest.mark.slow

SCRIPT = r"""
import json

import django

django.setup()
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import connection
from django.test import Client

from webhooks.models import WebhookEvent
from webhooks.testing import build_request, send_request

call_command("migrate", verbosity=0)
assert connection.vendor == "sqlite", connection.vendor
client = Client(raise_request_exception=False)
out = {}


def answer(response):
    try:
        return [response.status_code, response.json()]
    except ValueError:
        return [response.status_code, None]


for number in ("NaN", "Infinity", "-Infinity", "1e999"):
    body = '{"id": "evt_%s", "type": "x.y", "data": {"amount": %s}}' % (number, number)
    out[number] = answer(send_request(client, build_request("stripe", body.encode())))
for when in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"):
    payload = {"type": "contact.created", "timestamp": when, "data": {}}
    out[when] = answer(send_request(client, build_request("acme", json.dumps(payload))))
out["stored"] = [
    [event.endpoint, event.occurred_at and event.occurred_at.isoformat()]
    for event in WebhookEvent.objects.all()
]
admin = User.objects.create_superuser("root", password="pw")
client.force_login(admin)
for field in ("since", "until"):
    response = client.get("/api/webhook-events/", {field: "9999-12-31T23:59:59-23:59"})
    out[field] = answer(response)
# The admin's change page reads the payload as stored text (a cast that differs by database).
event = WebhookEvent.objects.first()
page = client.get(f"/admin/webhooks/webhookevent/{event.pk}/change/")
out["change_page"] = [page.status_code, "&quot;contact.created&quot;" in page.content.decode()]
print(json.dumps(out))
"""


def test_nan_and_out_of_range_times_on_sqlite(tmp_path):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "sandbox_project.settings",
        "SANDBOX_STATE_DIR": str(tmp_path),
    }
    for name in ("DATABASE_URL", "CELERY_BROKER_URL"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for number in ("NaN", "Infinity", "-Infinity", "1e999"):
        assert out[number] == [400, {"error": "malformed_payload"}], number
    for when in ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+14:00"):
        assert out[when][0] == 200, (when, out[when])
        assert out[when][1]["status"] == "accepted"
    # Only the two deliveries with an unusable payload time were stored, each occurred at the
    # signed webhook-timestamp (now), as for any unusable payload time.
    assert [endpoint for endpoint, _ in out["stored"]] == ["acme", "acme"]
    for _, occurred_at in out["stored"]:
        assert abs(datetime.fromisoformat(occurred_at) - datetime.now(UTC)) < timedelta(minutes=5)
    assert out["change_page"] == [200, True]
    for field in ("since", "until"):
        status, body = out[field]
        assert status == 400, (field, out[field])
        assert field in body and body[field][0]
