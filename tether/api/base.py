"""What every operator API view shares: permissions and throttles from the app's settings,
model permissions per action, and a clear answer when the database is down.

Both ``webhooks.api`` and ``integrations.api`` build on ``OperatorAPIMixin``; the settings
object (``webhooks_settings`` or ``integrations_settings``) is the only thing that differs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import ClassVar

from django.core.exceptions import ImproperlyConfigured
from django.db import InterfaceError, OperationalError
from django.utils.module_loading import import_string
from rest_framework import permissions, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from tether.conf import AppSettings


def load_classes(values: Iterable[str | type], *, setting: str) -> list[type]:
    """Classes from a settings list of dotted paths (or classes), naming the key on error."""
    classes = []
    for value in values:
        if isinstance(value, str):
            try:
                value = import_string(value)
            except ImportError as exc:
                raise ImproperlyConfigured(f"{setting}: cannot import {value!r} ({exc})") from exc
        classes.append(value)
    return classes


class HasActionModelPermission(permissions.BasePermission):
    """The user holds the model permissions the view declares for the current action.

    A view lists them in ``action_permissions`` (action name -> permission codenames, the key
    ``"*"`` for actions not listed). Superusers hold every permission, as in the admin.
    """

    message = "You do not have the model permission this action needs."

    def has_permission(self, request: Request, view: APIView) -> bool:
        table: dict[str, tuple[str, ...]] = getattr(view, "action_permissions", {})
        action = getattr(view, "action", None)
        required = table.get(action or "", table.get("*", ()))
        user = request.user
        # drf-stubs type Request.user without None, which it is when
        # REST_FRAMEWORK["UNAUTHENTICATED_USER"] is None.
        authenticated = bool(user and user.is_authenticated)  # type: ignore[truthy-bool]
        return authenticated and user.has_perms(required)


class OperatorAPIMixin(APIView):
    """Settings-driven permissions and throttles, read at request time. Listed before the
    viewset it is mixed into (``class EventViewSet(OperatorAPIMixin, ReadOnlyModelViewSet)``),
    whose ``APIView`` it extends."""

    #: The app's settings object; subclasses set it.
    app_settings: ClassVar[AppSettings]
    #: Name of the settings dict, for error messages; its app logs on ``<name>.api``
    #: (``webhooks.api``, ``integrations.api``).
    settings_name: ClassVar[str]
    action_permissions: ClassVar[dict[str, tuple[str, ...]]] = {}

    def get_permissions(self) -> list[permissions.BasePermission]:
        configured = load_classes(
            self.app_settings["API_PERMISSION_CLASSES"],
            setting=f'{self.settings_name}["API_PERMISSION_CLASSES"]',
        )
        return [cls() for cls in configured] + [HasActionModelPermission()]

    def get_throttles(self) -> list[BaseThrottle]:
        configured = load_classes(
            self.app_settings["API_THROTTLE_CLASSES"],
            setting=f'{self.settings_name}["API_THROTTLE_CLASSES"]',
        )
        return [cls() for cls in configured]

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, (OperationalError, InterfaceError)):
            # Reported generically: a driver's message can carry the connection string.
            logger = logging.getLogger(f"{self.settings_name.lower()}.api")
            logger.error("Operator API: database unavailable (%s)", type(exc).__name__)
            return Response(
                {"detail": "The database is unavailable; try again later."},
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        return super().handle_exception(exc)
