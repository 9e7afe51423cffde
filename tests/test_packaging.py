"""The distribution's metadata as the build backend makes it (setuptools' PEP 517 hook, the one
pip calls): the licence is an SPDX expression, built without a deprecation warning, and the
extras bring what their users need."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.servers import ROOT

pytestmark = pytest.mark.slow

BUILD_METADATA = """
from setuptools import build_meta
print(build_meta.prepare_metadata_for_build_wheel({out!r}))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[email.message.Message, str]:
    """The wheel's METADATA built from a copy of pyproject.toml (so nothing is written into the
    checkout), and what the backend printed while building it."""
    source = tmp_path_factory.mktemp("source")
    out = tmp_path_factory.mktemp("metadata")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-c", BUILD_METADATA.format(out=str(out))],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    dist_info = out / result.stdout.strip().splitlines()[-1]
    metadata = email.message_from_string(Path(dist_info, "METADATA").read_text())
    return metadata, result.stdout + result.stderr


def test_the_licence_is_an_spdx_expression_built_without_warnings(built):
    metadata, output = built
    assert metadata["License-Expression"] == "MIT"
    assert metadata["License"] is None  # the deprecated free-text field
    assert metadata["License-File"] == "LICENSE"  # the licence's text ships with the code
    assert "warning" not in output.lower(), output  # no deprecation of the licence's form


def requirements_of(metadata: email.message.Message, extra: str) -> set[str]:
    """The distributions ``pip install 'django-tether[extra]'`` adds, following the extras that
    name django-tether itself."""
    found: set[str] = set()
    pending, seen = [extra], set()
    while pending:
        current = pending.pop()
        seen.add(current)
        for line in metadata.get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            if requirement.marker is None or not requirement.marker.evaluate({"extra": current}):
                continue
            if requirement.name == "django-tether":
                pending.extend(requirement.extras - seen)
            else:
                found.add(requirement.name)
    return found


def test_the_sandbox_extra_brings_the_metrics_extra(built):
    metadata, _ = built
    sandbox = requirements_of(metadata, "sandbox")
    assert requirements_of(metadata, "metrics") <= sandbox
    assert "prometheus-client" in sandbox  # so /metrics answers in `make run`
    assert {"gunicorn", "dj-database-url"} <= sandbox


def test_the_tasks_extra_brings_the_database_backend_and_the_backport_on_any_django(built):
    """``TASK_BACKEND = "django"``: django-tasks-db and, for Django 5.2, the django-tasks
    backport; never django-tasks-db's own ``compat`` extra, which requires Django < 6."""
    metadata, _ = built
    assert requirements_of(metadata, "tasks") == {"django-tasks-db", "django-tasks"}
    for extra in ("sandbox", "test"):  # `make run TASKS=django`, and the suite
        assert {"django-tasks-db", "django-tasks"} <= requirements_of(metadata, extra)
    for line in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.name in {"django-tasks-db", "django-tasks"}:
            assert not requirement.extras, line
