"""django-tether inbound webhooks: verify, store once, queue, process, replay.

The package stays light: names are imported on first use, so importing ``webhooks`` loads no
models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Ignore", "PermanentFailure", "on"]

if TYPE_CHECKING:
    from .exceptions import Ignore, PermanentFailure
    from .registry import on


def __getattr__(name: str) -> Any:
    if name in ("Ignore", "PermanentFailure"):
        from . import exceptions

        return getattr(exceptions, name)
    if name == "on":
        from .registry import on

        return on
    raise AttributeError(f"module 'webhooks' has no attribute {name!r}")
