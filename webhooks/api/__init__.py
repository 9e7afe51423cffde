"""Operator REST API for webhook events (Django REST framework).

Mount it with ``path("api/", include("webhooks.api.urls"))``; ``"rest_framework"`` must be in
``INSTALLED_APPS``. What it shares with the integrations API is in ``tether.api``.
"""
