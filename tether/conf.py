"""One settings object per app, read at call time, with one reload (as DRF's ``api_settings``).

``AppSettings(name, defaults)`` is a lazy view of ``settings.<name>`` (``WEBHOOKS``,
``INTEGRATIONS``) merged key by key over the app's defaults: merged on first read, kept, and
read as a plain dict afterwards (``webhooks_settings["TOLERANCE"]``). Settings are read at call
time, never at import. Each app's settings object is its only settings state: whatever a module
derives from the settings and keeps (built providers, per-service merges, a flag read from
Celery's settings) is registered with it (``register_cache``), and its one ``reload()`` forgets
the merged dict and empties every such cache. ``reload()`` runs on ``setting_changed`` for the
app's setting (so ``override_settings`` and pytest-django's ``settings`` fixture clear every
derived cache), and for the other settings a registered cache said it depends on; call it
yourself after changing settings by other means.

Secrets are wrapped once, where the settings are merged: every string under a key that names a
credential (``is_secret_key``: ``SECRETS``, ``API_KEY``, ``CLIENT_SECRET``, ``ACCESS_TOKEN``,
``PASSWORD``...), alone or in a list or tuple, at any depth, is a ``SecretStr``: still the same
``str`` wherever it is used (HMAC keys, the ``stripe`` SDK, ``standardwebhooks``), but its
``repr`` hides it. Django's technical 500 page and error reporters that capture local variables
(Sentry) show values by their ``repr``, so no dict or local holding our settings shows a
secret, ``DEBUG`` or not. With ``DEBUG`` off, the functions that handle secrets are also
``sensitive_variables(*SECRET_VARIABLES)``, for ``SafeExceptionReporterFilter``. A user's own
settings dicts are not changed (Django's settings page hides them by their key names).
"""

from __future__ import annotations

import copy
import difflib
import re
import threading
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, TypeVar, overload

from django.conf import settings
from django.core.signals import setting_changed
from django.views.decorators.debug import sensitive_variables

__all__ = [
    "SECRET_KEY_NAME",
    "SECRET_VARIABLES",
    "AppSettings",
    "SecretStr",
    "deep_merge",
    "hide_secrets",
    "is_secret_key",
]


class SecretStr(str):
    """A secret whose ``repr`` never shows it (tracebacks, debug pages, ``repr`` of objects).

    It is a ``str`` with the same value everywhere else (``str()``, formatting, ``encode``,
    comparisons), so code that uses the secret needs no change."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'<secret>'"


#: A settings key whose string values are credentials: ``SECRETS``, ``SECRET``, ``KEY``,
#: ``TOKEN``, ``PASSWORD``, or a name ending in one of them after an underscore (``API_KEY``,
#: ``CLIENT_SECRET``, ``ACCESS_TOKEN``, ``DB_PASSWORD``); any case. ``KEY_PREFIX`` is not one.
SECRET_KEY_NAME = re.compile(r"(?:^|_)(?:SECRETS?|KEY|TOKEN|PASSWORD)$", re.IGNORECASE)

#: Local variables that hold secrets (or all of an endpoint's or a service's settings) in the
#: functions that handle them: hidden by ``SafeExceptionReporterFilter`` when ``DEBUG`` is off,
#: in those functions' frames and the frames they call (``sensitive_variables``).
SECRET_VARIABLES = (
    "secret",
    "secrets",
    "key",
    "api_key",
    "config",
    "endpoints",
    "expected",
    "expected_text",
    "digest",
    "user",
    "override",
    "merged",
)


def is_secret_key(key: Any) -> bool:
    """Whether the values under settings key ``key`` are credentials (``SECRET_KEY_NAME``)."""
    return isinstance(key, str) and SECRET_KEY_NAME.search(key) is not None


_V = TypeVar("_V")


@overload
def hide_secrets(value: Mapping[str, Any], key: Any = None) -> dict[str, Any]: ...
@overload
def hide_secrets(value: _V, key: Any = None) -> _V: ...


def hide_secrets(value: Any, key: Any = None) -> Any:
    """``value`` (settings found under ``key``) with every credential a ``SecretStr``: a string
    under a secret key (``is_secret_key``), or a string in a list or tuple under one; dicts are
    walked at every depth (copied, never changed in place); everything else is kept as is."""
    if isinstance(value, Mapping):
        return {name: hide_secrets(item, name) for name, item in value.items()}
    if not is_secret_key(key):
        return value
    if isinstance(value, str):
        return SecretStr(value)
    if isinstance(value, list | tuple):
        return type(value)(SecretStr(item) if isinstance(item, str) else item for item in value)
    return value


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated by ``override`` key by key, recursing into nested dicts."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def unknown_key_hint(name: str, known: Iterable[str]) -> str:
    """The hint of a system check that reports an unknown settings key: the closest known key,
    if one is close ("did you mean"), and every known key."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=1)
    return (f"Did you mean {close[0]!r}? " if close else "") + f"Known keys: {', '.join(known)}."


class AppSettings:
    """Lazy, merged view of one settings dict, and the caches derived from it; ``reload()``
    forgets both (on ``setting_changed``, or when called)."""

    def __init__(self, setting_name: str, defaults: Mapping[str, Any]) -> None:
        self.setting_name = setting_name
        self.defaults = defaults
        self._merged: dict[str, Any] | None = None
        self._lock = threading.RLock()
        self._caches: list[Callable[[], None]] = []
        self._also_on: tuple[str, ...] = ()
        setting_changed.connect(self._on_setting_changed, weak=False)

    @property
    def merged(self) -> dict[str, Any]:
        """The user's dict merged over the defaults, its secrets wrapped (``hide_secrets``)."""
        merged = self._merged
        if merged is None:
            merged = self._load()
        return merged

    def _load(self) -> dict[str, Any]:
        with self._lock:  # a reload waits for a merge under way, so it never outlives one
            if self._merged is None:
                self._merged = self._merge()
            return self._merged

    @sensitive_variables(*SECRET_VARIABLES)
    def _merge(self) -> dict[str, Any]:
        user = getattr(settings, self.setting_name, None) or {}
        return hide_secrets(deep_merge(self.defaults, user))

    def __getitem__(self, key: str) -> Any:
        return self.merged[key]

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or not key.isupper():
            raise AttributeError(key)
        try:
            return self.merged[key]
        except KeyError as exc:
            raise AttributeError(f"{self.setting_name} has no key {key!r}") from exc

    def register_cache(self, clear: Callable[[], None], *, also_on: Iterable[str] = ()) -> None:
        """Have ``reload()`` call ``clear``, which empties a cache derived from these settings.

        ``also_on``: prefixes of other Django settings the cache also depends on (``"CELERY"``):
        a change of one of them reloads too."""
        with self._lock:
            if clear not in self._caches:
                self._caches.append(clear)
            self._also_on = tuple(dict.fromkeys((*self._also_on, *also_on)))

    def remember(
        self, cache: MutableMapping[Any, Any], key: Any, value: Any, *, source: dict[str, Any]
    ) -> None:
        """Store ``value``, derived from ``source`` (the ``merged`` dict it was computed from),
        in a registered ``cache``, unless the settings were reloaded meanwhile: a value built
        from settings that have changed since is used once by its caller, never kept."""
        with self._lock:
            if self._merged is source:
                cache[key] = value

    def reload(self) -> None:
        """Forget the merged dict and empty every registered cache: the next read merges the
        settings again."""
        with self._lock:
            self._merged = None
            for clear in self._caches:
                clear()

    def _on_setting_changed(self, *, setting: str, **kwargs: Any) -> None:
        if setting == self.setting_name or setting.startswith(self._also_on):
            self.reload()
