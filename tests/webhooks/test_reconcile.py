"""``reconcile_webhooks`` (and ``webhooks.reconcile``): undelivered events listed from a fake Stripe
over real HTTP (``integrations.testing.stripe.FakeStripe``), through ``StripeService`` (its
breaker, timeouts and retries), stored on PostgreSQL by the receive path's insert.

Nothing is patched: the lister is the one ``integrations`` registers in ``tether.vendor_events``
(a test that needs none unregisters it and puts it back)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from io import StringIO
from typing import Any

import psycopg
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from integrations.testing import InstantBackoff, Reply, force_breaker, instant_backoff
from integrations.testing.stripe import FakeStripe, query_params
from tests import postgres
from tests.integrations.vendors.conftest import API_KEY, stripe_settings
from tests.servers import ROOT, subprocess_env
from tether.vendor_events import (
    ListingFailed,
    event_lister,
    register_event_lister,
    unregister_event_lister,
)
from webhooks import on, processing
from webhooks.models import WebhookEvent
from webhooks.reconciling import ReconcileUnavailable, reconcile
from webhooks.tasks import reconcile as reconcile_task
from webhooks.testing import post_webhook

pytestmark = pytest.mark.django_db

Source = WebhookEvent.Source
#: A type only this module's handler matches (the demo app handles payment_intent.succeeded).
HANDLED = "payment_intent.created"


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture
def backoff() -> Iterator[InstantBackoff]:
    with instant_backoff() as clock:
        yield clock


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def configure(fake, backoff) -> Iterator[Any]:
    """``configure(**overrides)``: the "stripe" service pointed at the fake (short timeouts)."""
    active: list[Any] = []

    def apply(**overrides: Any) -> None:
        while active:
            active.pop().disable()
        manager = override_settings(INTEGRATIONS=stripe_settings(fake.base_url, **overrides))
        manager.enable()
        active.append(manager)

    apply()
    yield apply
    while active:
        active.pop().disable()


@pytest.fixture
def handled(handlers):
    """A handler of ``payment_intent.*`` on the stripe endpoint (what reconcile lists for)."""
    seen: list[str] = []

    @on("stripe", "payment_intent.*")
    def record(event):
        seen.append(event.event_id)

    return seen


@pytest.fixture
def no_lister() -> Iterator[None]:
    """No lister of Stripe's events: a project without ``integrations``, as reconcile sees it."""
    saved = unregister_event_lister("stripe")
    yield
    if saved is not None:
        register_event_lister("stripe", saved)


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("reconcile_webhooks", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def fails(*args: str) -> tuple[CommandError, str, str]:
    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("reconcile_webhooks", *args, stdout=out, stderr=err)
    return caught.value, out.getvalue(), err.getvalue()


def events_requests(fake: FakeStripe) -> list[dict[str, str]]:
    return [dict(query_params(r)) for r in fake.requests if r.path == "/v1/events"]


def stored(**filters: Any) -> list[WebhookEvent]:
    return list(WebhookEvent.objects.filter(endpoint="stripe", **filters).order_by("id"))


# -- what it stores ------------------------------------------------------------------------------


def test_undelivered_handled_events_are_stored_marked_and_enqueued(
    fake, configure, handled, on_commit
):
    first = fake.add_event(HANDLED)
    second = fake.add_event("payment_intent.payment_failed")
    fake.add_event(HANDLED, delivered=True)  # delivered: not listed
    fake.add_event("customer.created")  # no handler matches: not stored

    with on_commit(execute=False) as callbacks:
        out, err = run("stripe", "--since", (timezone.now() - timedelta(days=2)).isoformat())

    assert (
        "stripe listed 3 undelivered event(s); stored and enqueued 2, already stored 0, "
        "not handled 1, refused 0." in out
    )
    assert err == ""
    events = stored()
    assert {e.event_id for e in events} == {first["id"], second["id"]}
    for event in events:
        assert event.source == Source.RECONCILE
        assert event.status == WebhookEvent.Status.RECEIVED
        assert event.headers == {}
        listed = first if event.event_id == first["id"] else second
        assert event.payload == listed
        assert json.loads(bytes(event.body)) == listed
        assert event.occurred_at == datetime.fromtimestamp(listed["created"], UTC)
    assert len(callbacks) >= 2  # each new event is published after its insert commits
    [query] = events_requests(fake)
    assert query["delivery_success"] == "false"
    assert query["limit"] == "100"
    assert int(query["created[gte]"]) <= int(timezone.now().timestamp()) - 2 * 86_400 + 5
    assert fake.requests[0].header("Authorization") == f"Bearer {API_KEY}"


def test_reconciled_events_are_processed_like_deliveries(fake, configure, handled, on_commit):
    listed = fake.add_event(HANDLED)
    with on_commit(execute=False):
        run("stripe")
    [event] = stored()
    assert processing.process_event(event.pk) == WebhookEvent.Status.PROCESSED
    assert handled == [listed["id"]]


def test_an_event_that_arrived_meanwhile_is_not_stored_twice(
    fake, configure, handled, client, on_commit
):
    listed = fake.add_event(HANDLED)
    late = fake.add_event(HANDLED)
    with on_commit(execute=False):
        # Stripe's late retry of the first arrives before reconcile runs: a signed delivery.
        response = post_webhook(client, "stripe", listed)
    assert response.status_code == 200

    out, _ = run("stripe")

    assert "stored and enqueued 1, already stored 1" in out
    by_id = {e.event_id: e for e in stored()}
    assert set(by_id) == {listed["id"], late["id"]}
    assert by_id[listed["id"]].source == Source.DELIVERY  # the delivery's row is kept as is
    assert by_id[late["id"]].source == Source.RECONCILE
    # Running again lists the same events (Stripe still says undelivered): nothing new.
    out, _ = run("stripe")
    assert "stored and enqueued 0, already stored 2" in out
    assert len(stored()) == 2


# Transactional: hundreds of rows inserted and rolled back would leave the events table's file
# that much larger (dead rows), which changes the planner's estimates for the tests that read
# its generic plans (test_statements.py); a transactional test's flush truncates it instead.
@pytest.mark.django_db(transaction=True)
def test_pages_are_followed_to_the_end(fake, configure, handled):
    base = int(timezone.now().timestamp()) - 3600
    ids = [fake.add_event(HANDLED, created=base + n)["id"] for n in range(230)]

    out, _ = run("stripe")

    assert "listed 230 undelivered event(s); stored and enqueued 230" in out
    assert {e.event_id for e in stored()} == set(ids)
    queries = events_requests(fake)
    assert len(queries) == 3
    assert "starting_after" not in queries[0]
    assert queries[1]["starting_after"] == ids[-100]  # newest first: the 100th newest
    assert queries[2]["starting_after"] == ids[-200]


def test_dry_run_counts_and_stores_nothing(fake, configure, handled, client, on_commit):
    already = fake.add_event(HANDLED)
    fake.add_event(HANDLED)
    with on_commit(execute=False):
        post_webhook(client, "stripe", already)

    out, _ = run("stripe", "--dry-run")

    assert "(dry run: nothing stored)" in out
    assert "would store 1, already stored 1" in out
    assert [e.event_id for e in stored()] == [already["id"]]


def test_since_is_sent_as_created_gte(fake, configure, handled):
    now = int(timezone.now().timestamp())
    fake.add_event(HANDLED, created=now - 5 * 86_400)
    recent = fake.add_event(HANDLED, created=now - 3600)
    since = datetime.fromtimestamp(now - 86_400, UTC)

    report = reconcile("stripe", since=since)

    assert (report.listed, report.stored) == (1, 1)
    assert [e.event_id for e in stored()] == [recent["id"]]
    assert events_requests(fake)[0]["created[gte]"] == str(int(since.timestamp()))


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("since", "message"),
    [
        ("2999-01-01", "is in the future"),
        ("2020-01-01", "older than stripe keeps undelivered events listable (30 days)"),
    ],
)
def test_a_since_outside_the_window_is_a_usage_error_and_nothing_is_listed(
    fake, configure, handled, since, message
):
    error, _, _ = fails("stripe", "--since", since)
    assert error.returncode == 2
    assert message in str(error)
    assert fake.requests == []


@pytest.mark.parametrize(
    ("since", "message"),
    [
        ("yesterday", "is not an ISO 8601 date"),
        ("2026-13-45", "is not an ISO 8601 date"),
        ("9999-12-31T23:59:59-23:59", "outside"),
        ("x" * 10_000, "too long for a date"),
        ("", "is not an ISO 8601 date"),
    ],
)
def test_a_malformed_since_is_refused_by_the_parser(fake, configure, handled, since, message):
    error, _, _ = fails("stripe", "--since", since)
    assert str(error).startswith("Error: argument --since:")  # argparse's usage error: exit 2
    assert message in str(error)
    assert len(str(error)) < 400
    assert fake.requests == []


def test_since_just_inside_the_window_is_accepted(fake, configure, handled):
    since = (timezone.now() - timedelta(days=30) + timedelta(minutes=1)).isoformat()
    out, _ = run("stripe", "--since", since)
    assert "listed 0 undelivered event(s)" in out


def test_an_unknown_endpoint_is_a_usage_error(fake, configure):
    error, _, _ = fails("nope")
    assert error.returncode == 2
    assert "unknown endpoint 'nope'" in str(error) and "stripe" in str(error)
    assert fake.requests == []


def test_an_endpoint_whose_provider_cannot_list_says_so(fake, configure):
    error, _, _ = fails("github")
    assert error.returncode == 6
    assert "endpoint 'github' (GitHubProvider) cannot be reconciled" in str(error)
    assert fake.requests == []


def test_without_a_lister_reconcile_says_what_it_needs(fake, configure, handled, no_lister):
    error, _, _ = fails("stripe")
    assert error.returncode == 6
    message = str(error)
    assert "needs a lister of stripe's events" in message
    assert "add 'integrations' to INSTALLED_APPS" in message
    assert "register_event_lister('stripe', ...)" in message
    assert fake.requests == []
    with pytest.raises(ReconcileUnavailable):
        reconcile("stripe")


def test_a_project_may_register_its_own_lister(handled, no_lister):
    listed = {"id": "evt_own_1", "object": "event", "type": HANDLED, "created": 1, "data": {}}
    register_event_lister("stripe", lambda *, since: iter([listed]))
    assert event_lister("stripe") is not None
    report = reconcile("stripe")
    assert (report.listed, report.stored) == (1, 1)
    assert stored()[0].event_id == "evt_own_1"


def test_no_api_key_is_a_clear_error(fake, configure, handled):
    configure(API_KEY="")
    error, _, _ = fails("stripe")
    assert error.returncode == 5
    assert "Stripe has no API key" in str(error)


# -- the vendor failing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("server_error", "api_error (HTTP 500)"),
        ("bad_gateway", "HTTP 502"),
        ("garbage", "stripe.list_events"),
        ("drop", "Stripe could not be reached"),
        ("authentication", "HTTP 401"),
        ("rate_limited", "HTTP 429"),
    ],
)
def test_a_failing_vendor_stops_the_run_with_a_clear_error(
    fake, configure, handled, kind, expected
):
    fake.add_event(HANDLED)
    fake.fail(kind, times=None, path="/v1/events")

    error, out, _ = fails("stripe")

    assert error.returncode == 5
    assert "stopped part way: listing stripe's undelivered events failed" in str(error)
    assert expected in str(error)
    assert API_KEY not in str(error) and API_KEY[-10:] not in str(error)
    assert "listed 0" in out
    assert stored() == []


def test_a_slow_vendor_times_out(fake, configure, handled):
    configure(
        TIMEOUT={"READ": 0.3},
        RETRY={"MAX_ATTEMPTS": 2, "DEADLINE": 2.0},
    )
    fake.add_event(HANDLED)
    fake.fail("hang", times=None, path="/v1/events")
    error, _, _ = fails("stripe")
    assert error.returncode == 5
    assert "did not answer in time" in str(error)


def test_a_transient_failure_is_retried_by_the_client(fake, configure, handled):
    listed = fake.add_event(HANDLED)
    fake.fail("server_error", times=1, path="/v1/events")
    out, _ = run("stripe")
    assert "stored and enqueued 1" in out
    assert [e.event_id for e in stored()] == [listed["id"]]
    assert len(events_requests(fake)) == 2


def test_an_open_breaker_fails_fast(fake, configure, handled):
    fake.add_event(HANDLED)
    force_breaker("stripe", "forced_open")
    error, _, _ = fails("stripe")
    assert error.returncode == 5
    assert "circuit" in str(error).lower()
    assert fake.requests == []


@pytest.mark.django_db(transaction=True)  # as test_pages_are_followed_to_the_end
def test_a_failure_part_way_keeps_what_was_stored_and_a_rerun_completes(fake, configure, handled):
    base = int(timezone.now().timestamp()) - 3600
    ids = [fake.add_event(HANDLED, created=base + n)["id"] for n in range(150)]
    # The first page answers; every later page fails (five attempts: more than the retries).
    fake.route("GET", "/v1/events", fake.answer_events, Reply.server_error(500))

    error, out, _ = fails("stripe")

    assert error.returncode == 5
    assert "listed 100" in out and "stored and enqueued 100" in out
    assert len(stored()) == 100
    fake.route("GET", "/v1/events", fake.answer_events)  # the vendor is back
    out, _ = run("stripe")
    assert "stored and enqueued 50, already stored 100" in out
    assert {e.event_id for e in stored()} == set(ids)


# -- hostile answers ------------------------------------------------------------------------------


def page(data: Any, has_more: Any = False) -> Reply:
    return Reply.json({"object": "list", "data": data, "has_more": has_more, "url": "/v1/events"})


def listed_event(event_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "type": HANDLED,
        "created": int(timezone.now().timestamp()),
        "data": {"object": {"id": "pi_1"}},
        **fields,
    }


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (page([listed_event(f"evt_{n}") for n in range(101)]), "101 events for a page of 100"),
        (page([], has_more=True), "has_more without an event id"),
        (page([listed_event("evt_1"), "x"], has_more=True), "has_more without an event id"),
        (page("not a list"), "field 'data' of Stripe's answer is not list"),
        (page([], has_more="yes"), "'has_more' of Stripe's answer is missing or not a boolean"),
        (Reply.json([1, 2, 3]), "stripe.list_events"),
        (Reply.text('{"data": [' * 5000), "stripe.list_events"),
    ],
)
def test_a_hostile_page_is_refused_whole(fake, configure, handled, answer, expected):
    fake.route("GET", "/v1/events", answer)
    error, _, _ = fails("stripe")
    assert error.returncode == 5
    assert expected in str(error)
    assert stored() == []


def test_a_page_repeating_itself_does_not_loop(fake, configure, handled):
    fake.route("GET", "/v1/events", page([listed_event("evt_same")], has_more=True))
    error, _, _ = fails("stripe")
    assert error.returncode == 5
    assert "ends on an event already listed" in str(error)
    assert len(events_requests(fake)) == 2
    assert [e.event_id for e in stored()] == ["evt_same"]


@pytest.mark.parametrize("chunked", [False, True])
def test_an_answer_over_the_response_limit_is_refused(fake, configure, handled, chunked):
    configure(MAX_RESPONSE_BYTES=100_000)
    fake.route("GET", "/v1/events", Reply.large(5_000_000, chunked=chunked))
    error, _, _ = fails("stripe")
    assert error.returncode == 5
    assert "MAX_RESPONSE_BYTES (100000 bytes)" in str(error)
    assert stored() == []


def test_malformed_and_oversized_events_are_refused_one_by_one(fake, configure, handled):
    deep: Any = {}
    for _ in range(80):
        deep = {"a": deep}
    good = listed_event("evt_good")
    fake.route(
        "GET",
        "/v1/events",
        page(
            [
                listed_event("evt_big", data={"object": {"blob": "x" * 2_000_000}}),
                listed_event("evt_deep", data={"object": deep}),
                listed_event("evt_notype", type=None),
                listed_event("e" * 300),
                {"object": "event", "type": HANDLED},
                "not an object",
                good,
            ]
        ),
    )
    with override_settings(
        WEBHOOKS={
            "ENDPOINTS": {
                "stripe": {
                    "PROVIDER": "stripe",
                    "SECRETS": ["whsec_test_stripe_secret"],
                    "MAX_BODY_BYTES": 1_000_000,
                }
            }
        }
    ):
        error, out, err = fails("stripe")

    assert error.returncode == 5
    assert "6 listed event(s) refused" in str(error)
    assert "listed 7 undelivered event(s); stored and enqueued 1" in out
    assert [e.event_id for e in stored()] == ["evt_good"]
    assert "refused event 'evt_big': payload_too_large" in err
    assert "refused event 'evt_deep': malformed_payload" in err
    assert "refused event 'evt_notype': malformed_payload" in err
    assert "refused event '?': malformed_payload" in err
    assert "x" * 100 not in err  # a refused event's content is never echoed


@postgres.DATA_ERRORS
def test_an_event_the_database_refuses_is_refused_alone(fake, configure, handled):
    """PostgreSQL's jsonb takes no NUL character: a DataError on the insert, that event only."""
    fake.route(
        "GET",
        "/v1/events",
        page(
            [
                listed_event("evt_nul", data={"object": {"note": "a\u0000b"}}),
                listed_event("evt_fine"),
            ]
        ),
    )
    error, out, err = fails("stripe")
    assert error.returncode == 5
    assert "stored and enqueued 1, already stored 0, not handled 0, refused 1" in out
    assert "refused event 'evt_nul': malformed_payload (the event cannot be stored" in err
    assert [e.event_id for e in stored()] == ["evt_fine"]


@postgres.SQL
@pytest.mark.parametrize("dry_run", [False, True])
def test_the_database_failing_stops_the_run(fake, configure, handled, dry_run):
    """A real PostgreSQL failure of the connection class: another session holds the events
    table locked, and this one gives up waiting (``lock_timeout``: ``LockNotAvailable``, an
    ``OperationalError``) on the insert, or on the dry run's lookup."""
    fake.add_event(HANDLED)
    fake.add_event(HANDLED)
    holder = psycopg.connect(**connection.get_connection_params(), autocommit=False)
    try:
        holder.execute("SET lock_timeout = '5s'")
        holder.execute("LOCK TABLE webhooks_webhookevent IN ACCESS EXCLUSIVE MODE")
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '200ms'")
        error, out, _ = fails("stripe", *(["--dry-run"] if dry_run else []))
    finally:
        holder.rollback()
        holder.close()
    assert error.returncode == 5
    assert "stopped part way: the database failed (OperationalError)" in str(error)
    assert "listed 1 undelivered event(s)" in out  # it stopped at the first


# -- the Celery task ------------------------------------------------------------------------------


def test_the_task_reconciles_as_the_command_does(fake, configure, handled):
    listed = fake.add_event(HANDLED)
    result = reconcile_task.apply(args=["stripe"]).get()
    assert result["stored"] == 1 and result["error"] is None
    assert [e.event_id for e in stored()] == [listed["id"]]


def test_the_task_reports_what_stops_it(fake, configure, handled, no_lister, caplog):
    result = reconcile_task.apply(args=["stripe"]).get()
    assert "needs a lister of stripe's events" in result["error"]
    assert "cannot run" in caplog.text


def test_the_task_refuses_an_unknown_endpoint(fake, configure, caplog):
    result = reconcile_task.apply(args=["nope"]).get()
    assert result == {"endpoint": "nope", "error": "unknown endpoint"}
    assert "reconcile 'nope' cannot run: no such endpoint" in caplog.text
    assert fake.requests == []


def test_the_task_logs_a_vendor_failure(fake, configure, handled, caplog):
    fake.fail("server_error", times=None, path="/v1/events")
    result = reconcile_task.apply(args=["stripe"]).get()
    assert "HTTP 500" in result["error"]
    assert "did not complete" in caplog.text


def test_listing_failed_carries_whether_to_retry():
    assert ListingFailed("x").retryable is True
    assert ListingFailed("x", retryable=False).retryable is False


# -- from the shell ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["stripe", "--since", "yesterday"], 2, "argument --since"),
        (["stripe", "--since", "2020-01-01"], 2, "older than stripe keeps"),
        (["nope"], 2, "unknown endpoint 'nope'"),
        (["github"], 6, "cannot be reconciled"),
    ],
)
def test_exit_codes_from_the_shell(args, code, message):
    result = subprocess.run(
        [sys.executable, "manage.py", "reconcile_webhooks", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env=subprocess_env(extra={"DJANGO_SETTINGS_MODULE": "tests.settings"}),
    )  # fmt: skip
    assert result.returncode == code, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# -- where operators see it ------------------------------------------------------------------------


def test_operators_see_and_filter_by_source(fake, configure, handled, client, admin_client):
    listed = fake.add_event(HANDLED)
    delivered = fake.add_event(HANDLED, delivered=True)
    post_webhook(client, "stripe", delivered)
    run("stripe")
    reconciled = WebhookEvent.objects.get(event_id=listed["id"])

    page = admin_client.get("/admin/webhooks/webhookevent/", {"source__exact": "reconcile"})
    assert page.status_code == 200
    html = page.content.decode()
    assert listed["id"] in html and delivered["id"] not in html
    detail = admin_client.get(f"/admin/webhooks/webhookevent/{reconciled.pk}/change/")
    assert "fetched from the vendor&#x27;s API (reconcile)" in detail.content.decode()
    answer = admin_client.get(f"/api/webhook-events/{reconciled.pk}/")
    assert answer.json()["source"] == "reconcile"
