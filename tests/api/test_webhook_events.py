"""The webhook events API: list with filters and cursor pagination, detail, replay, ignore,
bulk replay. Real PostgreSQL; replays publish to the real Redis broker."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.admin.models import LogEntry
from django.utils import timezone

from tests.webhooks.factories import WebhookEventFactory
from webhooks.models import WebhookEvent

pytestmark = pytest.mark.django_db

LIST = "/api/webhook-events/"
Status = WebhookEvent.Status


def detail(pk) -> str:
    return f"/api/webhook-events/{pk}/"


def ids(response) -> list[int]:
    return [row["id"] for row in response.json()["results"]]


# --- list ---------------------------------------------------------------------------------


def test_list_is_newest_first_without_bodies(api):
    now = timezone.now()
    old = WebhookEventFactory(received_at=now - dt.timedelta(hours=2))
    new = WebhookEventFactory(received_at=now - dt.timedelta(minutes=1))
    response = api.get(LIST)
    assert response.status_code == 200
    assert ids(response) == [new.pk, old.pk]
    row = response.json()["results"][0]
    assert row["event_id"] == new.event_id and row["status"] == "received"
    assert not {"body", "payload", "headers"} & set(row)


def test_filters_by_endpoint_status_type_and_event_id(api):
    a = WebhookEventFactory(endpoint="stripe", event_type="invoice.paid", status=Status.FAILED)
    b = WebhookEventFactory(endpoint="stripe", event_type="invoice.created")
    c = WebhookEventFactory(endpoint="github", event_type="pull_request.opened")
    d = WebhookEventFactory(endpoint="github", event_type="push", status=Status.FAILED)

    assert set(ids(api.get(LIST, {"endpoint": "github"}))) == {c.pk, d.pk}
    assert set(ids(api.get(LIST, {"status": "failed"}))) == {a.pk, d.pk}
    assert set(ids(api.get(LIST, {"type": "invoice.*"}))) == {a.pk, b.pk}
    assert set(ids(api.get(LIST, {"type": "pull_request"}))) == {c.pk}
    assert set(ids(api.get(LIST, {"endpoint": "stripe", "status": "failed"}))) == {a.pk}
    query = f"{LIST}?event_id={a.event_id}&event_id={c.event_id}"
    assert set(ids(api.get(query))) == {a.pk, c.pk}


def test_filters_by_since_and_until_dates_and_datetimes(api):
    day = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    before = WebhookEventFactory(received_at=day - dt.timedelta(seconds=1))
    first = WebhookEventFactory(received_at=day)
    noon = WebhookEventFactory(received_at=day + dt.timedelta(hours=12))
    next_day = WebhookEventFactory(received_at=day + dt.timedelta(days=1))

    assert set(ids(api.get(LIST, {"since": "2026-03-01"}))) == {first.pk, noon.pk, next_day.pk}
    # until is exclusive; a date means its midnight (as in replay_webhooks --until).
    assert set(ids(api.get(LIST, {"until": "2026-03-02"}))) == {before.pk, first.pk, noon.pk}
    window = {"since": "2026-03-01T06:00:00Z", "until": "2026-03-01T18:00:00+00:00"}
    assert ids(api.get(LIST, window)) == [noon.pk]
    # a naive datetime is in TIME_ZONE (UTC here)
    assert ids(api.get(LIST, {"since": "2026-03-01T12:00:00", "until": "2026-03-01T12:00:01"})) == [
        noon.pk
    ]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"status": "bogus"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-02-30"}, "since"),
        ({"until": "2026-13-01T00:00:00Z"}, "until"),
        ({"until": "x" * 500}, "until"),
        ({"since": "2026-03-02", "until": "2026-03-01"}, "until"),
        # Legal ISO 8601, but year 10000 or year 0 in UTC (a database error, or a 500, before).
        ({"since": "9999-12-31T23:59:59-23:59"}, "since"),
        ({"until": "9999-12-31T23:59:59-23:59"}, "until"),
        ({"since": "0001-01-01T00:00:00+14:00"}, "since"),
        ({"endpoint": "e" * 101}, "endpoint"),
        ({"stauts": "failed"}, "stauts"),
        ({"page_size": "0"}, "page_size"),
        ({"page_size": "abc"}, "page_size"),
        ({"page_size": "100000"}, "page_size"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ],
)
def test_bad_filter_values_are_400_naming_the_field(api, params, field):
    WebhookEventFactory()
    response = api.get(LIST, params)
    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body and body[field][0]


def test_dates_out_of_range_say_so_and_the_last_instant_is_fine(api):
    event = WebhookEventFactory()
    response = api.get(LIST, {"since": "9999-12-31T23:59:59-23:59"})
    assert response.status_code == 400
    assert response.json() == {
        "since": ["Enter a date or datetime within the years 1-9999 once in UTC."]
    }
    assert ids(api.get(LIST, {"until": "9999-12-31T23:59:59Z"})) == [event.pk]
    assert ids(api.get(LIST, {"since": "0001-01-01T00:00:00Z"})) == [event.pk]


def test_cursor_pagination_walks_every_event_once(api):
    start = timezone.now() - dt.timedelta(days=1)
    events = [
        # groups of three share a received_at: ties are ordered by id, never lost or repeated
        WebhookEventFactory.build(received_at=start + dt.timedelta(seconds=n // 3))
        for n in range(250)
    ]
    WebhookEvent.objects.bulk_create(events)
    expected = list(
        WebhookEvent.objects.order_by("-received_at", "-id").values_list("pk", flat=True)
    )
    assert len(expected) == 250

    seen: list[int] = []
    url, pages = f"{LIST}?page_size=40", 0
    while url:
        response = api.get(url)
        assert response.status_code == 200
        body = response.json()
        seen += [row["id"] for row in body["results"]]
        url, pages = body["next"], pages + 1
        if pages == 2:
            # events arriving mid-walk land before the cursor and do not shift later pages
            WebhookEventFactory.create_batch(5)
    assert pages == 7
    assert seen == expected
    assert len(set(seen)) == 250


def test_cursor_pagination_goes_back(api):
    WebhookEventFactory.create_batch(5)
    first = api.get(LIST, {"page_size": 2}).json()
    second = api.get(first["next"]).json()
    back = api.get(second["previous"]).json()
    assert [r["id"] for r in back["results"]] == [r["id"] for r in first["results"]]


# --- detail -------------------------------------------------------------------------------


def test_detail_has_payload_headers_error_and_body(api):
    event = WebhookEventFactory(
        status=Status.FAILED,
        last_error="KeyError: 'customer'",
        headers={"Stripe-Signature": "t=1,v1=abc", "Content-Type": "application/json"},
    )
    body = api.get(detail(event.pk)).json()
    assert body["payload"] == event.payload
    assert body["headers"] == event.headers
    assert body["last_error"] == "KeyError: 'customer'"
    assert body["body_encoding"] == "utf-8"
    assert body["body"] == bytes(event.body).decode()


def test_detail_of_a_binary_body_is_base64(api):
    event = WebhookEventFactory(body=b"\xff\xfe\x00binary")
    body = api.get(detail(event.pk)).json()
    assert body["body_encoding"] == "base64"
    assert body["body"] == "//4AYmluYXJ5"


def test_detail_never_shows_a_signing_secret(api, settings):
    event = WebhookEventFactory()
    text = api.get(detail(event.pk)).content.decode()
    for endpoint in settings.WEBHOOKS["ENDPOINTS"].values():
        for secret in endpoint["SECRETS"]:
            assert secret not in text


def test_signature_headers_only_for_users_who_may_change_events():
    from tests.api.conftest import client_for, make_user

    stripe = WebhookEventFactory(
        headers={"Stripe-Signature": "t=1,v1=stripesig0123", "Content-Type": "application/json"}
    )
    github = WebhookEventFactory(
        endpoint="github",
        headers={"X-Hub-Signature-256": "sha256=githubsig", "X-GitHub-Delivery": "delivery-89ab"},
    )
    retired = WebhookEventFactory(
        endpoint="retired",
        headers={"X-Retired-Sig": "retiredsig", "X-Retired-Id": "r-1", "User-Agent": "Retired/2"},
    )
    viewer = client_for(make_user("viewer", staff=True, perms=("webhooks.view_webhookevent",)))
    operator = client_for(make_user("operator", staff=True, perms=(
        "webhooks.view_webhookevent", "webhooks.change_webhookevent")))  # fmt: skip

    def headers(client, event):
        response = client.get(detail(event.pk))
        assert response.status_code == 200
        return response.json()["headers"]

    assert headers(viewer, stripe) == {"Content-Type": "application/json"}
    assert headers(viewer, github) == {"X-GitHub-Delivery": "delivery-89ab"}
    assert headers(viewer, retired) == {"User-Agent": "Retired/2"}  # the provider is unknown
    for event in (stripe, github, retired):
        assert headers(operator, event) == event.headers
    # The list never carries headers; the replay answer (change permission) carries them all.
    assert all("headers" not in row for row in viewer.get(LIST).json()["results"])
    replayed = operator.post(detail(github.pk) + "replay/")
    assert replayed.json()["headers"] == github.headers


@pytest.mark.parametrize("path", ["999999999/", "abc/", "-1/"])
def test_detail_of_an_unknown_event_is_404(api, path):
    assert api.get(LIST + path).status_code == 404


# --- replay and ignore --------------------------------------------------------------------


def test_replay_one_resets_the_event_and_publishes_it(
    api, broker, django_capture_on_commit_callbacks
):
    event = WebhookEventFactory(status=Status.FAILED, attempts=8, last_error="boom")
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(detail(event.pk) + "replay/")
    assert response.status_code == 202
    assert response.json()["status"] == "received" and response.json()["attempts"] == 0
    event.refresh_from_db()
    assert (event.status, event.attempts) == (Status.RECEIVED, 0)
    assert broker.queued() == [("webhooks.process_event", f"({event.pk},)")]


def test_replay_of_an_unknown_event_is_404(api, broker):
    assert api.post(LIST + "424242/replay/").status_code == 404
    assert broker.queued() == []


def test_ignore_marks_the_event_with_the_reason(api):
    event = WebhookEventFactory(status=Status.FAILED)
    response = api.post(detail(event.pk) + "ignore/", {"reason": "test data"}, format="json")
    assert response.status_code == 200
    event.refresh_from_db()
    assert event.status == Status.IGNORED
    assert event.last_error == ""  # kept as it was; the reason is in the History
    [entry] = LogEntry.objects.filter(object_id=str(event.pk))
    assert entry.change_message == "Marked ignored via operator API: test data"
    assert entry.user.get_username() == "root"
    assert response.json()["status"] == "ignored"


def test_ignore_without_a_body_works(api):
    event = WebhookEventFactory()
    assert api.post(detail(event.pk) + "ignore/").status_code == 200
    event.refresh_from_db()
    assert event.status == Status.IGNORED


@pytest.mark.parametrize("status", [Status.PROCESSED, Status.IGNORED])
def test_ignore_of_a_finished_event_is_409(api, status):
    event = WebhookEventFactory(status=status)
    response = api.post(detail(event.pk) + "ignore/", {"reason": "x"}, format="json")
    assert response.status_code == 409
    assert status in response.json()["detail"]
    event.refresh_from_db()
    assert event.status == status


def test_ignore_with_an_oversized_reason_is_400(api):
    event = WebhookEventFactory()
    response = api.post(detail(event.pk) + "ignore/", {"reason": "r" * 1001}, format="json")
    assert response.status_code == 400 and "reason" in response.json()


# --- bulk replay --------------------------------------------------------------------------

BULK = LIST + "replay/"


def test_bulk_replay_dry_run_counts_and_changes_nothing(api, broker):
    failed = WebhookEventFactory.create_batch(3, status=Status.FAILED)
    WebhookEventFactory(status=Status.PROCESSED)
    response = api.post(BULK, {"dry_run": True}, format="json")
    assert (response.status_code, response.json()) == (200, {"count": 3})
    assert {e.status for e in WebhookEvent.objects.filter(pk__in=[e.pk for e in failed])} == {
        Status.FAILED
    }
    assert broker.queued() == []


def test_bulk_replay_defaults_to_failed_events_and_publishes_them(
    api, broker, django_capture_on_commit_callbacks
):
    failed = WebhookEventFactory.create_batch(3, status=Status.FAILED, attempts=8)
    done = WebhookEventFactory(status=Status.PROCESSED)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(BULK, {}, format="json")
    assert (response.status_code, response.json()) == (202, {"count": 3})
    for event in failed:
        event.refresh_from_db()
        assert (event.status, event.attempts) == (Status.RECEIVED, 0)
    done.refresh_from_db()
    assert done.status == Status.PROCESSED
    assert sorted(broker.queued()) == sorted(
        ("webhooks.process_event", f"({e.pk},)") for e in failed
    )


def test_bulk_replay_uses_the_list_filters_and_limit(api, django_capture_on_commit_callbacks):
    now = timezone.now()
    old = [
        WebhookEventFactory(
            endpoint="github",
            event_type="push",
            status=Status.PROCESSED,
            received_at=now - dt.timedelta(days=3, minutes=n),
        )
        for n in range(4)
    ]
    WebhookEventFactory(endpoint="github", event_type="push", status=Status.PROCESSED)
    WebhookEventFactory(endpoint="stripe", event_type="push", status=Status.PROCESSED)
    body = {
        "endpoint": "github",
        "status": "processed",
        "type": "push",
        "until": (now - dt.timedelta(days=1)).date().isoformat(),
        "limit": 3,
    }
    assert api.post(BULK, {**body, "dry_run": True}, format="json").json() == {"count": 3}
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(BULK, body, format="json").json() == {"count": 3}
    replayed = set(WebhookEvent.objects.filter(status=Status.RECEIVED).values_list("pk", flat=True))
    # the limit takes the oldest first
    assert replayed == {e.pk for e in sorted(old, key=lambda e: e.received_at)[:3]}


def test_bulk_replay_by_event_ids(api, django_capture_on_commit_callbacks):
    a, b, _ = WebhookEventFactory.create_batch(3, status=Status.FAILED)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(BULK, {"event_id": [a.event_id, b.event_id]}, format="json")
    assert response.json() == {"count": 2}
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(BULK, {"event_id": "nope", "status": "received"}, format="json")
    assert response.json() == {"count": 0}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "done"}, "status"),
        ({"since": "last week"}, "since"),
        ({"since": "9999-12-31T23:59:59-23:59"}, "since"),
        ({"until": "0001-01-01T00:00:00+14:00"}, "until"),
        ({"limit": 0}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"dry_run": "perhaps"}, "dry_run"),
        ({"event_id": [1, {"a": 2}]}, "event_id"),
        ({"statuss": "failed"}, "statuss"),
    ],
)
def test_bulk_replay_with_bad_values_is_400_and_replays_nothing(api, broker, body, field):
    WebhookEventFactory(status=Status.FAILED)
    response = api.post(BULK, body, format="json")
    assert response.status_code == 400 and field in response.json()
    assert WebhookEvent.objects.filter(status=Status.FAILED).count() == 1
    assert broker.queued() == []


def test_bulk_replay_with_a_malformed_json_body_is_400(api):
    response = api.post(BULK, data="{not json", content_type="application/json")
    assert response.status_code == 400


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_events_cannot_be_edited_or_deleted(api, method):
    event = WebhookEventFactory()
    assert getattr(api, method)(detail(event.pk), {}, format="json").status_code == 405
    assert WebhookEvent.objects.filter(pk=event.pk).exists()


# --- the broker is down -------------------------------------------------------------------


def test_replay_with_the_broker_down_still_answers_and_keeps_the_event_queued(
    api, broker_down, django_capture_on_commit_callbacks, caplog
):
    """The event is `received` in the database (the outbox); the sweeper publishes it later."""
    event = WebhookEventFactory(status=Status.FAILED, attempts=8)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(detail(event.pk) + "replay/")
        bulk = api.post(BULK, {"status": "received"}, format="json")
    assert response.status_code == 202
    assert bulk.status_code == 202 and bulk.json() == {"count": 1}
    event.refresh_from_db()
    assert (event.status, event.attempts) == (Status.RECEIVED, 0)
    assert "could not enqueue" in caplog.text
