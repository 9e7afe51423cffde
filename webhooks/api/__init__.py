"""Operator REST API for webhook events (Django REST framework).

Mount it with ``path("api/", include("webhooks.api.urls"))``; ``"rest_framework"`` must be in
``INSTALLED_APPS``. ``webhooks.api.base`` holds what the integrations API shares with it.
"""
