"""``tether.conf.AppSettings``: one settings object per app, whose one reload (on
``setting_changed``, or called) forgets the merged dict and every cache derived from it."""

from __future__ import annotations

import threading

import pytest
from django.test import override_settings

from integrations import RetryPolicy
from integrations.conf import integrations_settings, service_settings
from tests.webhooks.eager import configured_celery_app, eager_setting_set_quietly
from tether.conf import AppSettings, SecretStr
from webhooks import queueing, storage
from webhooks.conf import webhooks_settings
from webhooks.providers import get_provider


@pytest.fixture
def app_settings():
    """A settings object of a test's own, over ``settings.TETHER_TEST``."""
    return AppSettings("TETHER_TEST", {"SIZE": 1, "NESTED": {"A": 1, "B": 2}})


def test_merged_over_the_defaults_and_read_at_call_time(app_settings):
    assert app_settings["SIZE"] == 1
    with override_settings(TETHER_TEST={"NESTED": {"B": 3}, "API_KEY": "k"}):
        assert app_settings.NESTED == {"A": 1, "B": 3}
        assert app_settings["SIZE"] == 1
        assert isinstance(app_settings["API_KEY"], SecretStr)
    assert app_settings["NESTED"] == {"A": 1, "B": 2}
    assert "API_KEY" not in app_settings.merged


def test_reload_empties_every_registered_cache(app_settings):
    derived: dict[str, int] = {}
    app_settings.register_cache(derived.clear)
    derived["x"] = 1
    merged = app_settings.merged
    app_settings.reload()
    assert derived == {}
    assert app_settings.merged is not merged


def test_a_cache_registered_twice_is_emptied_once_per_reload(app_settings):
    emptied: list[str] = []

    def forget() -> None:
        emptied.append("forget")

    app_settings.register_cache(forget)
    app_settings.register_cache(forget)  # once, however often registered
    app_settings.reload()
    assert emptied == ["forget"]


def test_a_change_of_its_setting_reloads_and_others_do_not(app_settings):
    derived = {"x": 1}
    app_settings.register_cache(derived.clear)
    with override_settings(SOMETHING_ELSE=1):
        assert derived == {"x": 1}
    with override_settings(TETHER_TEST={"SIZE": 2}):
        assert derived == {}


def test_a_cache_may_depend_on_other_settings(app_settings):
    derived = {"x": 1}
    app_settings.register_cache(derived.clear, also_on=("CELERY",))
    with override_settings(CELERY_TASK_ALWAYS_EAGER=True):
        assert derived == {}


def test_remember_keeps_nothing_built_from_settings_reloaded_meanwhile(app_settings):
    derived: dict[str, int] = {}
    app_settings.register_cache(derived.clear)
    before = app_settings.merged
    app_settings.reload()  # e.g. override_settings, in another thread, while the value was built
    app_settings.remember(derived, "stale", 1, source=before)
    app_settings.remember(derived, "fresh", 2, source=app_settings.merged)
    assert derived == {"fresh": 2}


def test_threads_share_one_merge(app_settings):
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(app_settings.merged)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(merged is seen[0] for merged in seen)


# --- the apps' derived caches: one reload clears them all --------------------------------


def test_webhooks_reload_forgets_built_providers():
    provider = get_provider("stripe")
    assert get_provider("stripe") is provider
    webhooks_settings.reload()
    assert get_provider("stripe") is not provider


def test_webhooks_reload_reads_the_configured_eager_flag_again():
    with configured_celery_app():
        assert queueing.celery_is_eager() is False
        # Celery reads the Django setting live; set without setting_changed, only a reload
        # shows it.
        with eager_setting_set_quietly(True):
            assert queueing.celery_is_eager() is False  # the configured value, read once and kept
            webhooks_settings.reload()
            assert queueing.celery_is_eager() is True
        webhooks_settings.reload()
        assert queueing.celery_is_eager() is False


def test_webhooks_reload_forgets_the_database_statements():
    from django.db import connection

    statements = storage.statements(connection)
    assert storage.statements(connection) is statements
    webhooks_settings.reload()
    assert storage.statements(connection) is not statements


def test_integrations_reload_forgets_per_service_merges():
    merged = service_settings("rates")
    assert service_settings("rates") is merged
    integrations_settings.reload()
    assert service_settings("rates") is not merged


def test_integrations_reload_forgets_built_policies():
    policy = RetryPolicy.for_service("rates")
    assert RetryPolicy.for_service("rates") is policy
    integrations_settings.reload()
    assert RetryPolicy.for_service("rates") is not policy
    assert RetryPolicy.for_service("rates") == policy  # the same settings, built again
