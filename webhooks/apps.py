from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = _("Webhooks")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import (
            checks,  # noqa: F401  (registers the system checks)
            tasks,  # noqa: F401  (registers the Celery tasks queueing publishes by name)
        )
        from .dispatch import dispatcher
        from .health import register_checks
        from .metrics import connect_receivers
        from .queueing import publish_process_batch
        from .registry import autodiscover

        dispatcher.publish_with(publish_process_batch)  # the dispatcher publishes process_events
        autodiscover()
        register_checks()  # the broker and the event backlog, in tether.health's view
        connect_receivers()  # Prometheus metrics, only with the django-tether[metrics] extra
