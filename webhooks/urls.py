"""Include under any prefix: ``path("webhooks/", include("webhooks.urls"))``.

``reverse("webhooks:receive", args=[endpoint])`` gives an endpoint's URL.
"""

from django.urls import path

from . import views

app_name = "webhooks"
urlpatterns = [
    path("<str:endpoint>/", views.receive, name="receive"),
]
