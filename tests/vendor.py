"""The vendors' published payloads and test values, one copy for the whole suite.

The files live in ``tests/vendor_payloads/`` (where each comes from: its ``SOURCES.md``), inside
the repository so that the suite runs on a clean clone. Tests read them only through these two
functions, never by a path of their own (``tests/test_vendor_payloads.py`` holds to that).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PAYLOADS = Path(__file__).resolve().parent / "vendor_payloads"


def vendor_bytes(name: str) -> bytes:
    """The raw bytes of a file (what a vendor signs), by its path under ``vendor_payloads/``,
    e.g. ``vendor_bytes("github/push.payload.json")``."""
    path = (PAYLOADS / name).resolve()
    if not path.is_relative_to(PAYLOADS) or not path.is_file():
        raise FileNotFoundError(f"no vendor payload {name!r} in {PAYLOADS}")
    return path.read_bytes()


def vendor_json(name: str) -> Any:
    """The file parsed as JSON: a fresh object on every call, so a test may change it."""
    return json.loads(vendor_bytes(name))
