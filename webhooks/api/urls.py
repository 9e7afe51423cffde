"""Mount with ``path("api/", include("webhooks.api.urls"))``."""

from rest_framework.routers import SimpleRouter

from .views import WebhookEventViewSet

app_name = "webhooks-api"

router = SimpleRouter()
router.register("webhook-events", WebhookEventViewSet, basename="webhook-event")

urlpatterns = router.urls
