from django.apps import AppConfig


class DemoConfig(AppConfig):
    name = "sandbox_project.demo"
    label = "demo"
    verbose_name = "Sandbox demo shop"
    default_auto_field = "django.db.models.BigAutoField"
