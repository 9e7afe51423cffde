"""The sandbox's URLs plus the baseline: a bare JSON view served by the same project."""

from django.urls import path

from sandbox_project.urls import urlpatterns as sandbox_urlpatterns

from .views import bare

urlpatterns = [*sandbox_urlpatterns, path("bench/bare/", bare, name="bench-bare")]
