"""URLconf of ``tests.settings_integrations_only``: what a project with only integrations
mounts (the health view and the metrics from the shared core, ``tether``)."""

from django.contrib import admin
from django.urls import include, path

from tether.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("integrations.api.urls")),
    path("health/", include("tether.health")),
    path("metrics", metrics_view),
]
