"""Users with different rights, and API clients logged in as them (real session auth)."""

from __future__ import annotations

import json

import pytest
import redis
from django.conf import settings
from django.contrib.auth.models import Permission, User
from rest_framework.test import APIClient


def make_user(username: str, *, staff: bool = False, superuser: bool = False, perms=()) -> User:
    user = User.objects.create_user(
        username, password="pw-" + username, is_staff=staff or superuser, is_superuser=superuser
    )
    for dotted in perms:
        app_label, codename = dotted.split(".")
        user.user_permissions.add(
            Permission.objects.get(content_type__app_label=app_label, codename=codename)
        )
    return User.objects.get(pk=user.pk)  # fresh: no stale permission cache


def client_for(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def superuser(db) -> User:
    return make_user("root", superuser=True)


@pytest.fixture
def api(superuser) -> APIClient:
    """A client logged in as a superuser."""
    return client_for(superuser)


@pytest.fixture
def broker():
    """The test's Redis broker database, emptied; ``.queued()`` lists the published tasks."""
    conn = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    conn.delete("celery")

    class Broker:
        @staticmethod
        def queued() -> list[tuple[str, str]]:
            """(task name, argsrepr) of every message waiting in the default queue."""
            out = []
            for raw in conn.lrange("celery", 0, -1):
                headers = json.loads(raw)["headers"]
                out.append((headers["task"], headers["argsrepr"]))
            return out

    yield Broker
    conn.delete("celery")
    conn.close()
