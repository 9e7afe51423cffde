"""gunicorn hooks for ``bench/ingest.py --profile``: cProfile every worker, dump on exit.

Loaded with ``--config python:bench.gunicorn_profile``; profiles go to ``$BENCH_PROFILE_DIR``.
``$BENCH_PROFILE_CLOCK`` picks what is measured: ``cpu`` (default: the worker thread's CPU
time, so waits on PostgreSQL or Redis do not count) or ``wall``. Profiling slows the workers,
so a profiled run shows where the time goes, not the figures.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import time
from pathlib import Path

#: Requests each worker serves before its profiler starts, so that one-time costs (imports,
#: connections) stay out of the per-request figures.
SKIP_REQUESTS = int(os.environ.get("BENCH_PROFILE_SKIP", "200"))

_state: dict[str, object] = {}


def post_fork(server, worker) -> None:
    clock = os.environ.get("BENCH_PROFILE_CLOCK", "cpu")
    _state["profile"] = cProfile.Profile(time.thread_time if clock == "cpu" else time.perf_counter)
    _state["seen"] = 0


def pre_request(worker, req) -> None:
    _state["seen"] += 1
    if _state["seen"] == SKIP_REQUESTS + 1:
        _state["profile"].enable()


def worker_exit(server, worker) -> None:
    profile = _state.get("profile")
    if profile is None:
        return
    profile.disable()
    profiled = max(0, _state["seen"] - SKIP_REQUESTS)
    if profiled:
        out = Path(os.environ["BENCH_PROFILE_DIR"]) / f"worker-{os.getpid()}"
        profile.dump_stats(out.with_suffix(".prof"))
        out.with_suffix(".count").write_text(str(profiled))


def print_profile(directory: Path, limit: int = 45, save: Path | None = None) -> None:
    """The merged workers' profile: functions by cumulative time, in ms per request; then by
    own time. ``save``: also write the merged profile there (pstats format)."""
    files = sorted(str(p) for p in Path(directory).glob("worker-*.prof"))
    if not files:
        print(f"no worker profile was written (each worker skips its first {SKIP_REQUESTS})")
        return
    requests = sum(int(p.read_text()) for p in Path(directory).glob("worker-*.count"))
    stats = pstats.Stats(*files)
    if save is not None:
        stats.dump_stats(save)
    clock = os.environ.get("BENCH_PROFILE_CLOCK", "cpu")
    print(
        f"\nprofile ({clock} time) of {len(files)} worker(s), {requests} requests: ms per request"
    )
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
    print(f"\nby own time (total {1000 * sum(r[1] for r in rows) / requests:.3f} ms per request)")
    print(f"{'cumulative':>11}{'own':>8}{'calls/req':>10}  function")
    rows.sort(key=lambda row: row[1], reverse=True)
    for cumulative, own, calls, where in rows[:limit]:
        print(
            f"{1000 * cumulative / requests:>11.3f}{1000 * own / requests:>8.3f}"
            f"{calls / requests:>10.2f}  {where}"
        )


def _short(filename: str) -> str:
    root = str(Path(__file__).resolve().parent.parent) + "/"
    for marker in ("site-packages/", root, "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename
