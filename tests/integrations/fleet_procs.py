"""Code run in OTHER OS processes by the shared-policy tests (``test_fleet_multiprocess.py``).

Each function is a ``multiprocessing`` 'spawn' target: a fresh interpreter with its own Django,
database connection, Redis client and HTTP pool, configured with the ``INTEGRATIONS`` it is
given (``override_settings`` in the test process does not reach it).
"""

from __future__ import annotations

import collections
import os
import threading
import time
import traceback
from typing import Any


def _setup(db_name: str) -> None:
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    os.environ["TETHER_DB_NAME"] = db_name
    import django

    django.setup()


def call_until(
    db_name: str,
    integrations: dict[str, Any],
    service: str,
    path: str,
    seconds: float,
    threads: int,
    barrier: Any,
    queue: Any,
) -> None:
    """With ``threads`` threads, call ``GET path`` of ``service`` as fast as possible for
    ``seconds`` after every process is ready; report how many calls ended in each outcome."""
    try:
        _setup(db_name)
        from django.test import override_settings

        from integrations.client import ServiceClient

        client = type("FleetClient", (ServiceClient,), {"service": service})()
        outcomes: collections.Counter[str] = collections.Counter()
        lock = threading.Lock()

        def loop() -> None:
            while time.time() < until:
                try:
                    client.get_json(path, operation="get")
                    outcome = "success"
                except Exception as error:  # every outcome is counted, none stops the loop
                    outcome = type(error).__name__
                with lock:
                    outcomes[outcome] += 1

        with override_settings(INTEGRATIONS=integrations):
            client.get_json("/warm", operation="warm")  # connections and scripts loaded
            barrier.wait(timeout=60)
            until = time.time() + seconds
            workers = [threading.Thread(target=loop) for _ in range(threads)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        queue.put(("ok", dict(outcomes)))
    except BaseException:
        queue.put(("error", traceback.format_exc()))
