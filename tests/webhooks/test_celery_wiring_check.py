"""``webhooks.W003``: the processing tasks would not reach the project's broker.

Celery's current app decides where a ``shared_task`` is published, and it depends on how the
project's package imports its ``celery.py``: so the check is tested on real projects, made by
``django-admin startproject`` in a subprocess (a fresh one, one half wired, one wired as
docs/getting-started.md says), and in this process on the test settings, from another thread
too (as ``runserver``'s autoreloader runs the checks)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.quickstart.snippets import read_snippets
from tests.servers import ROOT
from webhooks.checks import check_celery_wiring

GETTING_STARTED = ROOT / "docs" / "getting-started.md"


class Project:
    """``django-admin startproject mysite`` in a directory, run with a clean environment."""

    def __init__(self, where: Path) -> None:
        self.root = where / "mysite"
        self.root.mkdir()
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("CELERY_", "DJANGO_", "DATABASE_URL", "PYTHONPATH"))
        }
        # The getting-started page reads these (its own example values).
        self.env.update(
            GITHUB_WEBHOOK_SECRET="local-github-secret",
            STRIPE_WEBHOOK_SECRET="whsec_local_stripe_secret",
        )
        self.run("-m", "django", "startproject", "mysite", ".")

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result

    def add_settings(self, code: str) -> None:
        with (self.root / "mysite" / "settings.py").open("a") as settings:
            settings.write("\n" + code)

    def write(self, path: str, code: str) -> None:
        (self.root / path).write_text(code)

    def check(self) -> str:
        result = self.run("manage.py", "check")
        return result.stdout + result.stderr


@pytest.fixture
def project(tmp_path) -> Project:
    return Project(tmp_path)


def test_a_fresh_project_without_celery_wiring_is_warned(project):
    project.add_settings('INSTALLED_APPS += ["webhooks"]\n')
    output = project.check()
    assert "(webhooks.W003) No Celery app is configured" in output, output
    assert "to Celery's default broker amqp://guest@localhost:5672//" in output
    assert "CELERY_BROKER_URL" in output
    assert 'app.config_from_object("django.conf:settings", namespace="CELERY")' in output
    assert "docs/getting-started.md" in output


def test_celery_settings_without_a_celery_app_are_named_as_not_read(project):
    project.add_settings(
        'INSTALLED_APPS += ["webhooks"]\n'
        'CELERY_BROKER_URL = "redis://127.0.0.1:6379/0"\n'
        "CELERY_TASK_ACKS_LATE = True\n"
    )
    output = project.check()
    assert "(webhooks.W003) No Celery app is configured" in output, output
    assert "reads none of your CELERY_* settings (CELERY_BROKER_URL, CELERY_TASK_ACKS_LATE)" in (
        output
    )


def test_a_celery_app_that_does_not_read_the_settings_is_warned(project):
    project.add_settings('INSTALLED_APPS += ["webhooks"]\nCELERY_BROKER_URL = "redis://x:1/0"\n')
    # The app is wired, but reads the settings without the CELERY namespace: no broker URL.
    project.write(
        "mysite/celery.py",
        "from celery import Celery\n"
        'app = Celery("mysite")\n'
        'app.config_from_object("django.conf:settings")\n',
    )
    project.write("mysite/__init__.py", "from .celery import app as celery_app\n")
    output = project.check()
    assert (
        "(webhooks.W003) The Celery app 'mysite' has no broker URL: webhooks would publish its "
        "processing tasks to Celery's default broker, amqp://guest@localhost:5672//"
    ) in output, output


def test_the_getting_started_project_passes_every_check(project):
    """Every file of docs/getting-started.md, as the page says to write them: no warning."""
    project.run("manage.py", "startapp", "shop")
    blocks = [block for block in read_snippets(GETTING_STARTED) if block.kind in ("append", "file")]
    assert {"mysite/settings.py", "mysite/celery.py", "mysite/__init__.py"} <= {
        block.title for block in blocks
    }
    for block in blocks:
        if block.kind == "append":
            assert block.title == "mysite/settings.py"
            project.add_settings(block.text)
        else:
            project.write(str(block.title), block.text)
    output = project.check()
    assert "System check identified no issues" in output, output


def test_skipped_when_the_project_chose_djangos_tasks_backend(project):
    project.add_settings('INSTALLED_APPS += ["webhooks"]\nWEBHOOKS = {"TASK_BACKEND": "django"}\n')
    assert "W003" not in project.check()


def test_the_sandbox_settings_pass(tmp_path):
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "CELERY_BROKER_URL"}
    }
    env.update(DJANGO_SETTINGS_MODULE="sandbox_project.settings", SANDBOX_STATE_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_test_settings_pass_from_any_thread():
    """The project's app is every thread's default (Celery's Django fix-up), not only current
    in the thread that imported it: ``runserver``'s autoreloader runs the checks in a thread
    of its own, where the warning would be a false positive otherwise."""
    assert check_celery_wiring() == []
    found = []
    thread = threading.Thread(target=lambda: found.append(check_celery_wiring()))
    thread.start()
    thread.join(30)
    assert found == [[]]
