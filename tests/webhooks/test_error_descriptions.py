"""What a failure leaves for the on-call engineer: the handler's dotted name, the message and
the traceback (never the frames' local variables), bounded, in the log line and in
``last_error``; and the message of an error outside the handlers (first line only)."""

from __future__ import annotations

import logging

import pytest
from django.db import connection

from tests import postgres
from tests.webhooks.factories import WebhookEventFactory
from webhooks import on, processing, tasks
from webhooks.models import WebhookEvent

Status = WebhookEvent.Status
LOCAL_SECRET = "sk_live_" + "local0value0never0shown"


@pytest.mark.django_db
def test_a_failing_handler_leaves_its_name_message_and_traceback(handlers, caplog):
    @on("stripe", "invoice.broken")
    def on_broken_invoice(event):
        api_key = LOCAL_SECRET  # a local variable: must not be recorded
        return event.payload["no-such-key"], api_key

    event = WebhookEventFactory(event_type="invoice.broken", payload={"id": "evt_broken_1"})
    with caplog.at_level(logging.WARNING, logger="webhooks.processing"):
        assert processing.process_event(event.pk) == Status.PROCESSING

    event.refresh_from_db()
    name = f"{__name__}.{on_broken_invoice.__qualname__}"
    lines = event.last_error.splitlines()
    assert lines[0] == "KeyError: 'no-such-key'"
    assert lines[1] == f"Handler: {name}"
    assert lines[2] == "Traceback (most recent call last):"
    assert 'test_error_descriptions.py", line' in event.last_error
    assert "in on_broken_invoice" in event.last_error
    assert 'return event.payload["no-such-key"], api_key' in event.last_error  # source line
    assert lines[-1] == "KeyError: 'no-such-key'"
    assert LOCAL_SECRET not in event.last_error

    [record] = [r for r in caplog.records if "failed for" in r.getMessage()]
    message = record.getMessage()
    assert message.startswith(f"webhooks: handler {name} failed for stripe:{event.event_id} "
                              "(attempt 1 of 8): KeyError: 'no-such-key'")  # fmt: skip
    assert "Traceback (most recent call last):" in message
    assert "in on_broken_invoice" in message
    assert LOCAL_SECRET not in message
    assert record.exc_info is None  # no exception object for a log handler to read locals from


@pytest.mark.django_db
def test_a_huge_message_and_a_deep_traceback_are_bounded_head_and_tail(handlers):
    @on("stripe", "test.huge")
    def huge(event):
        raise ValueError("x" * 100_000)

    @on("stripe", "test.deep")
    def deep(event):
        # Two functions in turn: Python collapses only repeats of the same line.
        def ping(n):
            if n == 0:
                raise RuntimeError("bottom reached")
            return pong(n - 1) + 1

        def pong(n):
            return ping(n) + 1

        return ping(300)

    for event_type, last_line in [("test.huge", "x" * 50), ("test.deep", "bottom reached")]:
        event = WebhookEventFactory(event_type=event_type)
        processing.process_event(event.pk)
        event.refresh_from_db()
        text = event.last_error
        assert len(text) <= processing.LAST_ERROR_MAX_CHARS == 8192
        assert "characters cut …]" in text
        assert text.splitlines()[1].startswith("Handler: ")  # the head is kept
        assert text.endswith(last_line)  # and the tail: the exception line
    huge_headline = WebhookEvent.objects.get(event_type="test.huge").last_error.splitlines()[0]
    assert huge_headline == "ValueError: " + "x" * processing.ERROR_HEADLINE_MAX_CHARS + "…"


def test_bound_text_keeps_short_text_and_cuts_long_text_to_the_bound():
    assert processing.bound_text("short", 10) == "short"
    text = "".join(f"{i:05d}\n" for i in range(10_000))
    bounded = processing.bound_text(text, 1000)
    assert len(bounded) == 1000
    assert bounded.startswith(text[:250]) and bounded.endswith(text[-600:])


@pytest.mark.django_db
def test_an_ignore_keeps_its_message_without_a_traceback(handlers):
    from webhooks import Ignore

    @on("stripe", "test.skip")
    def skip(event):
        raise Ignore("not our account")

    event = WebhookEventFactory(event_type="test.skip")
    assert processing.process_event(event.pk) == Status.IGNORED
    event.refresh_from_db()
    assert event.last_error == "webhooks.exceptions.Ignore: not our account"


def test_an_error_outside_the_handlers_is_described_by_its_first_line_only():
    error = RuntimeError("database is locked\nDETAIL: Key (token)=(hunter2) already exists")
    assert processing.describe_outside_error(error) == "RuntimeError: database is locked"
    long = processing.describe_outside_error(RuntimeError("y" * 1000))
    assert len(long) == processing.OUTSIDE_ERROR_MAX_CHARS and long.endswith("…")
    assert processing.describe_outside_error(KeyError()) == "KeyError"


@postgres.TRIGGERS
@pytest.mark.django_db
def test_a_database_error_outside_the_handlers_logs_its_message_not_its_detail(caplog):
    """A real PostgreSQL error in the claim (a trigger refuses the UPDATE, with a DETAIL line
    standing for a statement's echoed parameters)."""
    event = WebhookEventFactory()
    with connection.cursor() as cursor:
        cursor.execute(
            """
            CREATE FUNCTION tether_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              RAISE EXCEPTION 'tether test: claim refused'
                USING DETAIL = 'parameter token=hunter2-detail';
            END $$;
            CREATE TRIGGER tether_test_refuse BEFORE UPDATE ON webhooks_webhookevent
              FOR EACH ROW EXECUTE FUNCTION tether_test_refuse();
            """
        )
    with caplog.at_level(logging.ERROR, logger="webhooks.tasks"):
        result = tasks.process_events.apply(args=[[event.pk]])
    assert result.get() == [None]
    [record] = [r for r in caplog.records if "outside its handlers" in r.getMessage()]
    message = record.getMessage()
    assert f"pk={event.pk}" in message
    assert "tether test: claim refused" in message
    assert "hunter2" not in message
