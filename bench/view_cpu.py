"""CPU per request of the receive view and of the floor, in-process, through Django's WSGI handler.

    python bench/view_cpu.py [--requests 400] [--rounds 8]

A diagnostic companion to ``bench/ingest.py`` for (b) against (e), and (c) against (f), that a
busy machine disturbs much less than rates do: no gunicorn, no sockets, no load generator; the
same signed Stripe events, with the headers a vendor sends, go through ``WSGIHandler`` (the
project's middleware, URL resolution, the view, the response) on the bench database. Cases run
in interleaved rounds (order rotated each round); per request it measures this thread's CPU
and the process's (which adds the webhooks dispatcher's thread, publishing to the broker), and
the wall time. Prints the means and the ratios of the CPU per request, e/b and f/c (the rate the
CPU alone would allow, relative to the floor); the last line is one JSON object. ``--calls``
also counts the Python function calls per request of each case (this thread's, under
cProfile): a count, not a time, so it compares two versions of the code even on a machine too
busy for their CPU times to.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == ROOT / "bench":
    sys.path[0] = str(ROOT)

from bench.database import drop_database, recreate_database, setup_django  # noqa: E402

CASES = {"b": "/webhooks/bench/", "c": "/webhooks/bench/", "e": "/bench/floor/",
         "f": "/bench/floor/"}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="per case and round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--profile", type=Path, help="write a CPU profile (pstats) of (b) there")
    parser.add_argument(
        "--calls",
        action="store_true",
        help="count the Python function calls per request of each case (cProfile; "
        "deterministic, so it compares code on a busy machine; the CPU figures are then profiled)",
    )
    args = parser.parse_args(argv)
    if args.calls and args.profile:
        parser.error("--calls and --profile each profile the requests: give one")
    setup_django()
    from django.core.handlers.wsgi import WSGIHandler

    from bench.ingest import event_body, make_signer
    from sandbox_project.celery import app
    from webhooks import dispatch

    handler = WSGIHandler()
    sign, _ = make_signer()

    def environ(path: str, body: bytes, headers: dict[str, str]) -> dict:
        env = {
            "REQUEST_METHOD": "POST", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
            "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr, "wsgi.multithread": False, "wsgi.multiprocess": True,
            "wsgi.run_once": False, "wsgi.version": (1, 0), "wsgi.input_terminated": True,
            "CONTENT_LENGTH": str(len(body)), "CONTENT_TYPE": "application/json",
            "HTTP_HOST": "127.0.0.1:8000", "HTTP_ACCEPT": "*/*; q=0.5, application/xml",
            "HTTP_ACCEPT_ENCODING": "gzip", "HTTP_CONNECTION": "close",
        }  # fmt: skip
        for name, value in headers.items():
            env["HTTP_" + name.upper().replace("-", "_")] = value
        return env

    def request(env: dict, expect: bytes) -> None:
        status = []
        response = handler(env, lambda s, h, *a: status.append(s))
        content = b"".join(response)
        response.close()
        if not status[0].startswith("200") or expect not in content:
            raise RuntimeError(f"{env['PATH_INFO']}: {status[0]} {content[:200]!r}")

    import cProfile

    profile = cProfile.Profile(time.thread_time)
    counters = {case: cProfile.Profile() for case in CASES} if args.calls else {}
    recreate_database()
    times: dict[str, list[tuple[float, float, float]]] = {case: [] for case in CASES}
    stored: dict[str, list[tuple[bytes, dict]]] = {"b": [], "e": []}
    serial = 0
    try:
        app.control.purge()
        for round_ in range(args.rounds + 1):  # round 0 warms up and is not kept
            order = "bcef"[round_ % 4 :] + "bcef"[: round_ % 4]
            for case in order:
                new = case in "be"
                for i in range(args.requests):
                    if new:
                        serial += 1
                        body = event_body("cpu", serial)
                        headers = {**sign(body), "User-Agent": "Stripe/1.0"}
                        stored[case].append((body, headers))
                    else:  # a duplicate of an event its new case stored, re-signed
                        body, _ = stored["b" if case == "c" else "e"][i]
                        headers = {**sign(body), "User-Agent": "Stripe/1.0"}
                    env = environ(CASES[case], body, headers)
                    wall, cpu, proc = time.perf_counter(), time.thread_time(), time.process_time()
                    if args.profile and case == "b" and round_:
                        profile.enable()
                    elif counters and round_:
                        counters[case].enable()
                    request(env, b"accepted" if new else b"duplicate")
                    profile.disable()
                    if counters:
                        counters[case].disable()
                    took = (time.perf_counter() - wall, time.thread_time() - cpu,
                            time.process_time() - proc)  # fmt: skip
                    if round_:
                        times[case].append(took)
            dispatch.dispatcher.flush()
    finally:
        app.control.purge()
        drop_database()
    if args.profile:
        profile.dump_stats(args.profile)
    calls = {}
    if counters:
        for case, counter in counters.items():
            counter.create_stats()
            total = sum(stat[1] for stat in counter.stats.values())  # type: ignore[attr-defined]
            calls[case] = round(total / len(times[case]), 2)
        print("\nPython function calls per request:", calls)

    print(f"\n{args.requests} requests x {args.rounds} rounds per case; per request, ms (mean;")
    print("the thread CPU's median and 10th percentile too: other processes only add to a")
    print("request's CPU time (caches, preemption), so on a busy machine these move least)")
    print(f"{'case':<6}{'thread CPU':>12}{'median':>9}{'p10':>9}{'process CPU':>13}{'wall':>9}")
    means = {}
    for case in CASES:
        cpus = sorted(1000 * c for _, c, _ in times[case])
        cpu = statistics.fmean(cpus)
        median, p10 = statistics.median(cpus), cpus[len(cpus) // 10]
        proc = statistics.fmean(1000 * p for _, _, p in times[case])
        wall = statistics.fmean(1000 * w for w, _, _ in times[case])
        means[case] = {"thread_cpu_ms": round(cpu, 4), "thread_cpu_median_ms": round(median, 4),
                       "thread_cpu_p10_ms": round(p10, 4), "process_cpu_ms": round(proc, 4),
                       "wall_ms": round(wall, 4)}  # fmt: skip
        print(f"({case})  {cpu:>12.4f}{median:>9.4f}{p10:>9.4f}{proc:>13.4f}{wall:>9.3f}")
    ratios = {
        "e_over_b_thread_cpu": round(means["e"]["thread_cpu_ms"] / means["b"]["thread_cpu_ms"], 3),
        "f_over_c_thread_cpu": round(means["f"]["thread_cpu_ms"] / means["c"]["thread_cpu_ms"], 3),
        "e_over_b_thread_cpu_median": round(
            means["e"]["thread_cpu_median_ms"] / means["b"]["thread_cpu_median_ms"], 3
        ),
        "b_minus_e_thread_cpu_median_ms": round(
            means["b"]["thread_cpu_median_ms"] - means["e"]["thread_cpu_median_ms"], 4
        ),
    }
    print("CPU ratios (the rate the CPU alone allows, relative to the floor):", ratios)
    print(json.dumps({"cases": means, **ratios, **({"calls_per_request": calls} if calls else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
