"""The chaos soak's own pieces (``bench/chaos.py``, ``bench/nemesis.py``, ``bench/ledger``): the
fault schedule, the journal and the verdict, so that the soak cannot pass by miscounting.

The soak itself runs as ``make chaos-smoke`` (in CI, after the suite) and ``make chaos``.
"""

from __future__ import annotations

from collections import Counter

import pytest
from django.test import override_settings

from bench.chaos import EXPECTED_5XX, Observed, judge
from bench.ledger import journal
from bench.nemesis import (
    BROKER_OUTAGE_EMPTY,
    BROKER_OUTAGE_KEPT,
    FAULT_KINDS,
    WORKER_KILL,
    plan_faults,
)

COUNTS = {kind: 3 for kind in FAULT_KINDS} | {BROKER_OUTAGE_KEPT: 1, BROKER_OUTAGE_EMPTY: 1}


def plan(seed: int, counts=COUNTS):
    return plan_faults(
        counts, window=(10.0, 100.0), outage_seconds=20.0, worker_down_seconds=4.0, seed=seed
    )


# -- the fault schedule ------------------------------------------------------------------------


def test_plan_has_every_fault_asked_for_within_the_window():
    faults = plan(seed=1)
    assert Counter(f.kind for f in faults) == Counter(COUNTS)
    assert all(10.0 <= f.at <= 100.0 for f in faults)
    assert faults == sorted(faults)
    assert {f.seconds for f in faults if f.kind == WORKER_KILL} == {4.0}


@pytest.mark.parametrize("seed", range(20))
def test_broker_outages_never_overlap_and_end_within_the_window(seed):
    outages = sorted(f for f in plan(seed) if f.kind in (BROKER_OUTAGE_KEPT, BROKER_OUTAGE_EMPTY))
    assert len(outages) == 2
    assert outages[0].at + outages[0].seconds <= outages[1].at
    assert outages[1].at + outages[1].seconds <= 100.0


def test_a_seed_repeats_its_schedule_and_another_draws_a_new_one():
    assert plan(seed=7) == plan(seed=7)
    assert plan(seed=7) != plan(seed=8)


# -- the journal -------------------------------------------------------------------------------


def test_journal_counts_invocations_with_their_attempts_and_refused_second_effects(tmp_path):
    with override_settings(CHAOS_JOURNAL_DIR=str(tmp_path)):
        journal.record(journal.INVOKED, "evt_1", 1)
        journal.record(journal.INVOKED, "evt_1", 2)
        journal.record(journal.INVOKED, "evt_2", 1)
        journal.record(journal.DOUBLE, "evt_2", 1)
    # Another process's file, its last line cut short by a SIGKILL mid-write.
    (tmp_path / "journal-1.log").write_text("invoked evt_3 1 1\ninvoked evt_3")

    written = journal.read(tmp_path)

    assert written.invocations == {"evt_1": [1, 2], "evt_2": [1], "evt_3": [1]}
    assert written.doubles == {"evt_2": 1}


# -- the verdict -------------------------------------------------------------------------------


def observed(**changes) -> Observed:
    """A clean run of three events: one retried after a 503, one failing twice on purpose."""
    seen = {
        "answers": {
            "evt_a": [[200, "accepted"]],
            "evt_b": [[503, "unavailable"], [200, "accepted"], [200, "duplicate"]],
            "evt_c": [[0, "ConnectionResetError"], [200, "duplicate"]],
        },
        "statuses": dict.fromkeys(("evt_a", "evt_b", "evt_c"), "processed"),
        "effects": Counter(["evt_a", "evt_b", "evt_c"]),
        "invocations": {"evt_a": [1], "evt_b": [1, 2, 3], "evt_c": [1, 2]},
        "doubles": Counter(),
        "planned": lambda event_id: 2 if event_id == "evt_b" else 0,
    }
    return Observed(**(seen | changes))


def test_a_clean_run_passes_with_its_retries_and_503s_reported():
    figures = judge(observed())

    assert figures["failures"] == []
    assert (figures["answered_200"], figures["stored"], figures["effects"]) == (3, 3, 3)
    assert figures["lost"] == figures["double_effects"] == figures["unexpected_5xx"] == 0
    assert figures["expected_503"] == 1
    assert figures["no_answer"] == {"ConnectionResetError": 1}
    assert figures["invocations"] == 6
    assert figures["invocations_beyond_one"] == 3
    assert figures["planned_retries"] == 2
    assert figures["unplanned_retries"] == 1  # evt_c's second invocation


def test_an_event_answered_200_without_its_effect_is_lost():
    figures = judge(observed(effects=Counter(["evt_a", "evt_c"])))

    assert figures["lost"] == 1
    assert figures["samples"]["lost"] == ["evt_b"]
    assert "lost = 1" in figures["failures"]


def test_an_event_answered_200_but_never_stored_is_lost():
    statuses = {"evt_a": "processed", "evt_b": "processed"}
    figures = judge(observed(statuses=statuses, effects=Counter(["evt_a", "evt_b"])))

    assert figures["stored_of_answered_200"] == 2
    assert figures["samples"]["lost"] == ["evt_c"]


def test_a_refused_second_effect_is_a_double_effect():
    figures = judge(observed(doubles=Counter({"evt_b": 1})))

    assert figures["double_effects"] == 1
    assert "double_effects = 1" in figures["failures"]


def test_only_503_unavailable_is_an_expected_5xx():
    assert EXPECTED_5XX == (503, "unavailable")
    answers = observed().answers | {
        "evt_a": [[500, "unreadable"], [503, "unreadable"], [200, "accepted"]]
    }
    figures = judge(observed(answers=answers))

    assert figures["unexpected_5xx"] == 2
    assert figures["unexpected_5xx_by_kind"] == {"500 unreadable": 1, "503 unreadable": 1}
    assert figures["expected_503"] == 1


def test_an_event_never_answered_200_or_accepted_twice_fails_the_run():
    answers = observed().answers | {
        "evt_a": [[200, "accepted"], [200, "accepted"]],
        "evt_d": [[0, "ConnectionRefusedError"], [503, "unavailable"]],
    }
    figures = judge(observed(answers=answers))

    assert figures["accepted_twice"] == 1
    assert figures["unanswered"] == 1
    assert figures["lost"] == 0  # evt_d was never acknowledged: the vendor still holds it
    assert {"accepted_twice = 1", "unanswered = 1"} <= set(figures["failures"])
