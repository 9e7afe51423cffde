"""``sandbox_project/run.sh`` as ``make run`` starts it, in a test: the sandbox's own settings
on its embedded defaults (SQLite and kombu's filesystem broker, in a temporary state directory),
the web server and a real Celery worker with beat, in a session of their own.

    with SandboxRun(tmp_path) as run:          # waits for the banner
        urllib.request.urlopen(f"{run.url}/health/")
    assert not run.processes()                 # leaving the `with` stopped them as Ctrl-C does
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.servers import ROOT, free_port

SCRIPT = ROOT / "sandbox_project" / "run.sh"
BANNER = "django-tether sandbox is running"


def _terminal_signals() -> None:
    """In the child before it runs the script: SIGINT and SIGQUIT back to their defaults, as a
    terminal's shell starts a command. A test run started in the background by a non-interactive
    shell ignores both and its children inherit that; a shell that starts with SIGINT ignored
    cannot trap it, so the script's Ctrl-C handling would go untested."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


class SandboxRun:
    def __init__(
        self, state_dir: Path, *, port: int | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.state_dir = state_dir
        self.port = port or free_port()
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"DATABASE_URL", "CELERY_BROKER_URL", "DJANGO_SETTINGS_MODULE"}
        }
        self.env.update(
            VENV=sys.prefix,  # this test run's virtualenv
            SANDBOX_STATE_DIR=str(state_dir),
            SANDBOX_PORT=str(self.port),
        )
        self.env.update(env or {})
        self.log_path = state_dir.parent / f"{state_dir.name}-run.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> SandboxRun:
        """Start the script; returns at once (``wait_for_banner`` or ``wait`` next)."""
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(SCRIPT)],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own session and process group, as a terminal's
                preexec_fn=_terminal_signals,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_banner(self, timeout: float = 180) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while BANNER not in self.log():
            if self.process.poll() is not None:
                raise AssertionError(f"run.sh exited ({self.process.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no banner after {timeout}s:\n{self.log()}")
            time.sleep(0.1)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C: SIGINT to the script's whole process group, as a terminal sends it."""
        assert self.process is not None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout)

    def processes(self, settle: float = 15) -> list[str]:
        """The command lines of the processes still alive in the script's session (zombies
        aside), after waiting up to ``settle`` seconds for them to go."""
        deadline = time.monotonic() + settle
        while True:
            alive = session_processes(self.process.pid) if self.process else []
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.2)

    def kill(self) -> None:
        """Whatever is left of the session, killed (a test's clean-up, never its assertion)."""
        if self.process is None:
            return
        for pid in session_pids(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(10)

    def __enter__(self) -> SandboxRun:
        self.start()
        try:
            self.wait_for_banner()
        except BaseException:
            self.kill()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self.interrupt()
        finally:
            self.kill()


def _stat(pid: str) -> tuple[str, int] | None:
    """(state, session id) of a process, from /proc (None if it has gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[3])


def session_pids(session: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(entry.name)
            if stat and stat[1] == session and stat[0] != "Z":
                pids.append(int(entry.name))
    return pids


def session_processes(session: int) -> list[str]:
    found = []
    for pid in session_pids(session):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found.append(f"{pid}: {command.strip()}")
    return found
