"""A separate process that makes successful calls through a ``ServiceClient`` and exits:
``python -m tests.integrations.breaker.successes_proc URL COUNT [IDLE_SECONDS [FLUSH_SECONDS]]``.

Its database is the test database (``TETHER_DB_NAME``); its service "counted" points at the
FakeVendor that the test runs on 127.0.0.1. It prints how many calls succeeded, then stays idle
for ``IDLE_SECONDS`` (default 0) before it exits. ``FLUSH_SECONDS`` replaces the breaker's
``SUCCESS_FLUSH_INTERVAL`` in this process (its module constant, 30 s), so that a test of the
idle timer waits a few seconds rather than thirty.
"""

from __future__ import annotations

import os
import sys
import time


def main(vendor_url: str, count: int, idle: float, flush: float | None) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    from django.test import override_settings

    from integrations import ServiceClient, breaker

    if flush is not None:
        breaker.SUCCESS_FLUSH_INTERVAL = flush

    class Counted(ServiceClient):
        service = "counted"

    services = {"counted": {"BASE_URL": vendor_url, "RETRY": {"MAX_ATTEMPTS": 1}}}
    with override_settings(INTEGRATIONS={"SERVICES": services}):
        client = Counted()
        done = sum(1 for _ in range(count) if client.get_json("/ok", operation="ok") == {"ok": 1})
    print(done, flush=True)
    time.sleep(idle)


if __name__ == "__main__":
    main(
        sys.argv[1],
        int(sys.argv[2]),
        float(sys.argv[3]) if len(sys.argv) > 3 else 0.0,
        float(sys.argv[4]) if len(sys.argv) > 4 else None,
    )
