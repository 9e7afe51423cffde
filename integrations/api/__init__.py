"""Operator REST API for circuit breakers (Django REST framework).

Mount it with ``path("api/", include("integrations.api.urls"))``; ``"rest_framework"`` must be
in ``INSTALLED_APPS``.
"""
