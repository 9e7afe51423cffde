"""``WEBHOOKS["TASK_BACKEND"] = "django"`` in this process: what is enqueued through the
project's ``TASKS`` backend (django-tasks-db's, on the test database, with no worker), what a
backend that cannot be loaded, refuses a queue or cannot defer does, the system checks and the
health view. The real worker's behaviour is in ``test_django_tasks_worker.py``."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from io import StringIO

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from tests import postgres
from tests.db_worker import django_tasks_backend
from tests.webhooks.factories import WebhookEventFactory
from tether import tasks_api
from webhooks import on, queueing, services
from webhooks.checks import check_celery_wiring, check_django_tasks, check_webhook_endpoints
from webhooks.models import WebhookEvent
from webhooks.testing import post_webhook

Status = WebhookEvent.Status
DATABASE_BACKEND = "django_tasks_db.DatabaseBackend"
#: Django's (6) or the backport's (5.2), whichever ``tether.tasks_api`` took the API from.
IMMEDIATE_BACKEND = f"{tasks_api.SOURCE}.backends.immediate.ImmediateBackend"


def tasks(**backend) -> override_settings:
    return override_settings(TASKS={"default": {"BACKEND": DATABASE_BACKEND, **backend}})


def stripe_payload(event_type: str = "test.record") -> dict:
    return {"id": f"evt_{uuid.uuid4().hex[:24]}", "object": "event", "type": event_type,
            "created": int(time.time()), "data": {"object": {}}}  # fmt: skip


def ids(messages) -> list[str]:
    return [message.id for message in messages]


# -- what is enqueued ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_delivery_enqueues_one_task_carrying_only_the_events_key(client, on_commit):
    payload = stripe_payload()
    with django_tasks_backend(DISPATCH_INTERVAL=None), on_commit(execute=True):
        response = post_webhook(client, "stripe", payload)
    assert response.status_code == 200
    event = WebhookEvent.objects.get(event_id=payload["id"])
    assert event.status == Status.RECEIVED  # enqueued, not run: no worker here
    (task,) = DBTaskResult.objects.all()
    assert task.task_path == "webhooks.djtasks.process_event" == queueing.DJANGO_PROCESS_EVENT
    assert task.args_kwargs == {"args": [event.pk], "kwargs": {}}
    assert (task.status, task.queue_name) == ("READY", "default")


@pytest.mark.django_db(transaction=True)
def test_the_dispatcher_enqueues_from_its_thread(client):
    """The default path: the web process's dispatcher thread inserts the tasks."""
    payloads = [stripe_payload() for _ in range(5)]
    with django_tasks_backend():
        for payload in payloads:
            assert post_webhook(client, "stripe", payload).status_code == 200
        assert queueing.dispatcher.flush(10)
    pks = set(WebhookEvent.objects.values_list("pk", flat=True))
    assert {task.args_kwargs["args"][0] for task in DBTaskResult.objects.all()} == pks
    assert len(pks) == 5


@pytest.mark.django_db
def test_task_queue_and_a_countdown_become_queue_name_and_run_after():
    event = WebhookEventFactory()
    with tasks(QUEUES=["default", "webhooks"]), django_tasks_backend(TASK_QUEUE="webhooks"):
        before = timezone.now()
        assert queueing.publish_process_task(event.pk, countdown=30)
    (task,) = DBTaskResult.objects.all()
    assert task.queue_name == "webhooks"
    assert (
        before + timedelta(seconds=30) <= task.run_after <= timezone.now() + timedelta(seconds=30)
    )


@pytest.mark.django_db
def test_replay_and_the_sweeper_enqueue_django_tasks():
    failed = WebhookEventFactory(status=Status.FAILED, attempts=3)
    stuck = WebhookEventFactory(received_at=timezone.now() - timedelta(hours=1))
    with django_tasks_backend():
        services.replay_events(WebhookEvent.objects.filter(pk=failed.pk))
        assert services.requeue_stuck() == 1
    # The replay's task is enqueued when its transaction commits (here: the test's, never), the
    # sweeper's at once.
    assert [task.args_kwargs["args"] for task in DBTaskResult.objects.all()] == [[stuck.pk]]


@pytest.mark.django_db
def test_a_retry_is_a_deferred_task_at_next_attempt_at(handlers, on_commit):
    @on("stripe", "test.always_fails")
    def fails(event):
        raise RuntimeError("down")

    event = WebhookEventFactory(event_type="test.always_fails")
    from webhooks.djtasks import process_event

    with django_tasks_backend(RETRY_BASE_DELAY=60, RETRY_MAX_DELAY=60):
        assert process_event.call(event.pk) == Status.PROCESSING
    event.refresh_from_db()
    (retry,) = DBTaskResult.objects.all()
    assert retry.args_kwargs["args"] == [event.pk]
    assert abs((retry.run_after - event.next_attempt_at).total_seconds()) < 1


# -- a backend that cannot take the task -------------------------------------------------------


@pytest.mark.django_db
def test_a_backend_that_cannot_be_loaded_leaves_the_event_to_the_sweeper(client, on_commit, caplog):
    payload = stripe_payload()
    with (
        override_settings(TASKS={"default": {"BACKEND": "nosuch.Backend"}}),
        django_tasks_backend(DISPATCH_INTERVAL=None),
        caplog.at_level(logging.WARNING, logger="webhooks.queueing"),
        on_commit(execute=True),
    ):
        response = post_webhook(client, "stripe", payload)
        problems = check_django_tasks()
    assert response.status_code == 200  # stored: the task is only its wake-up call
    event = WebhookEvent.objects.get(event_id=payload["id"])
    assert (event.status, event.attempts) == (Status.RECEIVED, 0)
    assert f"could not enqueue event pk={event.pk} (InvalidTaskBackendError)" in caplog.text
    assert ids(problems) == ["webhooks.E009"]
    assert "the TASKS setting's 'default' backend cannot be loaded" in problems[0].msg
    assert not DBTaskResult.objects.exists()

    # The backend is fixed: the sweeper enqueues it.
    with django_tasks_backend():
        call_command("requeue_stuck_webhooks", "--older-than", "0", stdout=StringIO())
    assert [task.args_kwargs["args"] for task in DBTaskResult.objects.all()] == [[event.pk]]


@pytest.mark.django_db
def test_a_queue_the_backend_does_not_have_is_refused_and_reported(caplog):
    event = WebhookEventFactory()
    with (
        tasks(QUEUES=["default"]),
        django_tasks_backend(TASK_QUEUE="webhooks"),
        caplog.at_level(logging.WARNING, logger="webhooks.queueing"),
    ):
        assert not queueing.publish_process_task(event.pk)
        problems = check_django_tasks()
    assert f"could not enqueue event pk={event.pk} (InvalidTaskError)" in caplog.text
    assert ids(problems) == ["webhooks.E009"]
    assert problems[0].msg == (
        "WEBHOOKS[\"TASK_QUEUE\"]: 'webhooks' is not one of the QUEUES of the TASKS setting's "
        "'default' backend (default)."
    )
    assert not DBTaskResult.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_when_the_database_refuses_the_batch_the_rest_is_logged(caplog):
    """The dispatcher's publisher stops at the first task the backend refuses and names the
    events left to the sweeper (a missing table stands for a database that refuses)."""
    events = [WebhookEventFactory() for _ in range(3)]
    pks = [event.pk for event in events]
    from django.db import connection

    table = DBTaskResult._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO tasks_away")
    try:
        with django_tasks_backend(), caplog.at_level(logging.WARNING, logger="webhooks.queueing"):
            assert not queueing.publish_process_batch(pks)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE tasks_away RENAME TO {table}")
    error = "ProgrammingError" if connection.vendor == "postgresql" else "OperationalError"
    assert f"could not enqueue 3 event(s) (pk={','.join(map(str, pks))}) ({error})" in caplog.text


@pytest.mark.django_db
def test_the_immediate_backend_runs_inline_and_leaves_retries_to_the_sweeper(
    client, handlers, on_commit, caplog
):
    calls = []

    @on("stripe", "test.flaky_once")
    def flaky(event):
        calls.append(event.attempts)
        raise RuntimeError("first attempt fails")

    payload = stripe_payload("test.flaky_once")
    with (
        override_settings(TASKS={"default": {"BACKEND": IMMEDIATE_BACKEND}}),
        django_tasks_backend(),  # DISPATCH_INTERVAL as set: the immediate backend bypasses it
        caplog.at_level(logging.WARNING, logger="webhooks.queueing"),
        on_commit(execute=True),
    ):
        assert queueing.dispatches_inline()
        response = post_webhook(client, "stripe", payload)
        problems = check_django_tasks()
    assert response.status_code == 200
    event = WebhookEvent.objects.get(event_id=payload["id"])
    assert calls == [1]  # run as the delivery committed
    assert (event.status, event.attempts) == (Status.PROCESSING, 1)
    assert event.next_attempt_at is not None  # due, for the sweeper
    assert "(DeferNotSupported)" in caplog.text
    assert ids(problems) == ["webhooks.W004"]
    assert "cannot run a task later" in problems[0].msg


# -- settings and checks -------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["rq", "Django", "", None, ["django"], 1])
def test_an_unknown_task_backend_is_e008(value):
    with override_settings(WEBHOOKS={**settings.WEBHOOKS, "TASK_BACKEND": value}):
        problems = [p for p in check_webhook_endpoints() if "TASK_BACKEND" in p.msg]
        assert check_django_tasks() == []  # nothing more to say about it
    assert ids(problems) == ["webhooks.E008"]
    assert problems[0].msg == (
        f'WEBHOOKS["TASK_BACKEND"]: must be one of "celery" or "django", not {value!r}.'
    )


def test_a_usable_django_backend_passes_and_w003_is_not_checked():
    with django_tasks_backend():
        assert check_django_tasks() == []
        assert check_celery_wiring() == []
        assert [p for p in check_webhook_endpoints() if "TASK" in p.msg] == []


def test_the_default_is_celery_and_the_django_check_says_nothing():
    assert settings.WEBHOOKS.get("TASK_BACKEND", "celery") == "celery"
    with override_settings(TASKS={"default": {"BACKEND": "nosuch.Backend"}}):
        assert check_django_tasks() == []


@pytest.mark.django_db
def test_the_health_view_probes_no_broker_with_django_tasks(client, broker_down):
    with django_tasks_backend():
        response = client.get("/health/")
    assert response.status_code == 200, response.content
    assert response.json()["broker"] == {
        "ok": True,
        "task_backend": "django",
    }


# -- in a fresh project (django-admin startproject, in a subprocess) -----------------------------


@pytest.fixture
def project(tmp_path):
    from tests.webhooks.test_celery_wiring_check import Project

    return Project(tmp_path)


def test_a_fresh_project_on_django_tasks_needs_no_celery_wiring(project):
    project.add_settings(
        'INSTALLED_APPS += ["webhooks", "django_tasks_db"]\n'
        'WEBHOOKS = {"TASK_BACKEND": "django"}\n'
        'TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}\n'
    )
    output = project.check()
    assert "System check identified no issues" in output, output


def test_without_django_tasks_the_check_says_what_to_install(project):
    """This interpreter with the backport made unimportable (Django 5.2 has no django.tasks):
    as a project that set ``"django"`` without installing the extra."""
    project.add_settings('INSTALLED_APPS += ["webhooks"]\nWEBHOOKS = {"TASK_BACKEND": "django"}\n')
    project.write(
        "without_backport.py",
        "import runpy, sys\n"
        "class Refuse:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'django_tasks':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, Refuse())\n"
        "sys.argv = ['manage.py', 'check']\n"
        "runpy.run_path('manage.py', run_name='__main__')\n",
    )
    result = subprocess.run(
        [sys.executable, "without_backport.py"],
        cwd=project.root,
        env=project.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert (
        '(webhooks.E009) WEBHOOKS["TASK_BACKEND"]: is "django": Django\'s Tasks need Django 6 '
        "(django.tasks) or, on Django 5.2, the django-tasks backport: "
        'pip install "django-tether[tasks]"'
    ) in output, output
    assert "W003" not in output  # no Celery to wire


# -- real database errors (PL/pgSQL triggers) -----------------------------------------------------


def refuse(table: str, condition: str = "true") -> None:
    """A trigger that makes PostgreSQL refuse the INSERT or UPDATE of ``table``'s rows matching
    ``condition``, with a DETAIL line standing for a statement's echoed parameters."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            CREATE FUNCTION tether_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF {condition} THEN
                RAISE EXCEPTION 'tether test: refused'
                  USING DETAIL = 'parameter token=hunter2-detail';
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER tether_test_refuse BEFORE INSERT OR UPDATE ON {table}
              FOR EACH ROW EXECUTE FUNCTION tether_test_refuse();
            """
        )


@postgres.TRIGGERS
@pytest.mark.django_db
def test_a_batch_is_enqueued_all_or_nothing(caplog):
    """The dispatcher's batch is one transaction: the backend refusing its third task leaves
    none of the batch enqueued, and the warning names every event of it."""
    pks = [WebhookEventFactory().pk for _ in range(4)]
    refuse(DBTaskResult._meta.db_table, f"(NEW.args_kwargs -> 'args' ->> 0)::int = {pks[2]}")
    with django_tasks_backend(), caplog.at_level(logging.WARNING, logger="webhooks.queueing"):
        assert not queueing.publish_process_batch(pks)
        assert queueing.publish_process_batch(pks[3:])  # the next batch is not affected
    assert f"could not enqueue 4 event(s) (pk={','.join(map(str, pks))}) (ProgrammingError)" in (
        caplog.text
    )
    assert "hunter2" not in caplog.text
    assert [task.args_kwargs["args"] for task in DBTaskResult.objects.all()] == [[pks[3]]]


@postgres.TRIGGERS
@pytest.mark.django_db
def test_an_error_outside_the_handlers_logs_its_first_line_and_stores_no_traceback(caplog):
    """The task ends with no status and the event keeps its state for the sweeper; the log has
    the error's class and first line, never its DETAIL (a statement's parameters)."""
    from webhooks.djtasks import process_event

    event = WebhookEventFactory()
    refuse("webhooks_webhookevent")
    with django_tasks_backend(), caplog.at_level(logging.ERROR, logger="webhooks.djtasks"):
        assert process_event.call(event.pk) is None
    [record] = [r for r in caplog.records if "outside its handlers" in r.getMessage()]
    assert f"pk={event.pk}" in record.getMessage()
    assert "tether test: refused" in record.getMessage()
    assert "hunter2" not in caplog.text


class RefusingBackend:
    """A ``TASKS`` backend whose constructor fails quoting its options (a URL with a password),
    as a real one may."""

    def __init__(self, alias, params):
        raise ValueError(f"cannot connect to {params['OPTIONS']['URL']}")


def test_a_backend_failing_to_start_is_e009_without_its_message():
    backend = {
        "BACKEND": f"{__name__}.RefusingBackend",
        "OPTIONS": {"URL": "redis://:hunter2@127.0.0.1:1/0"},
    }
    with override_settings(TASKS={"default": backend}), django_tasks_backend():
        problems = check_django_tasks()
    assert ids(problems) == ["webhooks.E009"]
    assert problems[0].msg == (
        'WEBHOOKS["TASK_BACKEND"]: is "django", and the TASKS setting\'s \'default\' backend '
        "cannot be loaded (ValueError)."
    )
    assert "hunter2" not in problems[0].msg + (problems[0].hint or "")
