from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = _("Webhooks")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from .health import register_checks
        from .registry import autodiscover

        autodiscover()
        register_checks()  # the broker and the event backlog, in tether.health's view

        from .metrics import connect_receivers

        connect_receivers()  # Prometheus metrics, only with the django-tether[metrics] extra
