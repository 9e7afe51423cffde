"""Child processes of a benchmark: start them in their own process group, wait until they
answer, read their CPU time, and always stop them (even when the benchmark fails)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Child:
    """A process (and its process group) started by the benchmark."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None,
        log: Path,
        stdout_to_log: bool = False,
    ) -> None:
        """``stdout_to_log``: the child's stdout goes to its log too (a long-running child that
        prints, such as a Celery worker, must not fill a pipe nobody reads); otherwise it is
        a pipe for ``read_line`` and the caller."""
        self.name = name
        self.log = log
        self._log_file = log.open("wb")
        self.popen = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=env,
            stdout=self._log_file if stdout_to_log else subprocess.PIPE,
            stderr=self._log_file,
            start_new_session=True,  # its own group: stopping it stops its workers too
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def read_line(self, timeout: float) -> str:
        """The first line the child prints on stdout (e.g. ``READY 12345``), within timeout."""
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.popen.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise BenchError(f"{self.name} printed nothing in {timeout:.0f} s; see {self.log}")
        return self.popen.stdout.readline().decode().strip()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the group, then SIGKILL after ``timeout``; never raises. Does nothing the
        second time: by then its process group id may be another process's."""
        if self._log_file.closed:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        # Workers left behind by a crashed parent share its group id.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        if self.popen.stdout:
            self.popen.stdout.close()
        self._log_file.close()

    def children(self) -> list[int]:
        return children_of(self.popen.pid)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def cpu_of(pids: Sequence[int]) -> float:
    """User + system CPU seconds of these processes so far (a vanished process counts 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def background_cpu_of(pids: Sequence[int]) -> float:
    """CPU seconds of these processes' threads other than their main thread (e.g. a dispatcher
    thread publishing in the background)."""
    total = 0
    for pid in pids:
        try:
            tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir() if t.name != str(pid)]
        except OSError:
            continue
        for tid in tids:
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def wait_cpu_at_exit(popen: subprocess.Popen, timeout: float) -> tuple[float, float]:
    """Wait until ``popen``'s process exits and return (CPU seconds of all its threads, of its
    main thread alone), read from /proc before it is reaped (a zombie keeps its times); then
    reap it. The difference is what its other threads used, e.g. wrk's load-generating threads
    apart from its start-up and report."""
    pid = popen.pid
    deadline = time.monotonic() + timeout
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() > deadline:
            raise BenchError(f"process {pid} did not exit in {timeout:.0f} s")
        time.sleep(0.01)
    total = cpu_of([pid])
    try:
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        main = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except OSError:
        main = 0.0
    popen.wait()
    return total, main


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return (total - idle) / CLOCK_TICKS, total / CLOCK_TICKS


def wait_until(
    check: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.contextmanager
def children_stopped_on_exit() -> Iterator[list[Child]]:
    """A list to put started children in; all are stopped on exit, on error and on SIGTERM."""
    started: list[Child] = []

    def on_signal(signum, frame):  # turn SIGTERM into an exception so finally-blocks run
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        yield started
    finally:
        for child in reversed(started):
            child.stop()
        signal.signal(signal.SIGTERM, previous)
