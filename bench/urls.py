"""The sandbox's URLs plus the benchmark's reference views: the bare JSON view (baseline) and
the floor of receiving (``bench/views.py``)."""

from django.urls import path

from sandbox_project.urls import urlpatterns as sandbox_urlpatterns

from .views import bare, bare_async, floor, floor_async

urlpatterns = [
    *sandbox_urlpatterns,
    path("bench/bare/", bare, name="bench-bare"),
    path("bench/floor/", floor, name="bench-floor"),
    # Under ASGI (bench/ingest.py --asgi): the same two as async views.
    path("bench/bare-async/", bare_async, name="bench-bare-async"),
    path("bench/floor-async/", floor_async, name="bench-floor-async"),
]
