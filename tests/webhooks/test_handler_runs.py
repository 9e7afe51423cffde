"""A run per handler: which handlers an attempt runs, replay by run (default, all handlers, one
handler: a backfill), old events without runs, and bad input to the command, the API and the
admin. Side effects are counted in the database (``tests.handler_runs``).

Behaviour with a real worker is in ``test_worker.py``.
"""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client, override_settings
from django.urls import reverse

from tests.handler_runs import record_run_as, runs_as
from tests.webhooks.factories import WebhookEventFactory
from webhooks import Ignore, on, processing, services
from webhooks.models import HandlerRun, WebhookEvent
from webhooks.registry import HANDLER_NAME_MAX_CHARS, handler_name, registrations_named

Status = WebhookEvent.Status
RunStatus = HandlerRun.Status
PREFIX = "tests.webhooks.test_handler_runs"


# Handlers at module level, so that their dotted names are stable: ``PREFIX.<name>``.
def first(event):
    record_run_as(event, "first")


def second(event):
    record_run_as(event, "second")
    if event.payload.get("second_fails"):
        raise RuntimeError("second is broken")


def added_later(event):
    record_run_as(event, "later")


@pytest.fixture
def pair(handlers, runs):
    """``first`` and ``second`` on ``stripe`` ``test.pair``."""
    on("stripe", "test.pair")(first)
    on("stripe", "test.pair")(second)
    return runs


def run_states(event) -> dict[str, tuple[str, int]]:
    return {
        name.rsplit(".", 1)[-1]: (status, attempts)
        for name, status, attempts in HandlerRun.objects.filter(event=event).values_list(
            "handler", "status", "attempts"
        )
    }


def failed_pair_event():
    """An event whose ``second`` run failed for good and whose ``first`` run processed."""
    event = WebhookEventFactory(event_type="test.pair", payload={"second_fails": True})
    with override_settings(WEBHOOKS={"MAX_ATTEMPTS": 1}):
        assert processing.process_event(event.pk) == Status.FAILED
    assert run_states(event) == {"first": ("processed", 1), "second": ("failed", 1)}
    return event


def fix_second(event):
    WebhookEvent.objects.filter(pk=event.pk).update(payload={})


def run(*args):
    out, err = StringIO(), StringIO()
    call_command("replay_webhooks", *args, stdout=out, stderr=err)
    return out.getvalue()


# -- which handlers an attempt runs ---------------------------------------------------------------


@pytest.mark.django_db
def test_several_handlers_get_pending_runs_first_so_a_lost_worker_leaves_the_rest_due(pair):
    event = WebhookEventFactory(event_type="test.pair", status=Status.PROCESSING, attempts=1)
    # What a worker lost after ``first`` committed leaves: first processed, second pending.
    HandlerRun.objects.create(event=event, handler=f"{PREFIX}.first", status=RunStatus.PROCESSED,
                              attempts=1)  # fmt: skip
    HandlerRun.objects.create(event=event, handler=f"{PREFIX}.second", status=RunStatus.PENDING)
    assert processing.process_event(event.pk) == Status.PROCESSED
    assert runs_as(event.event_id, "first") == []
    assert runs_as(event.event_id, "second") == [2]
    assert run_states(event) == {"first": ("processed", 1), "second": ("processed", 1)}


@pytest.mark.django_db
def test_a_due_run_of_a_handler_no_longer_registered_ends_failed(pair):
    event = WebhookEventFactory(event_type="test.pair", status=Status.RECEIVED)
    HandlerRun.objects.create(event=event, handler="gone.module.handler", status=RunStatus.PENDING)
    HandlerRun.objects.create(event=event, handler=f"{PREFIX}.first", status=RunStatus.PENDING)
    assert processing.process_event(event.pk) == Status.FAILED
    gone = HandlerRun.objects.get(event=event, handler="gone.module.handler")
    assert gone.status == RunStatus.FAILED
    assert gone.last_error.startswith("HandlerNotRegistered")
    assert runs_as(event.event_id, "first") == [1]
    assert runs_as(event.event_id, "second") == []  # no run: not chosen
    event.refresh_from_db()
    assert event.last_error.startswith("HandlerNotRegistered")


@pytest.mark.django_db
def test_an_old_event_without_runs_runs_every_handler_as_before(pair):
    """Events stored before migration 0007 have no runs; a retry still due runs them all."""
    event = WebhookEventFactory(event_type="test.pair", status=Status.PROCESSING, attempts=2)
    assert processing.process_event(event.pk) == Status.PROCESSED
    assert runs_as(event.event_id, "first") == [3]
    assert runs_as(event.event_id, "second") == [3]
    assert run_states(event) == {"first": ("processed", 1), "second": ("processed", 1)}


@pytest.mark.django_db
def test_every_handler_ignoring_ends_the_event_ignored_with_the_reason(handlers):
    @on("stripe", "test.ignore")
    def not_mine(event):
        raise Ignore("test mode event")

    event = WebhookEventFactory(event_type="test.ignore")
    assert processing.process_event(event.pk) == Status.IGNORED
    event.refresh_from_db()
    assert event.last_error == "webhooks.exceptions.Ignore: test mode event"
    assert run_states(event) == {"not_mine": ("ignored", 1)}


@pytest.mark.django_db
def test_two_lambdas_of_one_module_get_runs_of_their_own(handlers, runs):
    calls = []
    on("stripe", "test.lambdas")(lambda event: calls.append("a"))
    on("stripe", "test.lambda*")(lambda event: calls.append("b"))  # another pattern
    event = WebhookEventFactory(event_type="test.lambdas")
    assert processing.process_event(event.pk) == Status.PROCESSED
    assert calls == ["a", "b"]
    names = sorted(HandlerRun.objects.filter(event=event).values_list("handler", flat=True))
    name = f"{PREFIX}.test_two_lambdas_of_one_module_get_runs_of_their_own.<locals>.<lambda>"
    assert names == [name, f"{name}#2"]


# -- replay ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_replay_by_default_runs_only_the_failed_runs(pair):
    event = failed_pair_event()
    fix_second(event)
    out = run("--sync")
    assert "1 processed" in out
    assert runs_as(event.event_id, "first") == [1]  # not run again
    assert runs_as(event.event_id, "second") == [1]  # its write of attempt 1 was rolled back
    assert run_states(event) == {"first": ("processed", 1), "second": ("processed", 1)}
    assert WebhookEvent.objects.get(pk=event.pk).status == Status.PROCESSED


@pytest.mark.django_db
def test_replay_of_an_event_whose_runs_all_succeeded_runs_nothing(pair):
    event = WebhookEventFactory(event_type="test.pair")
    assert processing.process_event(event.pk) == Status.PROCESSED
    run("--status", "processed", "--sync")
    assert runs_as(event.event_id, "first") == [1]
    assert runs_as(event.event_id, "second") == [1]
    assert WebhookEvent.objects.get(pk=event.pk).status == Status.PROCESSED


@pytest.mark.django_db
def test_replay_all_handlers_runs_every_matching_handler_again(pair):
    event = failed_pair_event()
    fix_second(event)
    run("--all-handlers", "--sync")
    assert runs_as(event.event_id, "first") == [1, 1]
    assert run_states(event) == {"first": ("processed", 1), "second": ("processed", 1)}


@pytest.mark.django_db
def test_backfill_a_handler_added_after_the_events_were_processed(pair):
    old = WebhookEventFactory(event_type="test.pair", status=Status.PROCESSED)  # no runs
    newer = WebhookEventFactory(event_type="test.pair")
    assert processing.process_event(newer.pk) == Status.PROCESSED
    other = WebhookEventFactory(event_type="test.other", status=Status.PROCESSED)
    on("stripe", "test.pair")(added_later)  # deployed later
    name = f"{PREFIX}.added_later"

    out = run("--handler", name, "--status", "processed", "--dry-run")
    assert out.strip() == "Would replay 2 event(s) (dry run: nothing changed)."
    assert not HandlerRun.objects.filter(handler=name).exists()

    run("--handler", name, "--status", "processed", "--sync")
    for event in (old, newer):
        assert runs_as(event.event_id, "later") == [1]
        assert WebhookEvent.objects.get(pk=event.pk).status == Status.PROCESSED
    assert runs_as(old.event_id, "first") == []  # the other handlers did not run again
    assert runs_as(newer.event_id, "first") == [1]
    assert runs_as(newer.event_id, "second") == [1]
    assert run_states(old) == {"added_later": ("processed", 1)}
    assert runs_as(other.event_id, "later") == []  # not an event it handles
    assert WebhookEvent.objects.get(pk=other.pk).status == Status.PROCESSED


@pytest.mark.django_db
def test_replay_one_handler_with_the_service(pair):
    event = WebhookEventFactory(event_type="test.pair")
    processing.process_event(event.pk)
    services.replay_event(event, sync=True, handlers=[f"{PREFIX}.second"])
    assert runs_as(event.event_id, "first") == [1]
    assert runs_as(event.event_id, "second") == [1, 1]
    with pytest.raises(ValueError, match="not both"):
        services.replay_event(event, handlers=[f"{PREFIX}.second"], all_handlers=True)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--handler", "tests.nowhere.handler"], "no handler is registered under"),
        (["--handler", "not a dotted path"], "not a dotted path"),
        (["--handler", "x"], "not a dotted path"),
        (["--handler", "a." + "b" * HANDLER_NAME_MAX_CHARS], "at most 255 characters"),
        (["--handler", ""], "dotted path"),
        (["--handler", f"{PREFIX}.first", "--all-handlers"], "not allowed with argument"),
    ],
)
def test_replay_command_refuses_a_bad_handler_and_changes_nothing(pair, args, message):
    event = WebhookEventFactory(status=Status.FAILED, event_type="test.pair")
    with pytest.raises(CommandError, match=message) as excinfo:
        run(*args)
    if "--all-handlers" not in args:  # argparse's own refusal has its own code
        assert excinfo.value.returncode == 2
    assert WebhookEvent.objects.get(pk=event.pk).status == Status.FAILED


@pytest.mark.django_db
def test_registrations_named_checks_the_name(pair):
    assert [r.pattern for r in registrations_named(f"{PREFIX}.first")] == ["test.pair"]
    assert handler_name(first) == f"{PREFIX}.first"
    for bad in (None, 42, "  ", "a" * 300, "no_dot", "tests.nowhere.x"):
        with pytest.raises(services.UnknownHandler):
            registrations_named(bad)  # type: ignore[arg-type]


# -- the operator API ------------------------------------------------------------------------------


@pytest.fixture
def api(db, django_user_model):
    from rest_framework.test import APIClient

    user = django_user_model.objects.create_superuser("root", password="pw")
    client = APIClient()
    client.force_login(user)
    return client


API = "/api/webhook-events/"


@pytest.mark.django_db
def test_the_event_detail_lists_its_runs(api, pair):
    event = WebhookEventFactory(event_type="test.pair", payload={"second_fails": True})
    processing.process_event(event.pk)
    runs = api.get(f"{API}{event.pk}/").json()["handler_runs"]
    assert [(r["handler"], r["status"], r["attempts"]) for r in runs] == [
        (f"{PREFIX}.first", "processed", 1),
        (f"{PREFIX}.second", "processing", 1),
    ]
    assert runs[1]["last_error"].startswith("RuntimeError: second is broken")
    assert runs[0]["duration"] >= 0 and runs[1]["next_attempt_at"]
    old = WebhookEventFactory(status=Status.PROCESSED)
    assert api.get(f"{API}{old.pk}/").json()["handler_runs"] == []


@pytest.mark.django_db
def test_api_replay_of_one_handler(api, pair, django_capture_on_commit_callbacks):
    event = WebhookEventFactory(event_type="test.pair")
    processing.process_event(event.pk)
    with django_capture_on_commit_callbacks(execute=False):
        response = api.post(f"{API}{event.pk}/replay/", {"handlers": [f"{PREFIX}.second"]},
                            format="json")  # fmt: skip
    assert response.status_code == 202
    assert run_states(event)["second"] == ("pending", 0)
    assert run_states(event)["first"] == ("processed", 1)


@pytest.mark.django_db
def test_api_bulk_replay_backfills_with_a_dry_run_first(api, pair):
    WebhookEventFactory(event_type="test.pair", status=Status.PROCESSED)
    WebhookEventFactory(event_type="test.other", status=Status.PROCESSED)
    on("stripe", "test.pair")(added_later)
    body = {"handlers": [f"{PREFIX}.added_later"], "status": "processed", "dry_run": True}
    response = api.post(f"{API}replay/", body, format="json")
    assert (response.status_code, response.json()) == (200, {"count": 1})


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"handlers": ["tests.nowhere.handler"]}, "handlers"),
        ({"handlers": ["not a path"]}, "handlers"),
        ({"handlers": ["a." + "b" * 300]}, "handlers"),
        ({"handlers": [f"{PREFIX}.first"] * 51}, "handlers"),
        ({"handlers": []}, "handlers"),
        ({"handlers": "tests.webhooks.test_handler_runs.first"}, "handlers"),
        ({"handlers": [{"x": 1}]}, "handlers"),
        ({"handlers": [f"{PREFIX}.first"], "all_handlers": True}, "all_handlers"),
        ({"all_handlers": "maybe"}, "all_handlers"),
    ],
)
def test_api_replay_with_bad_handlers_is_400_and_replays_nothing(api, pair, body, field):
    event = WebhookEventFactory(event_type="test.pair", status=Status.FAILED)
    for url in (f"{API}{event.pk}/replay/", f"{API}replay/"):
        response = api.post(url, body, format="json")
        assert response.status_code == 400, response.content
        assert field in response.json()
    assert WebhookEvent.objects.get(pk=event.pk).status == Status.FAILED


@pytest.mark.django_db
def test_api_replay_of_a_handler_that_does_not_handle_the_event_is_400(api, pair):
    event = WebhookEventFactory(event_type="test.other", status=Status.FAILED)
    response = api.post(f"{API}{event.pk}/replay/", {"handlers": [f"{PREFIX}.first"]},
                        format="json")  # fmt: skip
    assert response.status_code == 400
    assert "handles this event" in response.json()["handlers"][0]
    assert WebhookEvent.objects.get(pk=event.pk).status == Status.FAILED


# -- the admin -------------------------------------------------------------------------------------


def change_url(event):
    return reverse("admin:webhooks_webhookevent_change", args=[event.pk])


def replay_url(event):
    return reverse("admin:webhooks_webhookevent_replay", args=[event.pk])


@pytest.mark.django_db
def test_the_event_page_lists_runs_with_a_replay_each(admin_client, pair):
    event = WebhookEventFactory(event_type="test.pair", payload={"second_fails": True})
    processing.process_event(event.pk)
    content = admin_client.get(change_url(event)).content.decode()
    assert f"<code>{PREFIX}.first</code>" in content
    assert "RuntimeError: second is broken" in content
    assert f'{replay_url(event)}?handler={PREFIX}.second"' in content
    old = WebhookEventFactory(status=Status.PROCESSED)
    assert "No handler runs" in admin_client.get(change_url(old)).content.decode()


@pytest.mark.django_db
def test_replaying_one_run_from_the_admin(admin_client, pair, django_capture_on_commit_callbacks):
    event = WebhookEventFactory(event_type="test.pair")
    processing.process_event(event.pk)
    url = f"{replay_url(event)}?handler={PREFIX}.second"
    page = admin_client.get(url).content.decode()
    assert "only this handler runs" in page and f'value="{PREFIX}.second"' in page
    assert run_states(event)["second"] == ("processed", 1)  # nothing changed on a GET
    with django_capture_on_commit_callbacks(execute=False):
        response = admin_client.post(replay_url(event), {"handler": f"{PREFIX}.second"})
    assert response.status_code == 302
    assert run_states(event) == {"first": ("processed", 1), "second": ("pending", 0)}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "handler",
    ["tests.nowhere.handler", "bad path!", "a." + "b" * 300, f"{PREFIX}.added_later"],
)
def test_a_bad_run_replay_in_the_admin_says_so_and_changes_nothing(admin_client, pair, handler):
    event = WebhookEventFactory(event_type="test.pair", status=Status.FAILED)
    on("stripe", "test.unrelated")(added_later)  # registered, but not for test.pair
    url, data = replay_url(event), {"handler": handler}
    for response in (admin_client.get(url, data, follow=True),
                     admin_client.post(url, data, follow=True)):  # fmt: skip
        assert "Cannot replay this run" in response.content.decode()
    assert WebhookEvent.objects.get(pk=event.pk).status == Status.FAILED


@pytest.mark.django_db
def test_a_view_only_user_sees_the_runs_without_replay_links(pair, django_user_model):
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_webhookevent"))
    client = Client()
    client.force_login(user)
    event = WebhookEventFactory(event_type="test.pair")
    processing.process_event(event.pk)
    content = client.get(change_url(event)).content.decode()
    assert f"<code>{PREFIX}.first</code>" in content
    assert "webhooks-replay-run" not in content
    assert client.post(replay_url(event), {"handler": f"{PREFIX}.first"}).status_code == 403


@pytest.mark.django_db
def test_the_changelist_filters_by_a_handlers_failed_runs(admin_client, pair):
    bad = failed_pair_event()
    good = WebhookEventFactory(event_type="test.pair")
    processing.process_event(good.pk)
    changelist = reverse("admin:webhooks_webhookevent_changelist")
    content = admin_client.get(changelist, {"failed_handler": f"{PREFIX}.second"}).content
    assert bad.event_id in content.decode() and good.event_id not in content.decode()
    content = admin_client.get(changelist, {"failed_handler": "x" * 1000}).content.decode()
    assert bad.event_id not in content
    assert f"{PREFIX}.second" in admin_client.get(changelist).content.decode()  # a choice
