from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _

from tether.vendor_events import register_event_lister


class IntegrationsConfig(AppConfig):
    name = "integrations"
    verbose_name = _("Integrations")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .health import register_checks
        from .metrics import connect_receivers
        from .vendors.stripe import list_undelivered_events

        register_checks()  # open circuit breakers, in tether.health's view
        connect_receivers()  # Prometheus metrics, only with the django-tether[metrics] extra
        # Stripe's undelivered events, for webhooks' reconcile_webhooks (the seam is tether's:
        # neither app imports the other).
        register_event_lister("stripe", list_undelivered_events)
