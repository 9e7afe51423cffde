"""Run a piece of a test in a forked child, as a gunicorn or Celery prefork worker runs."""

from __future__ import annotations

import json
import os
import select
import signal
from collections.abc import Callable
from typing import Any

from django.db import connection


def _no_query(execute, sql, params, many, context):
    raise RuntimeError("the child queried the database (its connection is the parent's)")


def in_a_child(work: Callable[[], Any], *, timeout: float = 30.0) -> Any:
    """Fork; the child runs ``work`` and exits, and its result (JSON) is returned here. A query
    in the child raises there (the inherited connection is the parent's and must stay
    untouched); an exception in the child fails the test here, with its type and message, and
    so does a child still running after ``timeout`` seconds (e.g. stuck on a lock inherited
    held), which is killed."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the library's after-fork resets have run already
        try:
            os.close(read_end)
            try:
                with connection.execute_wrapper(_no_query):
                    answer = {"result": work()}
            except BaseException as exc:
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(write_end, json.dumps(answer, default=str).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        if not select.select([reader], [], [], timeout)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the forked child did not finish in {timeout} s")
        data = reader.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    answer = json.loads(data)
    if "error" in answer:
        raise AssertionError(f"in the forked child: {answer['error']}")
    return answer["result"]
