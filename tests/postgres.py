"""Why a test needs PostgreSQL: the ``@pytest.mark.postgres(reason)`` markers of the suite, one
per reason. ``tests/conftest.py`` deselects the tests so marked when the database is not
PostgreSQL (``make test-sqlite``) and lists how many for each reason at the end of the run;
everything else runs on both databases."""

from __future__ import annotations

import pytest

#: webhooks.storage's PostgreSQL path: server-side binding, prepared statements, their plans and
#: the indexes they use, the one-statement INSERT ... ON CONFLICT, the claim's CTE.
STATEMENTS = pytest.mark.postgres(
    "the PostgreSQL statements of webhooks.storage (binding, preparing, plans, indexes, "
    "the one-statement insert and claim)"
)
#: synchronous_commit, relaxed for the claim's own commit only.
DURABILITY = pytest.mark.postgres("synchronous_commit, a PostgreSQL setting")
#: Row locks taken with SELECT ... FOR UPDATE (SKIP LOCKED), which SQLite has not.
ROW_LOCKS = pytest.mark.postgres("row locks (SELECT ... FOR UPDATE SKIP LOCKED)")
#: What PostgreSQL refuses to store (a NUL in jsonb) and the DataError it raises.
DATA_ERRORS = pytest.mark.postgres("what PostgreSQL refuses to store (NUL in jsonb): DataError")
#: SQL written for PostgreSQL in the test itself (casts such as ::timestamptz).
SQL = pytest.mark.postgres("SQL written for PostgreSQL in the test (::timestamptz casts)")
#: A subprocess on tests.worker_settings, which reaches the test database through PostgreSQL.
SUBPROCESS = pytest.mark.postgres(
    "a subprocess on tests.worker_settings, which connects to the PostgreSQL test database"
)
#: The admin's search by a payload value, which only PostgreSQL offers (elsewhere the search box
#: finds event ids only).
PAYLOAD_SEARCH = pytest.mark.postgres("search by a payload value, offered on PostgreSQL only")
#: A trigger written in PL/pgSQL by the test, to make the database fail on cue.
TRIGGERS = pytest.mark.postgres("a PL/pgSQL trigger the test creates to make a statement fail")
