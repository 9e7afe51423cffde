"""Handler registry: ``@on(endpoint, pattern)`` and autodiscovery of apps' ``webhooks.py``.

Patterns, as octokit reads them:
- a glob with ``*`` (any run of characters, dots included) and ``?`` (one character):
  ``invoice.*``, ``customer.*.created``, ``*``;
- a plain name, which matches itself and everything below it: ``pull_request`` matches
  ``pull_request`` and ``pull_request.opened``, not ``pull_request_review``.

The same rules are translated to a database filter by ``webhooks.selectors.type_pattern_q``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .models import WebhookEvent

Handler = Callable[["WebhookEvent"], Any]
H = TypeVar("H", bound=Callable[..., Any])

GLOB_CHARS = frozenset("*?")


def is_glob(pattern: str) -> bool:
    """Whether ``pattern`` is a glob (contains ``*`` or ``?``) rather than a plain name."""
    return any(char in GLOB_CHARS for char in pattern)


def pattern_regex(pattern: str) -> str:
    """The anchored regular expression for ``pattern``, valid in Python and PostgreSQL."""
    if not is_glob(pattern):
        return "^" + re.escape(pattern) + r"(\..*)?$"
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return "^" + "".join(parts) + "$"


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern_regex(pattern), re.DOTALL)


def pattern_matches(pattern: str, event_type: str) -> bool:
    """Whether ``event_type`` matches ``pattern`` (a glob or a plain name, see module doc)."""
    if not is_glob(pattern):
        return event_type == pattern or event_type.startswith(pattern + ".")
    return _compiled(pattern).match(event_type) is not None


@dataclass(frozen=True)
class Registration:
    endpoint: str
    pattern: str
    handler: Handler

    @property
    def key(self) -> tuple[str, str, str, str]:
        h = self.handler
        return (self.endpoint, self.pattern, getattr(h, "__module__", ""), _qualname(h))


def _qualname(handler: Handler) -> str:
    return getattr(handler, "__qualname__", repr(handler))


def handler_name(handler: Handler) -> str:
    """The handler's dotted name (``module.qualname``), as logs and ``last_error`` give it."""
    module = getattr(handler, "__module__", None)
    qualname = _qualname(handler)
    return f"{module}.{qualname}" if module else qualname


class HandlerRegistry:
    """The handlers registered with ``@on``, in registration order."""

    def __init__(self) -> None:
        self._registrations: list[Registration] = []
        self._lock = threading.Lock()

    def register(self, endpoint: str, pattern: str, handler: Handler) -> None:
        if not endpoint or not isinstance(endpoint, str):
            raise ValueError("a webhook handler needs an endpoint name")
        if not pattern or not isinstance(pattern, str):
            raise ValueError("a webhook handler needs an event type pattern")
        if not callable(handler):
            raise TypeError(f"webhook handler {handler!r} is not callable")
        registration = Registration(endpoint, pattern, handler)
        with self._lock:
            # A module imported twice (under two names, or reloaded) replaces its own entry
            # instead of running the handler twice.
            self._registrations = [r for r in self._registrations if r.key != registration.key]
            self._registrations.append(registration)

    def handlers_for(self, endpoint: str, event_type: str) -> list[Handler]:
        return [
            r.handler
            for r in self._registrations
            if r.endpoint == endpoint and pattern_matches(r.pattern, event_type)
        ]

    def __iter__(self) -> Iterator[Registration]:
        return iter(list(self._registrations))

    def __len__(self) -> int:
        return len(self._registrations)

    def snapshot(self) -> list[Registration]:
        return list(self._registrations)

    def restore(self, snapshot: list[Registration]) -> None:
        with self._lock:
            self._registrations = list(snapshot)


registry = HandlerRegistry()


def on(endpoint: str, pattern: str) -> Callable[[H], H]:
    """Register the decorated function as a handler of ``endpoint``'s events matching ``pattern``.

    The handler receives the ``WebhookEvent``. It runs in its own transaction, together with
    its run's outcome (``HandlerRun``); raise ``webhooks.Ignore`` to end its run ``ignored``,
    ``webhooks.PermanentFailure`` to end it ``failed`` at once, anything else to have it retried
    (alone: the other handlers' runs stand).
    """

    def decorator(handler: H) -> H:
        registry.register(endpoint, pattern, handler)
        return handler

    return decorator


def handlers_for(endpoint: str, event_type: str) -> list[Handler]:
    """The handlers to run for an event of ``endpoint`` with ``event_type``, in order."""
    return registry.handlers_for(endpoint, event_type)


#: The longest dotted handler name accepted from an operator (``HandlerRun.handler``'s bound).
HANDLER_NAME_MAX_CHARS = 255
#: A dotted name as ``handler_name`` gives it: Python identifiers (a ``<locals>`` part allowed).
_DOTTED_NAME = re.compile(r"^[A-Za-z_<][A-Za-z0-9_<>]*(\.[A-Za-z_<][A-Za-z0-9_<>]*)+$")


class UnknownHandler(ValueError):
    """A dotted handler name that is malformed, too long, or not registered."""


def registrations_named(name: str) -> list[Registration]:
    """The registrations of the handler whose dotted name is ``name`` (one per ``@on``), after
    checking the name: ``UnknownHandler`` (with a message fit for an operator) when it is not a
    string, is longer than ``HANDLER_NAME_MAX_CHARS``, is not a dotted name, or names no
    registered handler."""
    if not isinstance(name, str) or not name.strip():  # type: ignore[redundant-expr]
        raise UnknownHandler("a handler is named by its dotted path (module.function)")
    name = name.strip()
    if len(name) > HANDLER_NAME_MAX_CHARS:
        raise UnknownHandler(f"a handler's dotted path is at most {HANDLER_NAME_MAX_CHARS} "
                             "characters")  # fmt: skip
    if not _DOTTED_NAME.match(name):
        raise UnknownHandler("not a dotted path (module.function): " + repr(name[:100]))
    found = [r for r in registry if run_name(r.handler) == name]
    if not found:
        raise UnknownHandler(f"no handler is registered under {name!r}")
    return found


def run_name(handler: Handler) -> str:
    """The name a handler's runs are kept under (``HandlerRun.handler``): its dotted name, cut at
    ``HANDLER_NAME_MAX_CHARS``."""
    return handler_name(handler)[:HANDLER_NAME_MAX_CHARS]


def named_handlers(handlers: Iterable[Handler]) -> list[tuple[str, Handler]]:
    """``(run name, handler)`` for each handler, once each: a handler registered under two
    patterns that both match runs once; a different callable under a name already taken (two
    lambdas of one module) gets ``#2``, ``#3``... in registration order."""
    named: list[tuple[str, Handler]] = []
    taken: dict[str, Handler] = {}
    for handler in handlers:
        name = base = run_name(handler)
        if taken.get(name) is handler:
            continue
        number = 1
        while name in taken:
            number += 1
            suffix = f"#{number}"
            name = base[: HANDLER_NAME_MAX_CHARS - len(suffix)] + suffix
        taken[name] = handler
        named.append((name, handler))
    return named


def handler_names_for(endpoint: str, event_type: str) -> list[str]:
    """The run names of ``handlers_for(endpoint, event_type)``, in order (``named_handlers``)."""
    return [name for name, _ in named_handlers(handlers_for(endpoint, event_type))]


def handlers_of_unknown_endpoints(endpoints: Iterable[str]) -> list[Registration]:
    """Registrations whose endpoint is not among ``endpoints`` (they can never run): reported
    by the system check ``webhooks.W001``."""
    known = set(endpoints)
    return [r for r in registry if r.endpoint not in known]


def autodiscover() -> None:
    """Import the ``webhooks`` module of every installed app, like ``admin.autodiscover``."""
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("webhooks")
