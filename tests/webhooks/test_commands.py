"""replay_webhooks, requeue_stuck_webhooks, prune_webhooks: filters, dry runs, bad input, output."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone

from tests import postgres
from tests.celery_worker import purge_broker, queue_length
from tests.servers import ROOT, subprocess_env
from tests.webhooks.factories import WebhookEventFactory
from webhooks import on
from webhooks.models import WebhookEvent

Status = WebhookEvent.Status


def run(name, *args):
    out, err = StringIO(), StringIO()
    call_command(name, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def statuses(*events):
    return [WebhookEvent.objects.get(pk=e.pk).status for e in events]


# -- replay_webhooks ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_replay_defaults_to_failed_events(on_commit):
    failed = WebhookEventFactory.create_batch(2, status=Status.FAILED, attempts=8)
    processed = WebhookEventFactory(status=Status.PROCESSED, attempts=1)
    with on_commit(execute=False) as callbacks:
        out, _ = run("replay_webhooks")
    assert out.strip() == "Replayed 2 event(s): enqueued."
    assert len(callbacks) == 2  # one publish per event, after commit
    assert statuses(*failed) == [Status.RECEIVED, Status.RECEIVED]
    assert {e.attempts for e in WebhookEvent.objects.filter(pk__in=[f.pk for f in failed])} == {0}
    assert statuses(processed) == [Status.PROCESSED]


@pytest.mark.django_db
def test_replay_filters_combine():
    day = datetime(2026, 3, 10, 12, tzinfo=UTC)
    match = WebhookEventFactory(
        status=Status.FAILED, endpoint="stripe", event_type="invoice.paid", received_at=day
    )
    others = [
        WebhookEventFactory(status=Status.FAILED, endpoint="github", event_type="invoice.paid",
                            received_at=day),
        WebhookEventFactory(status=Status.FAILED, endpoint="stripe", event_type="charge.failed",
                            received_at=day),
        WebhookEventFactory(status=Status.FAILED, endpoint="stripe", event_type="invoice.paid",
                            received_at=day - timedelta(days=2)),
        WebhookEventFactory(status=Status.FAILED, endpoint="stripe", event_type="invoice.paid",
                            received_at=day + timedelta(days=2)),
        WebhookEventFactory(status=Status.IGNORED, endpoint="stripe", event_type="invoice.paid",
                            received_at=day),
    ]  # fmt: skip
    out, _ = run(
        "replay_webhooks", "--endpoint", "stripe", "--type", "invoice.*",
        "--since", "2026-03-10", "--until", "2026-03-11T00:00:00+00:00",
    )  # fmt: skip
    assert "Replayed 1 event(s)" in out
    assert statuses(match) == [Status.RECEIVED]
    assert set(statuses(*others)) == {Status.FAILED, Status.IGNORED}


@pytest.mark.django_db
def test_replay_by_vendor_ids_any_status_and_plain_type_name():
    a = WebhookEventFactory(
        status=Status.PROCESSED, endpoint="github", event_type="pull_request.opened"
    )
    b = WebhookEventFactory(status=Status.FAILED, endpoint="github", event_type="pull_request")
    c = WebhookEventFactory(
        status=Status.FAILED, endpoint="github", event_type="pull_request_review"
    )
    out, _ = run(
        "replay_webhooks", "--status", "any", "--type", "pull_request",
        "--id", a.event_id, "--id", b.event_id, "--id", c.event_id,
    )  # fmt: skip
    assert "Replayed 2 event(s)" in out
    assert statuses(a, b, c) == [Status.RECEIVED, Status.RECEIVED, Status.FAILED]


@pytest.mark.django_db
def test_replay_limit_takes_the_oldest_and_dry_run_changes_nothing():
    now = timezone.now()
    events = [
        WebhookEventFactory(status=Status.FAILED, received_at=now - timedelta(minutes=m))
        for m in (1, 2, 3, 4, 5)
    ]
    out, _ = run("replay_webhooks", "--limit", "2", "--dry-run")
    assert out.strip() == "Would replay 2 event(s) (dry run: nothing changed)."
    assert set(statuses(*events)) == {Status.FAILED}

    out, _ = run("replay_webhooks", "--limit", "2", "--chunk-size", "1")
    assert "Replayed 2 event(s)" in out
    assert statuses(*events) == [Status.FAILED] * 3 + [Status.RECEIVED] * 2


@pytest.mark.django_db
def test_replay_nothing_matching():
    out, _ = run("replay_webhooks", "--endpoint", "nowhere")
    assert out.strip() == "Replayed 0 event(s): enqueued."


@pytest.mark.django_db
def test_replay_sync_processes_here_and_reports_outcomes(handlers):
    on("stripe", "test.ok")(lambda event: None)
    ok = WebhookEventFactory(status=Status.FAILED, attempts=8, event_type="test.ok")
    unhandled = WebhookEventFactory(status=Status.FAILED, attempts=8, event_type="test.none")
    out, _ = run("replay_webhooks", "--sync")
    assert out.strip() == (
        "Replayed 2 event(s) in this process: 1 processed, 1 ignored, 0 failed, "
        "0 retry scheduled, 0 skipped."
    )
    assert statuses(ok, unhandled) == [Status.PROCESSED, Status.IGNORED]
    assert WebhookEvent.objects.get(pk=ok.pk).attempts == 1


@pytest.mark.django_db(transaction=True)
@override_settings(WEBHOOKS={"MAX_ATTEMPTS": 2, "RETRY_BASE_DELAY": 30})
def test_replay_sync_exit_code_when_an_event_fails_again(handlers):
    purge_broker()

    @on("stripe", "test.boom")
    def boom(event):
        raise RuntimeError("still broken")

    event = WebhookEventFactory(status=Status.FAILED, attempts=2, event_type="test.boom")
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError) as excinfo:
        call_command("replay_webhooks", "--sync", stdout=out, stderr=err)
    assert excinfo.value.returncode == 4
    assert "1 retry scheduled" in out.getvalue()
    event.refresh_from_db()
    assert (event.status, event.attempts) == (Status.PROCESSING, 1)
    # The retry is published with Celery's countdown: an ETA at the event's next_attempt_at.
    [message] = redis.Redis.from_url(settings.CELERY_BROKER_URL).lrange("celery", 0, -1)
    headers = json.loads(message)["headers"]
    assert headers["task"] == "webhooks.process_event"
    assert abs(datetime.fromisoformat(headers["eta"]) - event.next_attempt_at) < timedelta(
        seconds=1
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "not an ISO 8601 date"),
        (["--until", "2026-13-45"], "not an ISO 8601 date"),
        # Legal ISO 8601, but year 10000 or year 0 once in UTC.
        (["--since", "9999-12-31T23:59:59-23:59"], "--since: .* outside the years 1-9999"),
        (["--until", "0001-01-01T00:00:00+14:00"], "--until: .* outside the years 1-9999"),
        (["--status", "done"], "invalid choice"),
        (["--limit", "-3"], "not a positive whole number"),
        (["--limit", "zero"], "not a number"),
        (["--limit", str(10**30)], "too large; give at most 1,000,000,000"),
        (["--chunk-size", "0"], "not a positive whole number"),
        (["--since", "2026-03-02", "--until", "2026-03-01"], "--since must be before --until"),
    ],
)
def test_replay_bad_input_is_a_clear_error(args, message):
    WebhookEventFactory(status=Status.FAILED)
    with pytest.raises(CommandError, match=message):
        run("replay_webhooks", *args)
    assert WebhookEvent.objects.filter(status=Status.FAILED).count() == 1


def test_help_texts_show_defaults():
    for name, expected in [
        ("replay_webhooks", ["(default: failed)", "--dry-run", "--sync", "Exit codes"]),
        (
            "requeue_stuck_webhooks",
            [
                "STUCK_AFTER'], now 600",
                "REQUEUE_MAX_INTERVAL'], now 3600",
                "--include-requeued",
                "--dry-run",
                "Exit codes",
            ],
        ),
        ("prune_webhooks", ["RETENTION_DAYS'], now 30", "--include-failed", "--dry-run"]),
    ]:
        result = subprocess.run(
            [sys.executable, "manage.py", name, "--help"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={"DJANGO_SETTINGS_MODULE": "tests.settings", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        help_text = " ".join(result.stdout.split())
        for text in expected:
            assert text in help_text, (name, text)


@pytest.mark.parametrize(
    ("since", "message"),
    [
        ("not-a-date", "not an ISO 8601 date"),
        ("9999-12-31T23:59:59-23:59", "outside the years 1-9999"),
    ],
)
def test_bad_input_from_the_shell_exits_with_a_usage_error_not_a_traceback(since, message):
    result = subprocess.run(
        [sys.executable, "manage.py", "replay_webhooks", "--since", since],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"DJANGO_SETTINGS_MODULE": "tests.settings", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode == 2
    assert "argument --since" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


# -- requeue_stuck_webhooks -----------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@override_settings(WEBHOOKS={"STUCK_AFTER": 600, "REQUEUE_RECEIVED_AFTER": 600})
def test_requeue_stuck_default_threshold_dry_run_and_summary():
    purge_broker()
    old = timezone.now() - timedelta(seconds=900)
    stuck = [
        WebhookEventFactory(received_at=old),
        WebhookEventFactory(status=Status.PROCESSING, received_at=old, last_attempt_at=old),
    ]
    WebhookEventFactory(received_at=timezone.now() - timedelta(seconds=60))
    WebhookEventFactory(status=Status.FAILED, received_at=old)

    out, _ = run("requeue_stuck_webhooks", "--dry-run")
    assert out.strip() == "Would requeue 2 stuck event(s) (dry run: nothing sent)."
    assert queue_length() == 0

    out, _ = run("requeue_stuck_webhooks")
    assert out.strip() == "Requeued 2 stuck event(s)."
    assert queue_length() == 2
    assert statuses(*stuck) == [Status.RECEIVED, Status.PROCESSING]  # the worker decides

    # The two just requeued wait for that message; the sweep's output says so.
    def left(count):
        return (
            f" {count} other stuck event(s) were requeued recently and are left to that message "
            "(--include-requeued sends them again)."
        )

    out, _ = run("requeue_stuck_webhooks", "--older-than", "30", "--dry-run")
    assert out.strip() == f"Would requeue 1 stuck event(s) (dry run: nothing sent).{left(2)}"
    assert queue_length() == 2
    out, _ = run("requeue_stuck_webhooks", "--older-than", "30")
    assert out.strip() == f"Requeued 1 stuck event(s).{left(2)}"
    assert queue_length() == 3
    out, _ = run("requeue_stuck_webhooks", "--older-than", "30")
    assert out.strip() == f"Requeued 0 stuck event(s).{left(3)}"
    assert queue_length() == 3

    # After the broker lost its messages, an operator can send them all again now.
    out, _ = run("requeue_stuck_webhooks", "--include-requeued", "--dry-run")
    assert out.strip() == "Would requeue 2 stuck event(s) (dry run: nothing sent)."
    out, _ = run("requeue_stuck_webhooks", "--older-than", "30", "--include-requeued")
    assert out.strip() == "Requeued 3 stuck event(s)."
    assert queue_length() == 6


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [(["--older-than", "-5"], "negative"), (["--older-than", "soon"], "not a number"),
     (["--older-than", "nan"], "not a finite number"),
     # Bounded before it reaches a timedelta (1e300 seconds was an OverflowError traceback).
     (["--older-than", "1e300"], "too large; give at most 315,360,000"),
     (["--older-than", "inf"], "not a finite number")],
)  # fmt: skip
def test_requeue_stuck_bad_input(args, message):
    with pytest.raises(CommandError, match=message):
        run("requeue_stuck_webhooks", *args)


@postgres.SUBPROCESS
@pytest.mark.django_db(transaction=True)
def test_requeue_stuck_with_the_broker_down_exits_3():
    """The real command in another process, its broker a closed port."""
    WebhookEventFactory(received_at=timezone.now() - timedelta(hours=1))
    result = subprocess.run(
        [sys.executable, "manage.py", "requeue_stuck_webhooks", "--skip-checks"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env=subprocess_env(broker_url="redis://127.0.0.1:1/0"),
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "Broker unavailable" in result.stderr
    assert "Traceback" not in result.stderr
    assert "127.0.0.1:1" not in result.stderr + result.stdout


# -- prune_webhooks ------------------------------------------------------------------------------


@pytest.mark.django_db
@override_settings(WEBHOOKS={"RETENTION_DAYS": 30})
def test_prune_default_retention_include_failed_and_dry_run():
    old = timezone.now() - timedelta(days=31)
    WebhookEventFactory(status=Status.PROCESSED, received_at=old)
    WebhookEventFactory(status=Status.IGNORED, received_at=old)
    failed = WebhookEventFactory(status=Status.FAILED, received_at=old)
    WebhookEventFactory(status=Status.RECEIVED, received_at=old)
    WebhookEventFactory(status=Status.PROCESSED, received_at=timezone.now() - timedelta(days=10))

    out, _ = run("prune_webhooks", "--dry-run")
    assert out.strip() == (
        "Would delete 2 event(s) (processed, ignored) older than 30 day(s) "
        "(dry run: nothing deleted)."
    )
    assert WebhookEvent.objects.count() == 5

    out, _ = run("prune_webhooks", "--batch-size", "1")
    assert out.strip() == "Deleted 2 event(s) (processed, ignored) older than 30 day(s)."
    assert WebhookEvent.objects.filter(pk=failed.pk).exists()

    out, _ = run("prune_webhooks", "--older-than", "5", "--include-failed")
    assert out.strip() == "Deleted 2 event(s) (processed, ignored, failed) older than 5 day(s)."
    assert list(WebhookEvent.objects.values_list("status", flat=True)) == [Status.RECEIVED]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [(["--older-than", "-1"], "negative"), (["--older-than", "1.5"], "not a number"),
     (["--older-than", str(10**12)], "too large; give at most 36,500"),
     (["--batch-size", "0"], "not a positive whole number"),
     (["--batch-size", str(10**30)], "too large")],
)  # fmt: skip
def test_prune_bad_input(args, message):
    WebhookEventFactory(status=Status.PROCESSED, received_at=timezone.now() - timedelta(days=99))
    with pytest.raises(CommandError, match=message):
        run("prune_webhooks", *args)
    assert WebhookEvent.objects.count() == 1
