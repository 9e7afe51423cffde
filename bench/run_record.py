"""The record of one benchmark run: a JSON file in ``bench/results/`` with the settings used, the
commit measured, the machine's state and every figure, so that a document can cite a file.

Named ``<date>-<time>-<git short hash>[-dirty]-<benchmark>[-smoke].json`` (UTC). Smoke runs are
recorded too (they check the harness end to end) but are not kept in git
(``bench/results/.gitignore``): their figures mean nothing.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from .processes import ROOT

RESULTS_DIR = ROOT / "bench" / "results"


def git_state() -> dict:
    """The commit measured, and whether the work tree differed from it."""

    def git(*args: str) -> str:
        out = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        )
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return {
        "commit": commit or None,
        "short": git("rev-parse", "--short", "HEAD") or "nogit",
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None,
    }


def machine_state() -> dict:
    """What the run ran on, and how busy the machine was when it started."""
    try:
        load = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        load = None
    return {
        "cpus": os.cpu_count(),
        "load_average_at_start": load,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def write(
    benchmark: str,
    *,
    directory: Path = RESULTS_DIR,
    smoke: bool,
    started_at: float,
    settings: dict,
    summary: dict,
    results: dict,
    status: int,
    machine: dict | None = None,
) -> Path:
    """Write the run's record; returns its path. Never raises for a figure JSON cannot hold
    (it is written as text)."""
    git = git_state()
    stamp = time.strftime("%Y-%m-%d-%H%M%S", time.gmtime(started_at))
    name = f"{stamp}-{git['short']}{'-dirty' if git['dirty'] else ''}-{benchmark}"
    if smoke:
        name += "-smoke"
    record = {
        "benchmark": benchmark,
        "smoke": smoke,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started_at)),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "exit_status": status,
        "git": git,
        "machine": machine or machine_state(),
        "settings": settings,
        "summary": summary,
        "results": results,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    return path
