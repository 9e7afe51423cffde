"""URLconf of ``tests.settings_webhooks_only``: what a project with only webhooks mounts."""

from django.contrib import admin
from django.urls import include, path

from webhooks.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("webhooks/", include("webhooks.urls")),
    path("api/", include("webhooks.api.urls")),
    path("health/", include("webhooks.health")),
    path("metrics", metrics_view),
]
