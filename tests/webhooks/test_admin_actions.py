"""Operator actions on events: Replay and Mark ignored as buttons on the event's page, each
through a confirmation page (POST, CSRF, change permission), the changelist actions' confirmation
page with its count, and a ``LogEntry`` (the History tab) for every way of acting: admin button,
admin action, management command, operator API."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.admin.models import CHANGE
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from tests.history import history
from tests.webhooks.factories import WebhookEventFactory
from webhooks import services
from webhooks.models import WebhookEvent

Status = WebhookEvent.Status
CHANGELIST = "admin:webhooks_webhookevent_changelist"


def change_url(event):
    return reverse("admin:webhooks_webhookevent_change", args=[event.pk])


def button_url(event, name):
    return reverse(f"admin:webhooks_webhookevent_{name}", args=[event.pk])


@pytest.fixture
def failed(db):
    return WebhookEventFactory(status=Status.FAILED, attempts=8, last_error="KeyError: 'id'")


@pytest.fixture
def viewer(db, django_user_model):
    user = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_webhookevent"))
    client = Client()
    client.force_login(user)
    return client


# -- the buttons on the event's page ---------------------------------------------------------


def test_the_event_page_has_both_buttons_for_a_user_who_may_change(admin_client, failed):
    content = admin_client.get(change_url(failed)).content.decode()
    assert f'href="{button_url(failed, "replay")}"' in content
    assert f'href="{button_url(failed, "ignore")}"' in content


def test_a_finished_event_offers_replay_but_not_mark_ignored(admin_client, db):
    processed = WebhookEventFactory(status=Status.PROCESSED)
    content = admin_client.get(change_url(processed)).content.decode()
    assert button_url(processed, "replay") in content
    assert button_url(processed, "ignore") not in content


def test_replay_button_asks_for_confirmation_then_replays_and_records_it(
    admin_client, failed, on_commit
):
    url = button_url(failed, "replay")
    page = admin_client.get(url)
    content = page.content.decode()
    assert page.status_code == 200
    assert "Replay: this touches 1 event." in content
    assert failed.event_id in content
    assert 'name="csrfmiddlewaretoken"' in content and 'method="post"' in content
    failed.refresh_from_db()
    assert failed.status == Status.FAILED  # a GET changes nothing
    assert history(failed) == []

    with on_commit(execute=False) as callbacks:
        response = admin_client.post(url, {"reason": "bug 123 fixed"})
    assert response.status_code == 302 and response["Location"] == change_url(failed)
    failed.refresh_from_db()
    assert (failed.status, failed.attempts) == (Status.RECEIVED, 0)
    assert len(callbacks) == 1
    assert history(failed) == [("admin", CHANGE, "Replayed via admin: bug 123 fixed")]
    # The History tab shows it.
    page = admin_client.get(reverse("admin:webhooks_webhookevent_history", args=[failed.pk]))
    assert "Replayed via admin: bug 123 fixed" in page.content.decode()


def test_ignore_button_asks_for_confirmation_then_keeps_the_earlier_error(admin_client, failed):
    url = button_url(failed, "ignore")
    assert "Mark ignored: this touches 1 event." in admin_client.get(url).content.decode()
    response = admin_client.post(url, {"reason": "test event from staging"})
    assert response.status_code == 302
    failed.refresh_from_db()
    assert failed.status == Status.IGNORED
    assert failed.last_error == "KeyError: 'id'"
    assert history(failed) == [
        ("admin", CHANGE, "Marked ignored via admin: test event from staging")
    ]


def test_the_buttons_need_csrf(failed, django_user_model):
    admin = django_user_model.objects.create_superuser("boss", password="pw")
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)
    assert client.post(button_url(failed, "replay"), {}).status_code == 403
    failed.refresh_from_db()
    assert failed.status == Status.FAILED


def test_a_reason_longer_than_the_bound_is_refused_on_the_page(admin_client, failed):
    too_long = "x" * (services.REASON_MAX_CHARS + 1)
    response = admin_client.post(button_url(failed, "ignore"), {"reason": too_long})
    assert response.status_code == 200  # the confirmation page again, with the form's error
    assert "Ensure this value has at most 1000 characters" in response.content.decode()
    failed.refresh_from_db()
    assert failed.status == Status.FAILED and history(failed) == []


def test_a_view_only_user_cannot_replay_or_ignore_nor_see_the_buttons(viewer, failed):
    content = viewer.get(change_url(failed)).content.decode()
    assert button_url(failed, "replay") not in content
    for name in ("replay", "ignore"):
        assert viewer.get(button_url(failed, name)).status_code == 403
        assert viewer.post(button_url(failed, name), {"reason": "x"}).status_code == 403
    failed.refresh_from_db()
    assert failed.status == Status.FAILED and history(failed) == []
    # Nor through the changelist's actions, confirmed or not.
    form = {"action": "replay", "_selected_action": [failed.pk], "post": "yes"}
    viewer.post(reverse(CHANGELIST), form)
    failed.refresh_from_db()
    assert failed.status == Status.FAILED and history(failed) == []


def test_a_button_on_an_unknown_event_is_404(admin_client, db):
    assert admin_client.get("/admin/webhooks/webhookevent/424242/replay/").status_code == 404


# -- the changelist actions' confirmation ------------------------------------------------------


def test_bulk_confirmation_states_the_count_of_all_selected_across_pages(admin_client, db):
    events = [WebhookEventFactory(status=Status.FAILED) for _ in range(3)]
    WebhookEventFactory(status=Status.PROCESSED)
    form = {"action": "replay", "select_across": "1", "index": "0",
            "_selected_action": [events[0].pk]}  # fmt: skip
    url = reverse(CHANGELIST) + "?status__exact=failed"
    content = admin_client.post(url, form).content.decode()
    assert "Replay: this touches 3 events." in content
    assert 'name="select_across" value="1"' in content and 'name="post" value="yes"' in content
    response = admin_client.post(url, {**form, "post": "yes", "reason": "outage"}, follow=True)
    assert "3 events queued for replay." in response.content.decode()
    assert WebhookEvent.objects.filter(status=Status.RECEIVED).count() == 3
    for event in events:
        assert history(event) == [("admin", CHANGE, "Replayed via admin action: outage")]


def test_bulk_mark_ignored_records_only_the_events_it_changed(admin_client, failed, db):
    processed = WebhookEventFactory(status=Status.PROCESSED)
    form = {"action": "mark_ignored", "_selected_action": [failed.pk, processed.pk],
            "post": "yes"}  # fmt: skip
    admin_client.post(reverse(CHANGELIST), form)
    assert history(failed) == [("admin", CHANGE, "Marked ignored via admin action")]
    assert history(processed) == []


# -- commands and the operator API ----------------------------------------------------------


def test_replay_command_records_the_given_user_and_reason(failed, django_user_model):
    django_user_model.objects.create_user("oncall")
    call_command("replay_webhooks", "--user", "oncall", "--reason", "INC-42", stdout=StringIO())
    assert history(failed) == [("oncall", CHANGE, "Replayed via command replay_webhooks: INC-42")]


def test_replay_command_without_user_records_the_system_user(failed, django_user_model):
    call_command("replay_webhooks", stdout=StringIO())
    assert history(failed) == [
        (services.SYSTEM_USERNAME, CHANGE, "Replayed via command replay_webhooks")
    ]
    system = django_user_model.objects.get(username=services.SYSTEM_USERNAME)
    assert not system.is_active and not system.has_usable_password()


def test_replay_command_refuses_an_unknown_user_and_a_too_long_reason(failed):
    with pytest.raises(CommandError, match="no user named 'nobody'"):
        call_command("replay_webhooks", "--user", "nobody", stdout=StringIO())
    with pytest.raises(CommandError, match="longer than 1000"):
        call_command("replay_webhooks", "--reason", "x" * 1001, stdout=StringIO())
    failed.refresh_from_db()
    assert failed.status == Status.FAILED and history(failed) == []


def test_replay_command_dry_run_records_nothing(failed):
    call_command("replay_webhooks", "--dry-run", stdout=StringIO())
    assert history(failed) == []


@pytest.fixture
def api_user(db, django_user_model):
    user = django_user_model.objects.create_superuser("apiuser", password="pw")
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_the_operator_api_records_replay_bulk_replay_and_ignore(api_user, failed, db):
    base = "/api/webhook-events/"
    assert api_user.post(f"{base}{failed.pk}/replay/", {"reason": "retry after fix"},
                         format="json").status_code == 202  # fmt: skip
    other = WebhookEventFactory(status=Status.FAILED)
    assert api_user.post(f"{base}replay/", {"reason": "bulk"}, format="json").status_code == 202
    third = WebhookEventFactory(status=Status.RECEIVED)
    assert api_user.post(f"{base}{third.pk}/ignore/", {}, format="json").status_code == 200
    assert history(failed) == [("apiuser", CHANGE, "Replayed via operator API: retry after fix")]
    assert history(other) == [("apiuser", CHANGE, "Replayed via operator API: bulk")]
    assert history(third) == [("apiuser", CHANGE, "Marked ignored via operator API")]
    too_long = {"reason": "x" * 1001}
    assert api_user.post(f"{base}{failed.pk}/replay/", too_long, format="json").status_code == 400


def test_ignore_command_marks_failed_events_keeps_their_error_and_records_it(
    failed, django_user_model
):
    processed = WebhookEventFactory(status=Status.PROCESSED)
    received = WebhookEventFactory(status=Status.RECEIVED)
    django_user_model.objects.create_user("oncall")
    out = StringIO()
    call_command("ignore_webhooks", "--dry-run", stdout=out)
    assert "Would mark 1 event(s) ignored" in out.getvalue()
    assert history(failed) == []
    out = StringIO()
    call_command("ignore_webhooks", "--status", "any", "--user", "oncall", "--reason",
                 "vendor test events", stdout=out)  # fmt: skip
    assert "Marked 2 event(s) ignored; 1 left alone" in out.getvalue()
    failed.refresh_from_db()
    assert (failed.status, failed.last_error) == (Status.IGNORED, "KeyError: 'id'")
    message = "Marked ignored via command ignore_webhooks: vendor test events"
    assert history(failed) == history(received) == [("oncall", CHANGE, message)]
    assert history(processed) == []
    with pytest.raises(CommandError, match="--since must be before --until"):
        call_command("ignore_webhooks", "--since", "2026-02-01", "--until", "2026-01-01")
