"""``tether.pytest_plugin``: a user's suite gets a clean process-local state around each test
without a line of configuration, and a session without Django, or without one of the apps, is
left alone. Each case runs pytest in a subprocess, as a user's project would."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import tether.pytest_plugin
from tests.servers import own_database, subprocess_env

#: A user's tests: the first caches an open breaker (for 60 s) in a test whose database is
#: rolled back; the second must see its own database, where there is no such breaker.
USER_SUITE = textwrap.dedent(
    """
    import pytest

    from integrations.breaker import get_breaker
    from integrations.exceptions import CircuitOpenError
    from integrations.testing import force_breaker


    @pytest.mark.django_db
    def test_a_vendor_outage(settings):
        settings.INTEGRATIONS = {"BREAKER": {"CACHE_TTL": 60}}
        force_breaker("rates", "forced_open", reason="outage")
        with pytest.raises(CircuitOpenError):
            get_breaker("rates").acquire("rate")


    @pytest.mark.django_db
    def test_the_next_test_calls_the_vendor():
        get_breaker("rates").acquire("rate")
    """
)


def pytest_in(directory: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args, str(directory)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_installed_as_a_pytest_plugin(pytestconfig):
    assert pytestconfig.pluginmanager.get_plugin("tether") is tether.pytest_plugin


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_users_suite_gets_a_clean_breaker_state_in_each_test(tmp_path):
    (tmp_path / "test_user_suite.py").write_text(USER_SUITE)
    with own_database("plugin") as database:
        env = subprocess_env(extra={"DJANGO_SETTINGS_MODULE": "tests.settings"})
        env["TETHER_TEST_DB"] = database  # pytest-django's test database: ours, reused
        env.pop("TETHER_DB_NAME")

        without = pytest_in(tmp_path, "--reuse-db", "-p", "no:tether", env=env)
        assert without.returncode == 1, without.stdout[-3000:]
        assert "1 failed, 1 passed" in without.stdout
        assert "CircuitOpenError" in without.stdout  # the stale snapshot of a rolled-back row

        with_plugin = pytest_in(tmp_path, "--reuse-db", env=env)
        assert with_plugin.returncode == 0, with_plugin.stdout[-3000:]
        assert "2 passed" in with_plugin.stdout


@pytest.mark.multiprocess
def test_a_session_without_django_is_left_alone(tmp_path):
    (tmp_path / "test_plain.py").write_text(
        textwrap.dedent(
            """
            import sys

            def test_plain(pytestconfig):
                assert pytestconfig.pluginmanager.get_plugin("tether") is not None
                assert "integrations" not in sys.modules and "webhooks" not in sys.modules
            """
        )
    )
    env = subprocess_env()
    env.pop("DJANGO_SETTINGS_MODULE")
    result = pytest_in(tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 passed" in result.stdout


@pytest.mark.multiprocess
def test_a_project_without_integrations_never_imports_it(tmp_path):
    (tmp_path / "test_webhooks_only.py").write_text(
        textwrap.dedent(
            """
            import sys

            from django.apps import apps

            def test_first():
                assert apps.ready and apps.is_installed("webhooks")

            def test_second():
                assert not any(name.split(".")[0] == "integrations" for name in sys.modules)
            """
        )
    )
    env = subprocess_env(extra={"DJANGO_SETTINGS_MODULE": "tests.settings_webhooks_only"})
    result = pytest_in(tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout
