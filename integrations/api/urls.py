"""Mount with ``path("api/", include("integrations.api.urls"))``."""

from rest_framework.routers import SimpleRouter

from .views import CircuitBreakerViewSet

app_name = "integrations-api"

router = SimpleRouter()
router.register("circuit-breakers", CircuitBreakerViewSet, basename="circuit-breaker")

urlpatterns = router.urls
