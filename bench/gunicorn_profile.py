"""gunicorn hooks for ``bench/ingest.py --profile``: cProfile every worker, dump on exit.

Loaded with ``--config python:bench.gunicorn_profile``; profiles go to ``$BENCH_PROFILE_DIR``.
Profiling slows the workers, so a profiled run shows where the time goes, not the figures.
"""

from __future__ import annotations

import cProfile
import os
import pstats
from pathlib import Path

_profiles: dict[int, cProfile.Profile] = {}


def post_fork(server, worker) -> None:
    profile = cProfile.Profile()
    _profiles[os.getpid()] = profile
    profile.enable()


def worker_exit(server, worker) -> None:
    profile = _profiles.pop(os.getpid(), None)
    if profile is not None:
        profile.disable()
        profile.dump_stats(Path(os.environ["BENCH_PROFILE_DIR"]) / f"worker-{os.getpid()}.prof")


def print_profile(directory: Path, requests: int, limit: int = 45) -> None:
    """The merged workers' profile: functions by cumulative time, in ms per request."""
    files = sorted(str(p) for p in Path(directory).glob("worker-*.prof"))
    if not files:
        print("no worker profile was written")
        return
    stats = pstats.Stats(*files)
    print(f"\nprofile of {len(files)} worker(s), {requests} requests: ms per request")
    print(f"{'cumulative':>11}{'own':>8}{'calls/req':>10}  function")
    rows = []
    for (filename, line, name), (_cc, calls, own, cumulative, _callers) in stats.stats.items():
        rows.append((cumulative, own, calls, f"{_short(filename)}:{line}({name})"))
    rows.sort(reverse=True)
    for cumulative, own, calls, where in rows[:limit]:
        print(
            f"{1000 * cumulative / requests:>11.3f}{1000 * own / requests:>8.3f}"
            f"{calls / requests:>10.2f}  {where}"
        )


def _short(filename: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename
