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
