"""wrk, the native load generator of ``bench/ingest.py``: one measured run, its answers checked.

wrk (a Debian package; ``bench/ensure_wrk.sh`` installs it) runs ``bench/wrk_requests.lua``,
which sends pre-built raw requests from a file (each its own signed body), checks every answer
(status 200 and an expected substring of the body) and, when wrk is done, writes its counts and
wrk's latency histogram to a file that :func:`run` reads.

Two things of wrk 4.1 this module deals with:

- ``-d`` is whole seconds, and wrk always runs for all of it.
- Before ``done()`` sees it, wrk "corrects" its histogram for coordinated omission: with
  ``e = duration / (requests / connections)`` (the mean time between two requests of one
  connection), every latency ``n >= 2e`` adds synthetic samples at ``n - e``, ``n - 2e``, ... down
  to just above ``e``. That models an open-loop sender, not the requests made; it is undone here
  exactly (``observed[m] = corrected[m] - corrected[m + e]`` for ``m > e``) and checked against
  the request count, so p50/p99 are of the requests actually answered. wrk's own corrected p99
  is kept beside them.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .processes import ROOT, BenchError, Child, wait_cpu_at_exit

SCRIPT = ROOT / "bench" / "wrk_requests.lua"
#: Seconds a request may take before wrk gives up on it (counted as an error).
TIMEOUT_S = 30


def require_wrk() -> str:
    """The path of ``wrk``, or ``BenchError`` saying how to install it."""
    path = shutil.which("wrk")
    if not path:
        raise BenchError(
            "wrk is not installed: `make bench-smoke` and `make bench` install it "
            "(bench/ensure_wrk.sh), or install it yourself (Debian/Ubuntu: apt-get install wrk; "
            "macOS: brew install wrk)"
        )
    return path


def wrk_version() -> str:
    """wrk's version line, e.g. ``wrk debian/4.1.0-3+b2 [epoll]``."""
    out = subprocess.run([require_wrk(), "-v"], capture_output=True, text=True, check=False)
    return out.stdout.split(" Copyright", 1)[0].strip()


def write_requests(path: Path, requests: list[bytes]) -> Path:
    """The requests file ``wrk_requests.lua`` reads: each request as ``<length>\\n<bytes>``."""
    with path.open("wb") as out:
        for request in requests:
            out.write(b"%d\n" % len(request))
            out.write(request)
    return path


def run(
    start: Callable[..., Child],
    port: int,
    requests: Path,
    *,
    seconds: int,
    connections: int,
    threads: int,
    expect: str = "",
    cycle: bool = False,
    snapshot: Callable[[], object] | None = None,
) -> dict:
    """One wrk run of ``seconds`` against 127.0.0.1:``port``; ``start(name, argv, **env)``
    starts it as a child of the benchmark.

    ``snapshot`` (e.g. the server's CPU so far) is taken when wrk starts sending and again when
    its load-generating threads have finished, as ``result["window"]``.
    """
    out = requests.with_suffix(".out")
    out.unlink(missing_ok=True)
    argv = [
        require_wrk(), "--threads", str(threads), "--connections", str(connections),
        "--duration", f"{seconds}s", "--timeout", f"{TIMEOUT_S}s", "--script", str(SCRIPT),
        f"http://127.0.0.1:{port}/",
    ]  # fmt: skip
    child = start(
        f"wrk-{requests.stem}",
        argv,
        BENCH_WRK_REQUESTS=str(requests),
        BENCH_WRK_CYCLE="1" if cycle else "0",
        BENCH_WRK_EXPECT=expect,
        BENCH_WRK_THREADS=str(threads),
        BENCH_WRK_OUT=str(out),
    )
    try:
        # wrk prints "Running ..." once its threads are started (the script makes stdout line
        # buffered); it has loaded the requests by then.
        line = child.read_line(60)
        if not line.startswith("Running"):
            child.popen.wait(10)
            raise BenchError(f"wrk did not start: {line!r}\n{child.log_tail()}")
        window = [snapshot()] if snapshot else []
        time.sleep(max(0.0, seconds - 0.1))
        while child.alive() and len(list(Path(f"/proc/{child.pid}/task").iterdir())) > 1:
            time.sleep(0.005)  # its load-generating threads are still running
        if snapshot:
            window.append(snapshot())
        total_cpu, main_cpu = wait_cpu_at_exit(child.popen, 60 + seconds)
        if child.popen.returncode != 0 or not out.exists():
            status = child.popen.returncode
            raise BenchError(f"wrk failed (exit status {status}):\n{child.log_tail()}")
    finally:
        child.stop()
    result = parse(out.read_text(), connections)
    result["cpu_s"] = total_cpu - main_cpu
    result["cpu_share"] = result["cpu_s"] / result["wall_s"] if result["wall_s"] else 0.0
    result["cpu_us_per_request"] = 1e6 * result["cpu_s"] / max(result["answered"], 1)
    if snapshot:
        result["window"] = window
    return result


def parse(text: str, connections: int) -> dict:
    """The figures of one run from what ``done()`` wrote."""
    values: dict[str, str] = {}
    corrected: dict[int, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == "latency":
            us, count = value.split()
            corrected[int(float(us))] = int(float(count))
        else:
            values[name] = value
    count = {name: int(float(values.get(name, "0"))) for name in (
        "sent", "answered", "wrong", "kept_alive", "exhausted", "duration_us", "requests",
        "socket_connect", "socket_read", "socket_write", "socket_timeout",
    )}  # fmt: skip
    errors = {"wrong_answer": count["wrong"]}
    for kind in ("connect", "read", "write", "timeout"):
        errors[f"socket_{kind}"] = count[f"socket_{kind}"]
    if count["exhausted"]:
        errors["ran_out_of_requests"] = count["exhausted"]
    errors = {kind: n for kind, n in errors.items() if n}
    observed = observed_histogram(
        corrected, count["duration_us"], count["requests"], connections,
        recorded=count["requests"] - count["socket_timeout"],
    )  # fmt: skip
    wall = count["duration_us"] / 1e6
    ok = count["answered"] - count["wrong"]
    first_error = values.get("first_error", "").strip()
    if count["exhausted"] and not first_error:
        first_error = "ran out of pre-signed requests before the time was up: raise --max-rate"
    return {
        "sent": count["sent"],
        "answered": count["answered"],
        "ok": ok,
        "errors": errors,
        "first_error": first_error,
        "kept_alive": count["kept_alive"],
        "wall_s": wall,
        "throughput": ok / wall if wall else 0.0,
        "histogram": observed,
        "histogram_corrected": corrected,
        "p50_ms": percentile(observed, 50) / 1000,
        "p99_ms": percentile(observed, 99) / 1000,
        "p99_corrected_ms": percentile(corrected, 99) / 1000,
    }


def observed_histogram(
    corrected: dict[int, int], duration_us: int, requests: int, connections: int, *, recorded: int
) -> dict[int, int]:
    """wrk's histogram without its coordinated-omission samples (see the module's docstring);
    ``BenchError`` unless it then holds exactly the ``recorded`` latencies."""
    per_connection = requests // connections
    observed = dict(corrected)
    if per_connection:
        expected = duration_us // per_connection  # as wrk computes it, in whole microseconds
        observed = {
            us: count - (corrected.get(us + expected, 0) if us > expected else 0)
            for us, count in corrected.items()
        }
    if sum(observed.values()) != recorded or any(n < 0 for n in observed.values()):
        raise BenchError(
            f"wrk's latency histogram does not add up to its {recorded} answers once its "
            "coordinated-omission samples are removed: is this wrk 4.1? (see bench/wrk.py)"
        )
    return {us: count for us, count in observed.items() if count}


def merge(histograms: list[dict[int, int]]) -> dict[int, int]:
    merged: dict[int, int] = {}
    for histogram in histograms:
        for us, count in histogram.items():
            merged[us] = merged.get(us, 0) + count
    return merged


def percentile(histogram: dict[int, int], q: float) -> float:
    """Nearest-rank percentile (microseconds) of a histogram {value: count}; 0 when empty."""
    total = sum(histogram.values())
    if not total:
        return 0.0
    rank = max(1, min(total, round(q / 100 * total + 0.5)))
    seen = 0
    for us in sorted(histogram):
        seen += histogram[us]
        if seen >= rank:
            return float(us)
    return float(max(histogram))
