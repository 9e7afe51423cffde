"""The quickstart check's reading of docs/getting-started.md: every code block is marked, and a
page whose blocks and markers disagree is refused before anything runs."""

import re

import pytest

from tests.quickstart.check import PAGE, REWRITES, check_rewrites
from tests.quickstart.snippets import KINDS, SnippetError, extract_snippets, read_snippets

FENCE = re.compile(r"^\s*(```|~~~)")


def test_every_code_block_of_the_page_is_a_marked_snippet():
    text = PAGE.read_text(encoding="utf-8")
    fences = sum(1 for line in text.splitlines() if FENCE.match(line))
    snippets = read_snippets(PAGE)

    assert len(snippets) == fences // 2
    assert {snippet.kind for snippet in snippets} <= KINDS
    kinds = [snippet.kind for snippet in snippets]
    # What the check's end-to-end run depends on: a server, a worker, then an event sent.
    assert kinds.index("server") < kinds.index("send")
    assert kinds.index("worker") < kinds.index("send")
    titles = {snippet.title for snippet in snippets if snippet.kind in ("append", "file")}
    assert {"mysite/settings.py", "mysite/urls.py", "mysite/celery.py", "mysite/__init__.py"} <= (
        titles
    )
    check_rewrites(snippets)  # every substitution still finds its target on the page


def test_the_snippets_keep_their_text_kind_title_and_line():
    page = (
        "Intro.\n"
        "\n"
        "<!-- quickstart: shell -->\n"
        "```sh\n"
        "django-admin startproject mysite\n"
        "```\n"
        "\n"
        "<!-- quickstart: append -->\n"
        '```python title="mysite/settings.py"\n'
        "import os\n"
        "```\n"
        "<!-- quickstart: skip (asks for a password) -->\n"
        "```sh\n"
        "python manage.py createsuperuser\n"
        "```\n"
    )

    shell, settings, skipped = extract_snippets(page)

    assert (shell.kind, shell.text, shell.line, shell.title) == (
        "shell",
        "django-admin startproject mysite\n",
        4,
        None,
    )
    assert (settings.kind, settings.title, settings.text) == (
        "append",
        "mysite/settings.py",
        "import os\n",
    )
    assert (skipped.kind, skipped.reason) == ("skip", "asks for a password")


@pytest.mark.parametrize(
    ("page", "error"),
    [
        pytest.param(
            "<!-- quickstart: shell -->\n```sh\nls\n```\n\n```python\nimport os\n```\n",
            r"<page>:6: code block without a marker",
            id="missing-marker",
        ),
        pytest.param(
            "Some text.\n<!-- quickstart: shell -->\n\n```sh\nls\n```\n",
            r"<page>:2: marker not followed by a code block",
            id="marker-apart-from-its-block",
        ),
        pytest.param(
            "<!-- quickstart: run -->\n```sh\nls\n```\n",
            r"<page>:2: unknown kind 'run'",
            id="unknown-kind",
        ),
        pytest.param(
            "<!-- quickstart: skip -->\n```sh\nls\n```\n",
            r"a skipped block says why",
            id="skip-without-reason",
        ),
        pytest.param(
            "<!-- quickstart: file -->\n```python\nx = 1\n```\n",
            r"a 'file' block names its file",
            id="file-without-title",
        ),
        pytest.param(
            '<!-- quickstart: file -->\n```python title="../../etc/cron.d/x"\nx = 1\n```\n',
            r"must be relative to the project",
            id="file-outside-the-project",
        ),
        pytest.param(
            "<!-- quickstart: shell -->\n```sh\nls\n",
            r"<page>:2: code block never closed",
            id="unclosed-block",
        ),
        pytest.param(
            "<!-- quickstart shell -->\n```sh\nls\n```\n",
            r"unreadable marker",
            id="unreadable-marker",
        ),
    ],
)
def test_a_page_whose_blocks_and_markers_disagree_is_refused(page, error):
    with pytest.raises(SnippetError, match=error):
        extract_snippets(page)


def test_a_substitution_that_no_longer_finds_its_target_is_refused():
    page = PAGE.read_text(encoding="utf-8").replace("manage.py runserver", "manage.py serve")

    with pytest.raises(SnippetError, match="runserver"):
        check_rewrites(extract_snippets(page))
    assert len(REWRITES) >= 3
