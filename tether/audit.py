"""Who did an operator action, recorded in Django's admin History (``LogEntry``), for both apps.

Every operator action, whatever the way in (admin, management command, operator API), writes
one ``LogEntry`` per object it changed, in the transaction of the change, naming a user: the
request's user, the one a command's ``--user`` names, or the system user (``SYSTEM_USERNAME``)
when nobody is named. The webhooks services and the circuit breakers' surfaces call
``log_actions``; the commands of both apps take ``--user`` through ``add_user_argument`` and
``command_user``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

from django.apps import apps
from django.contrib.auth import get_user_model
from django.db.models import Model

__all__ = [
    "EXIT_USAGE",
    "SYSTEM_USERNAME",
    "add_user_argument",
    "command_user",
    "log_actions",
    "system_user",
]

#: The user an operator action is recorded under when no user is given (a command run without
#: ``--user``, code calling a service without ``actor``): an inactive user with an unusable
#: password, created on first use.
SYSTEM_USERNAME = "tether-system"

#: The exit code of a command given bad input (as argparse itself uses), an unknown ``--user``
#: included.
EXIT_USAGE = 2


def system_user() -> Any:
    """The ``SYSTEM_USERNAME`` user, created (inactive, unusable password) if missing."""
    user_model = get_user_model()
    user, created = user_model._default_manager.get_or_create(
        **{user_model.USERNAME_FIELD: SYSTEM_USERNAME}, defaults={"is_active": False}
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


def log_actions(objects: Iterable[Model], *, user: Any, message: str) -> None:
    """One ``LogEntry`` (``CHANGE``, the admin's History) per object, ``message`` as its change
    message, by ``user`` (``system_user()`` if None): one INSERT, in the caller's transaction.

    Nothing when ``django.contrib.admin`` is not installed (there is no LogEntry table) or there
    are no objects."""
    objects = list(objects)
    if not objects or not apps.is_installed("django.contrib.admin"):
        return
    from django.contrib.admin.models import CHANGE, LogEntry

    if user is None:
        user = system_user()
    LogEntry.objects.log_actions(user.pk, objects, CHANGE, change_message=message)


def add_user_argument(parser: argparse.ArgumentParser) -> None:
    """A command's ``--user USERNAME``: whom the History entries of its action name
    (``command_user`` reads it)."""
    parser.add_argument(
        "--user",
        metavar="USERNAME",
        help="The existing user the History records as having done this (default: the "
        f"inactive system user {SYSTEM_USERNAME!r}, created on first use).",
    )


def reason_argument(limit: int) -> Callable[[str], str]:
    """An argparse ``type`` for a command's ``--reason``: the text, refused (a usage error naming
    the bound) when longer than ``limit`` characters."""

    def reason_text(value: str) -> str:
        if len(value) > limit:
            raise argparse.ArgumentTypeError(f"the reason is longer than {limit} characters")
        return value

    return reason_text


def command_user(options: dict[str, Any], *, returncode: int = EXIT_USAGE) -> Any:
    """The user ``--user`` names, or None when none is given (``log_actions`` then records the
    system user); a ``CommandError`` with ``returncode`` if there is no user by that name."""
    from django.core.management.base import CommandError

    username = options.get("user")
    if not username:
        return None
    user_model = get_user_model()
    try:
        return user_model._default_manager.get_by_natural_key(username)
    except user_model.DoesNotExist:
        raise CommandError(
            f"--user: no user named {username[:150]!r}", returncode=returncode
        ) from None
