"""Handler registry (stub: completed by the processing work)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def on(endpoint: str, pattern: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    raise NotImplementedError


def autodiscover() -> None:
    return None
