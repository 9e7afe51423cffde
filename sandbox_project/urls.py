from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from webhooks.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("webhooks/", include("webhooks.urls")),
    # Operator surface: REST API (admin-only by default), its OpenAPI schema, health, metrics.
    path("api/", include("webhooks.api.urls")),
    path("api/", include("integrations.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("health/", include("webhooks.health")),
    path("metrics", metrics_view, name="metrics"),
]
