"""The project as a whole: migrations are complete and the system checks pass."""

from io import StringIO

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_no_missing_migrations():
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out, stderr=out)


def test_system_checks_pass():
    call_command("check", fail_level="WARNING")
