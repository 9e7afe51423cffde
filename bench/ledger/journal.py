"""The invocation journal: one line per handler invocation (and per refused second effect),
appended to a file per process in ``settings.CHAOS_JOURNAL_DIR``.

A file, not a table or a Redis key, so that no fault the soak injects (a rolled-back
transaction, a terminated database connection, an emptied broker) can erase or roll back a
count: each line is one ``write()`` to a file opened with ``O_APPEND``, in the kernel's page cache
as soon as the call returns, even if the process is SIGKILLed right after.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

#: A handler was called for the event (attempt number as the event counted it).
INVOKED = "invoked"
#: The handler's effect insert hit the unique constraint: a second effect was attempted.
DOUBLE = "double"

_files: dict[tuple[int, str], int] = {}  # (pid, directory) -> file descriptor


def record(kind: str, event_id: str, attempt: int) -> None:
    """Append ``kind event_id attempt pid`` to this process's journal file."""
    from django.conf import settings

    directory = settings.CHAOS_JOURNAL_DIR
    if not directory:
        return
    pid = os.getpid()
    fd = _files.get((pid, directory))
    if fd is None:  # first line of this process (a forked child gets its own file)
        path = Path(directory) / f"journal-{pid}.log"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _files[pid, directory] = fd
    os.write(fd, f"{kind} {event_id} {attempt} {pid}\n".encode())


@dataclass
class Journal:
    """What the journal files of a run say, per event id."""

    invocations: dict[str, list[int]] = field(default_factory=dict)  # the attempt of each
    doubles: Counter[str] = field(default_factory=Counter)


def read(directory: Path) -> Journal:
    journal = Journal()
    for path in sorted(directory.glob("journal-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) != 4:
                continue  # a line cut short by a SIGKILL mid-write
            kind, event_id, attempt = parts[0], parts[1], parts[2]
            if kind == INVOKED:
                journal.invocations.setdefault(event_id, []).append(int(attempt))
            elif kind == DOUBLE:
                journal.doubles[event_id] += 1
    return journal
