"""The receive statement prepared once per connection (``webhooks.storage.statement_cursor``), its
generic plan (why migration 0002 dropped the (endpoint, status) index), psycopg's
``prepare_threshold``, ``queueing.celery_is_eager`` and the ``PREPARED_STATEMENTS`` check.

``pg_prepared_statements`` is per session: it is read on Django's own connection, the one the
test client's requests use. Tests that need a session of their own close that connection first
(hence ``transaction=True``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from django.conf import settings
from django.core import checks
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from psycopg.types.json import Jsonb

from tests import postgres
from tests.webhooks.eager import configured_celery_app, eager_setting_set_quietly
from webhooks import conf, queueing, storage
from webhooks.models import WebhookEvent
from webhooks.testing import build_request, send_request

RECEIVE_PREFIX = 'WITH inserted AS (INSERT INTO "webhooks_webhookevent"'
UNIQUE_INDEX = "webhooks_event_endpoint_event_id_uniq"
DIGEST_INDEX = "webhooks_event_endpoint_digest_uniq"
DROPPED_INDEX = "webhooks_ev_endpoint_st_idx"


def webhooks_with(**overrides: Any) -> dict[str, Any]:
    """The test settings' WEBHOOKS (its endpoints included) with ``overrides``."""
    return {**settings.WEBHOOKS, **overrides}


def prepared_statements() -> list[tuple[str, int]]:
    """This session's prepared statements: (text, times executed), oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT statement, generic_plans + custom_plans FROM pg_prepared_statements "
            "ORDER BY prepare_time, name"
        )
        return cursor.fetchall()


def receive_statements() -> list[tuple[str, int]]:
    return [row for row in prepared_statements() if row[0].startswith(RECEIVE_PREFIX)]


def fresh_session() -> Any:
    """Close Django's connection and open a new one (a new session); its psycopg connection."""
    connection.close()
    connection.ensure_connection()
    return connection.connection


def deliver(client, request) -> str:
    response = send_request(client, request)
    assert response.status_code == 200, response.content
    return response.json()["status"]


# -- the statement is prepared once per connection --------------------------------------------


@postgres.STATEMENTS
@pytest.mark.django_db(transaction=True)
def test_deliveries_prepare_the_receive_statement_once_per_connection(client):
    fresh_session()
    assert prepared_statements() == []
    requests = [build_request("stripe") for _ in range(3)]
    statuses = [deliver(client, request) for request in requests]
    statuses.append(deliver(client, requests[0]))  # a duplicate runs the same statement
    assert statuses == ["accepted", "accepted", "accepted", "duplicate"]
    # One statement, executed by all four deliveries; nothing else was prepared (the ORM's
    # queries never are: the raised prepare_threshold is never reached).
    [(text, executions)] = prepared_statements()
    assert text.startswith(RECEIVE_PREFIX)
    assert executions == 4
    assert WebhookEvent.objects.count() == 3


@postgres.STATEMENTS
@pytest.mark.django_db(transaction=True)
def test_a_new_session_prepares_the_statement_again(client):
    fresh_session()
    deliver(client, build_request("github"))
    assert len(receive_statements()) == 1
    fresh_session()
    assert receive_statements() == []
    deliver(client, build_request("github"))
    assert [executions for _, executions in receive_statements()] == [1]


@postgres.STATEMENTS
@pytest.mark.django_db(transaction=True)
def test_nothing_is_prepared_when_prepared_statements_is_false(client):
    fresh_session()
    with override_settings(WEBHOOKS=webhooks_with(PREPARED_STATEMENTS=False)):
        request = build_request("stripe")
        statuses = [deliver(client, request) for _ in range(3)]
        statuses.append(deliver(client, build_request("partner")))
    assert statuses == ["accepted", "duplicate", "duplicate", "accepted"]
    assert prepared_statements() == []
    assert WebhookEvent.objects.count() == 2


@postgres.STATEMENTS
@pytest.mark.django_db(transaction=True)
def test_captured_queries_are_not_prepared_and_show_the_statement_text(client):
    fresh_session()
    request = build_request("stripe")
    with CaptureQueriesContext(connection) as captured:
        statuses = [deliver(client, request), deliver(client, request)]
    assert statuses == ["accepted", "duplicate"]
    assert prepared_statements() == []
    receives = [query["sql"] for query in captured.captured_queries if "INSERT" in query["sql"]]
    assert len(receives) == 2
    for sql in receives:
        assert sql.startswith(RECEIVE_PREFIX)
    # Outside the capture, the same session prepares it as usual.
    assert deliver(client, request) == "duplicate"
    assert len(receive_statements()) == 1


@postgres.STATEMENTS
@pytest.mark.django_db(transaction=True)
def test_deliveries_work_after_psycopg_drops_its_prepared_statements(client):
    """psycopg deallocates every prepared statement of a connection on a rollback (a savepoint's
    too) and on a ``DEALLOCATE ALL`` run through it; the next delivery prepares ours again."""
    fresh_session()
    request = build_request("stripe")
    assert deliver(client, request) == "accepted"
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        WebhookEvent.objects.count()
        1 / 0  # noqa: B018
    assert receive_statements() == []
    assert deliver(client, request) == "duplicate"
    with transaction.atomic():
        with pytest.raises(ZeroDivisionError), transaction.atomic():
            1 / 0  # noqa: B018
        assert receive_statements() == []
    assert deliver(client, build_request("stripe")) == "accepted"
    with connection.cursor() as cursor:
        cursor.execute("DEALLOCATE ALL")
    assert deliver(client, request) == "duplicate"
    assert [executions for _, executions in receive_statements()] == [1]
    assert WebhookEvent.objects.count() == 2


@postgres.STATEMENTS
@pytest.mark.django_db(transaction=True)
def test_events_with_and_without_a_timestamp_share_the_statement(client):
    fresh_session()
    statuses = [deliver(client, build_request(name)) for name in ("stripe", "github", "acme")]
    assert statuses == ["accepted"] * 3
    rows = WebhookEvent.objects.values_list("endpoint", "occurred_at")
    assert sorted((name, at is None) for name, at in rows) == [
        ("acme", False), ("github", True), ("stripe", False)
    ]  # fmt: skip
    assert [executions for _, executions in receive_statements()] == [3]


@postgres.STATEMENTS
@pytest.mark.django_db(transaction=True)
def test_events_with_and_without_a_content_digest_share_the_statement(client):
    """A NULL digest (Stripe, Standard Webhooks, hmac with a signed id) is bound as ``bytea``,
    as a digest is: one prepared statement for every provider, replays included."""
    fresh_session()
    github = build_request("github")
    replayed = replace(github, headers={**github.headers, "X-GitHub-Delivery": "replayed-1"})
    requests = [build_request("stripe"), github, replayed, build_request("partner")]
    statuses = [deliver(client, request) for request in requests]
    assert statuses == ["accepted", "accepted", "duplicate", "accepted"]
    digests = dict(WebhookEvent.objects.values_list("endpoint", "content_digest"))
    assert digests["stripe"] is None and digests["partner"] is None
    assert bytes(digests["github"]) == hashlib.sha256(github.body).digest()
    assert [executions for _, executions in receive_statements()] == [4]


# -- results are the same with and without preparing ------------------------------------------


@postgres.STATEMENTS
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "unprepared"])
def test_new_and_duplicate_results_are_unchanged(client, caplog, prepared):
    fresh_session()
    first = build_request("stripe", {"id": "evt_stmt", "type": "invoice.paid", "n": 1})
    other = build_request("stripe", {"id": "evt_stmt", "type": "invoice.paid", "n": 2})
    sequence = [first, first, other, first, other, other, first, other]
    with (
        override_settings(WEBHOOKS=webhooks_with(PREPARED_STATEMENTS=prepared)),
        caplog.at_level(logging.DEBUG, logger="webhooks"),
    ):
        statuses = [deliver(client, request) for request in sequence]
    assert statuses == ["accepted"] + ["duplicate"] * 7
    event = WebhookEvent.objects.get()
    assert (event.endpoint, event.event_id) == ("stripe", "evt_stmt")
    assert bytes(event.body) == first.body
    assert event.payload["n"] == 1
    # Each delivery of the other body, and only those, is a warning; same bodies are debug.
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4  # `other` is delivered 4 times
    assert all("evt_stmt" in w and "different body" in w for w in warnings)
    same = [r.getMessage() for r in caplog.records if r.getMessage().startswith("webhooks: dup")]
    assert len(same) == 3
    # The prepared run executed one prepared statement eight times; the other, none.
    expected = [8] if prepared else []
    assert [executions for _, executions in receive_statements()] == expected


# -- the generic plan finds a duplicate through the unique index ------------------------------


def numbered(sql: str) -> tuple[str, list[str]]:
    """``%(name)s`` placeholders as ``$1..$k`` (one number per name), and the names in order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        if match.group(1) not in names:
            names.append(match.group(1))
        return f"${names.index(match.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)s", number, sql), names


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


def generic_plan_of_a_duplicate() -> list[dict[str, Any]]:
    """EXPLAIN EXECUTE of the receive statement, prepared by SQL, under force_generic_plan."""
    sql, names = numbered(storage.statements(connection).insert)
    assert "%(" not in sql
    assert len(names) == 13  # the inserted fields; body, endpoint and event_id reused
    values = {
        "endpoint": "stripe",
        "event_id": "evt_generic",
        "event_type": "invoice.paid",
        "body": b'{"id": "evt_generic"}',
        "payload": Jsonb({"id": "evt_generic"}),
        "headers": Jsonb({}),
        "status": "received",
        "attempts": 0,
        "last_error": "",
        "received_at": timezone.now(),
        "occurred_at": None,
        "content_digest": None,  # a Stripe event: the id is signed
        "source": "delivery",
    }
    placeholders = ", ".join(["%s"] * len(names))
    with connection.cursor() as cursor:
        cursor.execute(f"PREPARE tether_generic_probe AS {sql}")
        try:
            with transaction.atomic():
                cursor.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                cursor.execute(
                    f"EXPLAIN (FORMAT JSON) EXECUTE tether_generic_probe({placeholders})",
                    [values[name] for name in names],
                )
                [[explained]] = cursor.fetchall()
                transaction.set_rollback(True)
        finally:
            cursor.execute("DEALLOCATE tether_generic_probe")
    return list(plan_nodes(explained[0]["Plan"]))


@postgres.STATEMENTS
@pytest.mark.django_db
def test_the_generic_plan_looks_a_duplicate_up_through_the_unique_index():
    assert not WebhookEvent.objects.exists()  # planned on the empty, freshly migrated table
    nodes = generic_plan_of_a_duplicate()
    on_table = [n for n in nodes if n.get("Relation Name") == "webhooks_webhookevent"]
    assert [n["Node Type"] for n in on_table if n["Node Type"] == "Seq Scan"] == []
    indexed = [n for n in nodes if "Index Name" in n]
    assert [n["Index Name"] for n in indexed] == [UNIQUE_INDEX]
    [lookup] = indexed
    assert lookup["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Index Scan")
    condition = lookup["Index Cond"]
    assert "endpoint" in condition and "event_id" in condition
    assert "$" in condition  # a generic plan: the parameters are not folded in
    assert "Filter" not in lookup
    [insert] = [n for n in on_table if n["Node Type"] == "ModifyTable"]
    # No conflict target: every unique index arbitrates, (endpoint, event_id) and the partial
    # (endpoint, content_digest), which has no entry for an event without a digest.
    assert insert["Conflict Resolution"] == "NOTHING"
    assert "Conflict Arbiter Indexes" not in insert
    # Nothing leaked from the probe.
    assert [text for text, _ in prepared_statements() if "tether_generic_probe" in text] == []
    with connection.cursor() as cursor:
        cursor.execute("SHOW plan_cache_mode")
        assert cursor.fetchone() == ("auto",)


@postgres.STATEMENTS
@pytest.mark.django_db
def test_with_the_dropped_index_back_the_generic_plan_filters_on_event_id():
    """The control of the test above (and the reason for migration 0002): the same probe on the
    same empty table, with the (endpoint, status) index created again for this transaction
    only, finds duplicates through it, filtering every row of the endpoint on event_id."""
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE INDEX {DROPPED_INDEX} ON webhooks_webhookevent (endpoint, status)")
    [lookup] = [n for n in generic_plan_of_a_duplicate() if "Index Name" in n]
    assert lookup["Index Name"] == DROPPED_INDEX
    assert "event_id" not in lookup["Index Cond"]
    assert "event_id" in lookup["Filter"]


@postgres.STATEMENTS
@pytest.mark.django_db
def test_the_endpoint_status_index_is_gone():
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'webhooks_webhookevent'")
        indexes = {name for (name,) in cursor.fetchall()}
    assert DROPPED_INDEX not in indexes
    assert {UNIQUE_INDEX, DIGEST_INDEX, "webhooks_ev_status_recv_idx"} <= indexes


@postgres.STATEMENTS
@pytest.mark.django_db
def test_the_digest_index_is_unique_and_partial():
    """Events without a digest, the hot path's, add no entry to it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [DIGEST_INDEX])
        [(definition,)] = cursor.fetchall()
    assert definition.startswith("CREATE UNIQUE INDEX")
    assert "(endpoint, content_digest)" in definition
    assert definition.endswith("WHERE (content_digest IS NOT NULL)")


# -- psycopg's prepare_threshold ----------------------------------------------------------------


@postgres.STATEMENTS
@pytest.mark.django_db(transaction=True)
def test_a_connection_without_a_threshold_gets_one_no_query_reaches(client):
    raw = fresh_session()
    assert raw.prepare_threshold is None  # Django's default
    deliver(client, build_request("stripe"))
    assert connection.connection is raw
    assert raw.prepare_threshold == 2**62
    assert len(receive_statements()) == 1


@postgres.STATEMENTS
@pytest.mark.django_db(transaction=True)
def test_a_users_threshold_is_left_as_is(client):
    raw = fresh_session()
    raw.prepare_threshold = 5
    request = build_request("stripe")
    assert [deliver(client, request) for _ in range(2)] == ["accepted", "duplicate"]
    assert connection.connection is raw
    assert raw.prepare_threshold == 5
    # Ours is still prepared at once (explicitly), not after five executions.
    assert [executions for _, executions in receive_statements()] == [2]


@postgres.STATEMENTS
@pytest.mark.django_db(transaction=True)
def test_no_threshold_is_set_when_prepared_statements_is_false(client):
    raw = fresh_session()
    with override_settings(WEBHOOKS=webhooks_with(PREPARED_STATEMENTS=False)):
        deliver(client, build_request("stripe"))
    assert connection.connection is raw
    assert raw.prepare_threshold is None


# -- statements per database ------------------------------------------------------------------


def another_database(alias: str, **features: Any) -> Any:
    """A connection to the test database under another alias, with the backend features named
    set otherwise (as MariaDB's differ from MySQL's under one vendor); never connected."""
    from django.db.backends.postgresql.base import DatabaseWrapper

    other = DatabaseWrapper({**connection.settings_dict}, alias=alias)
    for name, value in features.items():
        setattr(other.features, name, value)
    return other


@postgres.STATEMENTS
def test_each_database_gets_statements_for_its_own_features():
    """Statements are kept per alias: two databases of one vendor whose features differ get
    each their own text (they were kept per vendor, and the first one built served both)."""
    without = another_database("no_skip_locked", has_select_for_update_skip_locked=False)
    assert "SKIP LOCKED" in storage.statements(connection).lock
    assert "SKIP LOCKED" not in storage.statements(without).lock
    assert "SKIP LOCKED" in storage.statements(connection).lock


# -- celery_is_eager ------------------------------------------------------------------------------


@pytest.fixture
def celery_app():
    """The processing tasks' Celery app, its configured ``task_always_eager`` deciding."""
    with configured_celery_app() as app:
        yield app


def test_celery_is_eager_follows_the_configuration(celery_app):
    assert not hasattr(settings, "CELERY_TASK_ALWAYS_EAGER")  # the test settings leave it out
    assert celery_app.conf.task_always_eager is False
    assert queueing.celery_is_eager() is False
    with eager_setting_set_quietly(True):  # no setting_changed: nothing reads it again
        assert celery_app.conf.task_always_eager is True
        assert queueing.celery_is_eager() is False  # read once, kept


def test_celery_is_eager_sees_a_run_time_change_at_once(celery_app):
    assert queueing.celery_is_eager() is False  # the configured value is now cached
    celery_app.conf.task_always_eager = True
    try:
        assert queueing.celery_is_eager() is True
        celery_app.conf.task_always_eager = False
        assert queueing.celery_is_eager() is False
        celery_app.conf.task_always_eager = True
        assert queueing.celery_is_eager() is True
    finally:
        celery_app.conf.task_always_eager = False
    assert queueing.celery_is_eager() is False


def test_celery_is_eager_follows_override_settings(celery_app):
    assert queueing.celery_is_eager() is False  # cached before the override
    with override_settings(CELERY_TASK_ALWAYS_EAGER=True):
        assert celery_app.conf.task_always_eager is True
        assert queueing.celery_is_eager() is True
    assert queueing.celery_is_eager() is False
    with override_settings(CELERY_TASK_ALWAYS_EAGER=True):
        assert queueing.celery_is_eager() is True
    assert queueing.celery_is_eager() is False


def test_an_unrelated_setting_change_keeps_the_cached_value(celery_app):
    with override_settings(CELERY_TASK_ALWAYS_EAGER=True):
        assert queueing.celery_is_eager() is True
        with eager_setting_set_quietly(False), override_settings(TIME_ZONE="Europe/Paris"):
            assert celery_app.conf.task_always_eager is False
            assert queueing.celery_is_eager() is True  # not read again
    assert queueing.celery_is_eager() is False


# -- the PREPARED_STATEMENTS check --------------------------------------------------------------


def webhooks_errors() -> list[checks.CheckMessage]:
    return [m for m in checks.run_checks() if m.id and m.id.startswith("webhooks.")]


@pytest.mark.parametrize("value", ["yes", 1, 0, None, "False"])
def test_a_non_bool_prepared_statements_is_e008(value):
    with override_settings(WEBHOOKS=webhooks_with(PREPARED_STATEMENTS=value)):
        errors = webhooks_errors()
    assert [(e.id, e.level) for e in errors] == [("webhooks.E008", checks.ERROR)]
    [error] = errors
    assert error.msg.startswith('WEBHOOKS["PREPARED_STATEMENTS"]: must be True or False')
    assert repr(value) in error.msg


@pytest.mark.parametrize("value", [True, False])
def test_a_bool_prepared_statements_passes_the_check(value):
    with override_settings(WEBHOOKS=webhooks_with(PREPARED_STATEMENTS=value)):
        assert webhooks_errors() == []
        assert conf.processing_config_problems() == []


# -- a prepared statement that vanishes (a pooler in transaction mode) ------------------------


def drop_prepared_behind_psycopgs_back(raw: Any) -> None:
    """What a pooler in transaction mode does: the next server connection lacks the statement
    psycopg believes is prepared (psycopg is not told: the command goes to libpq directly)."""
    result = raw.pgconn.exec_(b"DEALLOCATE ALL")
    assert result.status == 1  # COMMAND_OK


@postgres.STATEMENTS
@pytest.mark.django_db(transaction=True)
def test_a_vanished_statement_is_run_again_unprepared_and_preparing_stops(client, caplog):
    raw = fresh_session()
    first = build_request("stripe")
    assert deliver(client, first) == "accepted"
    assert len(receive_statements()) == 1
    drop_prepared_behind_psycopgs_back(raw)
    assert receive_statements() == []

    with caplog.at_level(logging.ERROR, logger="webhooks.storage"):
        statuses = [deliver(client, build_request("stripe")), deliver(client, first)]
        statuses.append(deliver(client, build_request("github")))
    # The delivery that met the missing statement was stored all the same (run again, not
    # prepared), and so were the ones after it; nothing is prepared any more in this process.
    assert statuses == ["accepted", "duplicate", "accepted"]
    assert WebhookEvent.objects.count() == 3
    assert receive_statements() == []
    errors = [r for r in caplog.records if r.name == "webhooks.storage"]
    assert len(errors) == 1  # said once, not per delivery
    assert 'WEBHOOKS["PREPARED_STATEMENTS"] = False' in errors[0].getMessage()


@postgres.STATEMENTS
@pytest.mark.django_db(transaction=True)
def test_a_vanished_statement_inside_a_transaction_raises_and_the_next_one_works(client):
    from django.db import ProgrammingError

    raw = fresh_session()
    assert deliver(client, build_request("stripe")) == "accepted"
    drop_prepared_behind_psycopgs_back(raw)

    def event(event_id: str) -> WebhookEvent:
        return WebhookEvent(endpoint="stripe", event_id=event_id, event_type="t", body=b"{}",
                            payload={}, headers={}, received_at=timezone.now())  # fmt: skip

    # Inside a transaction the error aborted it: it cannot be run again there.
    with pytest.raises(ProgrammingError), transaction.atomic():
        storage.insert_or_compare(event("evt_in_tx"), "default")
    assert not WebhookEvent.objects.filter(event_id="evt_in_tx").exists()
    with transaction.atomic():
        assert storage.insert_or_compare(event("evt_in_tx"), "default") == (True, None)
    assert WebhookEvent.objects.filter(event_id="evt_in_tx").exists()
    # The process stopped preparing on that database (psycopg would prepare it again otherwise).
    assert deliver(client, build_request("stripe")) == "accepted"
    assert receive_statements() == []


@postgres.STATEMENTS
@pytest.mark.django_db(transaction=True)
def test_preparing_resumes_after_prepare_again_which_the_pytest_plugin_calls(client):
    from tether.pytest_plugin import local_state_resets

    raw = fresh_session()
    assert deliver(client, build_request("stripe")) == "accepted"
    drop_prepared_behind_psycopgs_back(raw)
    assert deliver(client, build_request("stripe")) == "accepted"  # met the missing statement
    assert deliver(client, build_request("stripe")) == "accepted"
    assert receive_statements() == []  # preparing stopped

    assert storage.prepare_again in local_state_resets()  # so each test starts preparing
    storage.prepare_again()
    fresh_session()  # a session that has the statements it believes it has
    assert deliver(client, build_request("stripe")) == "accepted"
    assert len(receive_statements()) == 1
