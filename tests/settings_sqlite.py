"""The test settings on SQLite instead of PostgreSQL: the sandbox's default database, a file
(not ``:memory:``, so that every connection and process sees the same data), with the sandbox's
options for concurrent writers (``SQLITE_CONCURRENT_WRITERS``). Redis and the rest are those of
``tests.settings``.

``make test-sqlite`` runs the suite's database-agnostic part with them: tests marked
``postgres`` (they need PostgreSQL; the marker says why) are deselected, and counted by reason at
the end of the run (``tests/conftest.py``). Environment: ``TETHER_TEST_DB`` names the test
database's file (``<TETHER_SQLITE_DIR or the temporary directory>/<TETHER_TEST_DB>.sqlite3``).
"""

import os
import tempfile
from pathlib import Path

from tests.settings import *  # noqa: F403
from tests.settings import SQLITE_CONCURRENT_WRITERS

_directory = Path(os.environ.get("TETHER_SQLITE_DIR") or tempfile.gettempdir())
_name = os.environ.get("TETHER_TEST_DB", "test_tether")

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(_directory / f"{_name}-main.sqlite3"),
        "OPTIONS": dict(SQLITE_CONCURRENT_WRITERS),
        "TEST": {"NAME": str(_directory / f"{_name}.sqlite3")},
    }
}
