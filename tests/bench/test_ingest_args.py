"""``bench/ingest.py --profile``: which case it profiles."""

from __future__ import annotations

import pytest

from bench.ingest import parse_args


def test_the_profile_covers_b_unless_a_or_e_is_named():
    assert parse_args(["--profile"]).cases == "b"
    assert parse_args(["--profile", "--cases", "e"]).cases == "e"
    assert parse_args(["--profile", "wall", "--cases", "a"]).profile == "wall"


@pytest.mark.parametrize("cases", ["c", "f", "d", "b,e"])
def test_a_case_the_profile_cannot_cover_is_refused(cases, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--profile", "--cases", cases])
    assert "--profile covers one of the cases a, b, e" in capsys.readouterr().err


def _result(throughput, p99_ms=1.0):
    return {"throughput": throughput, "p99_ms": p99_ms}


def test_asgi_figures_are_in_the_last_line_only_with_asgi():
    from bench.ingest import ASGI_KEYS, summarize

    results = {
        "a": _result(1000), "b": _result(800), "e": _result(900),
        "asgi_a": _result(500), "asgi_b": _result(400, 12.345), "asgi_c": _result(450),
        "asgi_e": _result(440),
    }  # fmt: skip
    assert not set(ASGI_KEYS) & set(summarize(results))
    summary = summarize(results, asgi=True)
    assert {key: summary[key] for key in ASGI_KEYS} == {
        "asgi_b_over_a": 0.8,
        "asgi_c_over_a": 0.9,
        "asgi_b_over_e": 0.909,
        "asgi_e_over_a": 0.88,
        "asgi_b_p99_ms": 12.35,
    }
    assert summary["b_over_a"] == 0.8  # the sync figures beside them


def test_asgi_flag():
    assert parse_args(["--asgi"]).asgi is True
    assert parse_args([]).asgi is False
