"""What the ``webhooks`` and ``integrations`` apps share, so that neither imports the other.

A plain package, not a Django app (nothing to add to ``INSTALLED_APPS``, no models): each app
builds on it and registers its own parts with it in ``AppConfig.ready()``.

- ``tether.conf``: ``AppSettings``, one lazily merged settings dict per app with one documented
  ``reload()``; ``SecretStr`` and the credential-naming rule.
- ``tether.dates``: ``utc_datetime``, ``parse_when``, ``DateOutOfRange``.
- ``tether.api``: the operator APIs' base (``OperatorAPIMixin``) and serializer fields.
- ``tether.metrics``: the Prometheus registry both apps' metrics join, and ``metrics_view``.
- ``tether.health``: the health checks both apps register, and the view that reports them.
- ``tether.fork``: what each app resets in a forked child (one ``os.register_at_fork``).
- ``tether.pytest_plugin``: resets process-local state around each test of a user's suite.

Nothing is imported here: each module is imported where it is used.
"""

__all__: list[str] = []
