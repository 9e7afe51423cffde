"""``requeue_stuck_webhooks --every SECONDS``: the sweeper as a long-running process, which is how
it runs beside Django Tasks' worker (no beat). Run as a real process on the test database: it
sweeps until SIGTERM, reports a failed sweep and tries again, and refuses a bad interval."""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from tests import postgres
from tests.servers import ManagedProcess, subprocess_env, wait_until
from tests.webhooks.factories import WebhookEventFactory
from webhooks.models import WebhookEvent

pytestmark = [pytest.mark.slow]


class Sweeper(ManagedProcess):
    """``requeue_stuck_webhooks`` with ``args``, started at once, on the test database (with
    ``subprocess_env``'s options: ``webhooks``, ``broker_url``)."""

    name = "sweeper"

    def __init__(self, *args: str, **options: Any) -> None:
        super().__init__()
        self.args = args
        self.options = options
        self.start()

    def command(self) -> list[str]:
        return [sys.executable, "manage.py", "requeue_stuck_webhooks", "--skip-checks", *self.args]

    def env(self) -> dict[str, str]:
        return subprocess_env(**self.options)


def stuck(**fields) -> WebhookEvent:
    return WebhookEventFactory(received_at=timezone.now() - timedelta(hours=1), **fields)


@postgres.SUBPROCESS
@pytest.mark.django_db(transaction=True)
def test_it_sweeps_until_stopped_enqueueing_django_tasks():
    first = stuck()
    sweeper = Sweeper("--every", "1", webhooks={"TASK_BACKEND": "django"})
    try:
        wait_until(
            lambda: DBTaskResult.objects.filter(args_kwargs__args=[first.pk]).exists(),
            timeout=30, message="the first sweep",
        )  # fmt: skip
        second = stuck()  # found by a later sweep, with the process still running
        wait_until(
            lambda: DBTaskResult.objects.filter(args_kwargs__args=[second.pk]).exists(),
            timeout=30, message="a later sweep",
        )  # fmt: skip
        assert sweeper.process.poll() is None
        log = sweeper.log()
    finally:
        status = sweeper.close()
    assert status == 0, log
    assert "Sweeping every 1 s (SIGTERM or Ctrl-C stops)." in log
    assert log.count("Requeued 1 stuck event(s).") == 2, log  # sweeps that found none are quiet
    assert DBTaskResult.objects.count() == 2  # each requeued once: the later sweeps wait


@postgres.SUBPROCESS
@pytest.mark.django_db(transaction=True)
def test_a_failed_sweep_is_reported_and_the_next_one_tried():
    """Its dependency down (Celery's broker, a closed port): each sweep fails and says so, the
    process keeps going, and the event stays stored for a sweep that succeeds."""
    event = stuck()
    sweeper = Sweeper("--every", "1", broker_url="redis://127.0.0.1:1/0")
    try:
        wait_until(lambda: sweeper.log().count("Sweep failed") >= 2, timeout=60,
                   message="two failed sweeps")  # fmt: skip
        assert sweeper.process.poll() is None
    finally:
        status = sweeper.close()
    assert status == 0
    event.refresh_from_db()
    assert event.requeued_at is None  # nothing recorded for a message never sent


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("value", "message"),
    [("0", "too small; give at least 1"), ("0.5", "too small"), ("-1", "too small"),
     ("soon", "not a number"), ("nan", "not a finite number"), ("inf", "not a finite number"),
     ("1e9", "too large; give at most 86,400")],
)  # fmt: skip
def test_a_bad_interval_is_refused(value, message):
    with pytest.raises(CommandError, match=message):
        call_command("requeue_stuck_webhooks", "--every", value)
