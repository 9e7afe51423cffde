"""Property (hypothesis): one object's events, delivered in any order, concurrently, through real
Celery workers (two worker nodes of two pool processes each), with duplicates and retries mixed
in, leave the state that applying the newest version leaves; an ordered handler's runs of one
key never overlap, and the runs that commit apply increasing versions.

The handler is ``tests.worker_app``'s ``ordered`` (``@on("stripe", "test.ordered.*",
ordering_key="data.object.id")``, version: the event's occurred time, Stripe's ``created``);
``tests.ordered_objects`` reads what it leaves. Each example uses fresh object and event ids,
so the examples share the workers and need no cleanup.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import ordered_objects, postgres
from tests.servers import wait_until
from webhooks import queueing
from webhooks.models import HandlerRun, OrderingState, WebhookEvent
from webhooks.testing import post_webhook

pytestmark = [
    pytest.mark.worker,
    pytest.mark.multiprocess,
    pytest.mark.slow,
    postgres.SUBPROCESS,
    pytest.mark.django_db(transaction=True),
]
Status = WebhookEvent.Status
RunStatus = HandlerRun.Status
EXAMPLES = 8
HANDLER = "tests.worker_app.webhooks.ordered"


@st.composite
def deliveries(draw):
    """(object, version) pairs of 1 to 3 objects with 1 to 4 versions each, in a drawn order,
    some twice (a duplicate delivery); which ones fail their first attempt; which ones get their
    processing task published a second time (a redelivered task)."""
    events = [
        (obj, version)
        for obj in range(draw(st.integers(1, 3)))
        for version in range(1, draw(st.integers(1, 4)) + 1)
    ]
    duplicated = draw(st.lists(st.sampled_from(events), max_size=3, unique=True))
    order = draw(st.permutations(events + duplicated))
    failing = draw(st.sets(st.sampled_from(events), max_size=3))
    requeued = draw(st.sets(st.sampled_from(events), max_size=3))
    return events, order, failing, requeued


@pytest.fixture
def two_workers(worker_factory):
    ordered_objects.ensure_table()
    return [worker_factory(pool="prefork", concurrency=2) for _ in range(2)]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=deliveries())
def test_out_of_order_events_leave_the_newest_state_and_runs_of_a_key_never_overlap(
    two_workers, client, tmp_path, plan
):
    events, order, failing, requeued = plan
    run = uuid.uuid4().hex[:10]
    spans_file = str(tmp_path / f"spans-{run}.tsv")
    base = int(time.time()) - 3600
    key = {obj: f"sub_{run}_{obj}" for obj, _ in events}
    event_id = {pair: f"evt_{run}_{pair[0]}_{pair[1]}" for pair in events}

    def payload(pair):
        obj, version = pair
        return {
            "id": event_id[pair],
            "object": "event",
            "type": "test.ordered.updated",
            "created": base + version,  # the version: the event's occurred time
            "data": {
                "object": {
                    "id": key[obj],
                    "version": version,
                    "spans": spans_file,
                    "fail_first": pair in failing,
                }
            },
        }

    for pair in order:
        response = post_webhook(client, "stripe", payload(pair))
        assert response.status_code == 200, response.content
    with transaction.atomic():  # a redelivered task: a second message for the same event
        for event in WebhookEvent.objects.filter(event_id__in=[event_id[p] for p in requeued]):
            queueing.enqueue_on_commit(event)

    ids = list(event_id.values())

    def all_processed():
        statuses = WebhookEvent.objects.filter(event_id__in=ids).values_list("status", flat=True)
        assert Status.FAILED not in statuses
        return len(statuses) == len(ids) and set(statuses) == {Status.PROCESSED}

    wait_until(all_processed, timeout=60, message="every event to be processed")

    # The state equals applying the newest version of each object.
    newest = {obj: max(v for o, v in events if o == obj) for obj in key}
    assert ordered_objects.states(list(key.values())) == {
        key[obj]: (version, event_id[(obj, version)]) for obj, version in newest.items()
    }
    for obj, version in newest.items():
        state = OrderingState.objects.get(handler=HANDLER, key=key[obj])
        assert state.event_id == event_id[(obj, version)]
        assert state.version == datetime.fromtimestamp(base + version, tz=UTC).timestamp()

    # No two runs of a key overlap; the runs that committed applied increasing versions; a run
    # failed only on the first attempt of an event made to fail; each event committed at most
    # one run (a duplicate delivery or a redelivered task did not run it again).
    spans = ordered_objects.spans(spans_file)
    by_key = defaultdict(list)
    for span in spans:
        by_key[span.key].append(span)
    for runs in by_key.values():
        runs.sort(key=lambda span: span.started)
        for before, after in itertools.pairwise(runs):
            assert after.started >= before.ended, f"runs overlap: {before} and {after}"
        applied = [span.version for span in runs if not span.failed]
        assert applied == sorted(set(applied)), f"applied out of order: {applied}"
    failed = [span.event_id for span in spans if span.failed]
    assert len(failed) == len(set(failed))
    assert set(failed) <= {event_id[pair] for pair in failing}
    committed = [span.event_id for span in spans if not span.failed]
    assert len(committed) == len(set(committed))

    # Each event's run of the handler ended processed (exactly the events whose handler call
    # committed) or skipped, the reason naming a newer event of the same object.
    runs = HandlerRun.objects.filter(event__event_id__in=ids, handler=HANDLER)
    outcome = {e: (status, error) for e, status, error in runs.values_list(
        "event__event_id", "status", "last_error")}  # fmt: skip
    assert set(outcome) == set(ids)
    assert {e for e, (status, _) in outcome.items() if status == RunStatus.PROCESSED} == set(
        committed
    )
    for (obj, version), evt in event_id.items():
        status, error = outcome[evt]
        if status != RunStatus.PROCESSED:
            assert status == RunStatus.SKIPPED, (evt, status, error)
            assert version < newest[obj]
            assert error.startswith("stale: version ")
            assert f"applied by event 'evt_{run}_{obj}_" in error
