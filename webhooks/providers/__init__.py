"""Providers: one small class per vendor scheme, behind one interface (``Provider``).

``get_provider(endpoint)`` builds the provider of ``WEBHOOKS["ENDPOINTS"][endpoint]``: its
``PROVIDER`` is a built-in name (``stripe``, ``github``, ``standard``, ``hmac``) or the dotted
path of a ``Provider`` subclass. Instances are kept until ``webhooks_settings`` reloads (a change
of ``WEBHOOKS``, or ``reload()``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.utils.module_loading import import_string
from django.views.decorators.debug import sensitive_variables

from tether.conf import SECRET_VARIABLES

from ..conf import ConfigProblem, webhooks_settings
from ..exceptions import UnknownEndpoint, WebhookConfigurationError
from .base import ParsedEvent, Provider, Sample, endpoint_key

__all__ = [
    "BUILTIN_PROVIDERS",
    "ConfigProblem",
    "ParsedEvent",
    "Provider",
    "Sample",
    "endpoint_config",
    "get_provider",
    "provider_class",
]

BUILTIN_PROVIDERS: dict[str, str] = {
    "stripe": "webhooks.providers.stripe.StripeProvider",
    "github": "webhooks.providers.github.GitHubProvider",
    "standard": "webhooks.providers.standard.StandardWebhooksProvider",
    "hmac": "webhooks.providers.hmac.HmacProvider",
}

#: endpoint -> its provider, built from the current settings (emptied by their reload).
_cache: dict[str, Provider] = {}
webhooks_settings.register_cache(_cache.clear)


@sensitive_variables(*SECRET_VARIABLES)
def endpoint_config(endpoint: str) -> Mapping[str, Any]:
    """The settings dict of an endpoint; ``UnknownEndpoint`` if there is none."""
    endpoints = webhooks_settings["ENDPOINTS"]
    if not isinstance(endpoints, Mapping):
        raise WebhookConfigurationError('WEBHOOKS["ENDPOINTS"] must be a dict of endpoints.')
    config = endpoints.get(endpoint)
    if config is None:
        raise UnknownEndpoint(endpoint)
    if not isinstance(config, Mapping):
        raise WebhookConfigurationError(f"{endpoint_key(endpoint)} must be a dict.")
    return config


@sensitive_variables(*SECRET_VARIABLES)
def provider_class(endpoint: str, config: Mapping[str, Any]) -> type[Provider]:
    """The class named by the endpoint's ``PROVIDER``; ``WebhookConfigurationError`` (naming the
    key) if it is missing, unknown, not importable or not a ``Provider`` subclass."""
    key = endpoint_key(endpoint, "PROVIDER")
    name = config.get("PROVIDER")
    if not isinstance(name, str) or not name:
        raise WebhookConfigurationError(
            f"{key}: no provider set; give a built-in name or a dotted path."
        )
    path = BUILTIN_PROVIDERS.get(name, name)
    if "." not in path:
        raise WebhookConfigurationError(
            f"{key}: unknown provider {name!r}; built-in ones are {', '.join(BUILTIN_PROVIDERS)}."
        )
    try:
        cls = import_string(path)
    except ImportError as exc:
        raise WebhookConfigurationError(f"{key}: cannot import {path!r} ({exc}).") from exc
    if not isinstance(cls, type) or not issubclass(cls, Provider):
        raise WebhookConfigurationError(
            f"{key}: {path!r} is not a subclass of webhooks.providers.Provider."
        )
    return cls


@sensitive_variables(*SECRET_VARIABLES)
def get_provider(endpoint: str) -> Provider:
    """The provider of an endpoint, built from its settings.

    Raises ``UnknownEndpoint`` for a name not in ``WEBHOOKS["ENDPOINTS"]`` and
    ``WebhookConfigurationError`` (naming the exact key) for a misconfigured one.
    """
    provider = _cache.get(endpoint)
    if provider is None:
        merged = webhooks_settings.merged
        config = endpoint_config(endpoint)
        provider = provider_class(endpoint, config)(endpoint, config)
        webhooks_settings.remember(_cache, endpoint, provider, source=merged)
    return provider
