"""Include under any prefix: ``path("webhooks/", include("webhooks.urls"))``.

``reverse("webhooks:receive", args=[endpoint])`` gives an endpoint's URL. The view behind
it is the sync or the async one, as ``WEBHOOKS["RECEIVE_VIEW"]`` says (``"auto"``: the async
one under ASGI; ``webhooks.views``).
"""

from . import views

app_name = "webhooks"
urlpatterns = [
    views.receive_path("<str:endpoint>/", name="receive"),
]
