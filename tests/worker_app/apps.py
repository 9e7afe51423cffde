from django.apps import AppConfig


class WorkerAppConfig(AppConfig):
    name = "tests.worker_app"
    label = "tether_worker_app"
    default_auto_field = "django.db.models.BigAutoField"
