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
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from .models import WebhookEvent

Handler = Callable[["WebhookEvent"], Any]
H = TypeVar("H", bound=Callable[..., Any])
#: Where an ordered handler reads a value: a dotted path into the payload, or a callable of the
#: event.
ValueSource = str | Callable[["WebhookEvent"], Any]
Stale = Literal["skip", "deliver"]
STALE_CHOICES: tuple[str, ...] = ("skip", "deliver")
#: The longest dotted path accepted by ``ordering_key``/``ordering_version``, in characters, and
#: its most segments.
PATH_MAX_CHARS = 200
PATH_MAX_SEGMENTS = 16

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
class OrderingSpec:
    """What an ordered handler orders by (``@on(..., ordering_key=..., ...)``), validated when it
    is registered; ``webhooks.ordering`` reads the values and decides.

    ``key`` and ``version`` are a path (a tuple of the dotted path's segments) or a callable of
    the event; ``version`` None means the event's ``occurred_at``.
    """

    key: tuple[str, ...] | Callable[[WebhookEvent], Any]
    version: tuple[str, ...] | Callable[[WebhookEvent], Any] | None
    stale: Stale
    #: How the key and version were given, for messages: the dotted path or the callable's name.
    key_label: str
    version_label: str

    @classmethod
    def build(
        cls, key: ValueSource, version: ValueSource | None = None, stale: str = "skip"
    ) -> OrderingSpec:
        if stale not in STALE_CHOICES:
            raise ValueError(f'stale must be "skip" or "deliver", not {stale!r}')
        key_source, key_label = _value_source("ordering_key", key)
        if version is None:
            version_source, version_label = None, "occurred_at"
        else:
            version_source, version_label = _value_source("ordering_version", version)
        return cls(
            key_source,
            version_source,
            "deliver" if stale == "deliver" else "skip",
            key_label,
            version_label,
        )


def _value_source(name: str, source: Any) -> tuple[tuple[str, ...] | Callable[..., Any], str]:
    """A dotted path split into its segments, or a callable as it is; a clear error otherwise."""
    if callable(source):
        return source, handler_name(source)
    if not isinstance(source, str):
        raise TypeError(
            f"{name} must be a dotted path into the payload or a callable of the event, "
            f"not {type(source).__name__}"
        )
    if len(source) > PATH_MAX_CHARS:
        raise ValueError(f"{name} is longer than {PATH_MAX_CHARS} characters")
    segments = tuple(source.split("."))
    if not source or any(not segment or segment != segment.strip() for segment in segments):
        raise ValueError(
            f"{name} {source!r} is not a dotted path (non-empty names separated by dots, "
            'such as "data.object.id")'
        )
    if len(segments) > PATH_MAX_SEGMENTS:
        raise ValueError(f"{name} has more than {PATH_MAX_SEGMENTS} segments")
    return segments, source


@dataclass(frozen=True)
class Registration:
    endpoint: str
    pattern: str
    handler: Handler
    #: What the handler orders by; None for an unordered handler (the default).
    ordering: OrderingSpec | None = None

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

    def register(
        self, endpoint: str, pattern: str, handler: Handler, ordering: OrderingSpec | None = None
    ) -> None:
        if not endpoint or not isinstance(endpoint, str):
            raise ValueError("a webhook handler needs an endpoint name")
        if not pattern or not isinstance(pattern, str):
            raise ValueError("a webhook handler needs an event type pattern")
        if not callable(handler):
            raise TypeError(f"webhook handler {handler!r} is not callable")
        registration = Registration(endpoint, pattern, handler, ordering)
        with self._lock:
            # A module imported twice (under two names, or reloaded) replaces its own entry
            # instead of running the handler twice.
            self._registrations = [r for r in self._registrations if r.key != registration.key]
            self._registrations.append(registration)

    def handlers_for(self, endpoint: str, event_type: str) -> list[Handler]:
        return [r.handler for r in self.registrations_for(endpoint, event_type)]

    def registrations_for(self, endpoint: str, event_type: str) -> list[Registration]:
        return [
            r
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


def on(
    endpoint: str,
    pattern: str,
    *,
    ordering_key: ValueSource | None = None,
    ordering_version: ValueSource | None = None,
    stale: Stale = "skip",
) -> Callable[[H], H]:
    """Register the decorated function as a handler of ``endpoint``'s events matching ``pattern``.

    The handler receives the ``WebhookEvent``. It runs in its own transaction, together with
    its run's outcome (``HandlerRun``); raise ``webhooks.Ignore`` to end its run ``ignored``,
    ``webhooks.PermanentFailure`` to end it ``failed`` at once, anything else to have it retried
    (alone: the other handlers' runs stand).

    With ``ordering_key`` (a dotted path into the payload, such as ``"data.object.id"``, or a
    callable of the event returning a string) the handler is **ordered** per key: an event older
    than the newest version already applied for its key (``ordering_version``: a dotted path or
    a callable; by default the event's ``occurred_at``) is not passed to it (``stale="skip"``:
    its run ends ``skipped``, the reason naming the newer event), or is passed with
    ``event.ordering.stale`` true (``stale="deliver"``); runs of one key never overlap. See
    ``webhooks.ordering`` and docs/webhooks/ordering.md.
    """
    ordering = None
    if ordering_key is not None:
        ordering = OrderingSpec.build(ordering_key, ordering_version, stale)
    elif ordering_version is not None or stale != "skip":
        raise ValueError("ordering_version and stale need an ordering_key")

    def decorator(handler: H) -> H:
        registry.register(endpoint, pattern, handler, ordering)
        return handler

    return decorator


def handlers_for(endpoint: str, event_type: str) -> list[Handler]:
    """The handlers to run for an event of ``endpoint`` with ``event_type``, in order."""
    return registry.handlers_for(endpoint, event_type)


def registrations_for(endpoint: str, event_type: str) -> list[Registration]:
    """The registrations (handler and ordering) matching an event, in order."""
    return registry.registrations_for(endpoint, event_type)


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


def named_registrations(registrations: Iterable[Registration]) -> list[tuple[str, Registration]]:
    """``(run name, registration)`` for each handler, once each: a handler registered under two
    patterns that both match runs once, under its first matching registration (whose ordering,
    if any, applies); a different callable under a name already taken (two lambdas of one
    module) gets ``#2``, ``#3``... in registration order."""
    named: list[tuple[str, Registration]] = []
    seen: list[Handler] = []  # by identity: a handler need not be hashable
    taken: set[str] = set()
    for registration in registrations:
        handler = registration.handler
        if any(handler is other for other in seen):
            continue
        name = base = run_name(handler)
        number = 1
        while name in taken:
            number += 1
            suffix = f"#{number}"
            name = base[: HANDLER_NAME_MAX_CHARS - len(suffix)] + suffix
        seen.append(handler)
        taken.add(name)
        named.append((name, registration))
    return named


def handler_names_for(endpoint: str, event_type: str) -> list[str]:
    """The run names of the handlers matching an event, in order (``named_registrations``)."""
    return [name for name, _ in named_registrations(registrations_for(endpoint, event_type))]


def handlers_of_unknown_endpoints(endpoints: Iterable[str]) -> list[Registration]:
    """Registrations whose endpoint is not among ``endpoints`` (they can never run): reported
    by the system check ``webhooks.W001``."""
    known = set(endpoints)
    return [r for r in registry if r.endpoint not in known]


def autodiscover() -> None:
    """Import the ``webhooks`` module of every installed app, like ``admin.autodiscover``."""
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("webhooks")
