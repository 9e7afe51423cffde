"""``tether.audit``: the system user, created once (inactive, no usable password), and
``log_actions``, one ``LogEntry`` per object in one INSERT. On objects of neither app (auth
groups): the core knows neither."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Group
from django.contrib.contenttypes.models import ContentType

from tether.audit import SYSTEM_USERNAME, log_actions, system_user

pytestmark = pytest.mark.django_db


def test_the_system_user_is_created_once_inactive_without_a_usable_password(django_user_model):
    first = system_user()
    assert system_user().pk == first.pk
    stored = django_user_model.objects.get(username=SYSTEM_USERNAME)
    assert stored.pk == first.pk
    assert not stored.is_active and not stored.has_usable_password()


def test_one_entry_per_object_in_one_insert(django_user_model, django_assert_num_queries):
    user = django_user_model.objects.create_user("alice")
    groups = [Group.objects.create(name=f"g{n}") for n in range(3)]
    ContentType.objects.get_for_model(Group)  # cached for the process, as after the first use
    with django_assert_num_queries(1):
        log_actions(groups, user=user, message="Renamed via code: tidy")
    rows = LogEntry.objects.order_by("pk").values_list(
        "user__username", "action_flag", "object_id", "object_repr", "change_message"
    )
    assert list(rows) == [
        ("alice", CHANGE, str(g.pk), g.name, "Renamed via code: tidy") for g in groups
    ]


def test_no_user_means_the_system_user():
    log_actions([Group.objects.create(name="ops")], user=None, message="m")
    assert LogEntry.objects.get().user.get_username() == SYSTEM_USERNAME


def test_no_objects_writes_nothing(django_assert_num_queries):
    with django_assert_num_queries(0):
        log_actions([], user=None, message="m")
    assert not LogEntry.objects.exists()
