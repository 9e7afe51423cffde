"""The code blocks of a Markdown page, each with what the quickstart check does with it.

Every fenced code block of docs/getting-started.md carries a marker, an HTML comment on the line
just before its opening fence (invisible on the site)::

    <!-- quickstart: KIND -->

KIND is one of:

- ``shell``: shell commands, run in order by bash; ``cd``, ``export`` and ``. .venv/bin/activate``
  carry over to the next blocks, as in a terminal;
- ``append``: added at the end of the file named by the block's ``title="..."`` (the path the
  reader sees, relative to the directory the shell blocks are in);
- ``file``: the whole file named by the block's title (created, or replacing the generated one);
- ``server``: the command that starts the web server, left running;
- ``worker``: the command that starts the Celery worker, left running;
- ``send``: shell commands that send events; each event the server accepts must end
  ``processed``;
- ``skip (REASON)``: not run, for the reason given (an interactive command, say).

A block without a marker, a marker without a block, an unknown kind, a ``skip`` without its
reason or a file block without its title is an error: the page cannot silently grow a snippet
that the check does not follow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RUN_KINDS = frozenset({"shell", "server", "worker", "send"})
FILE_KINDS = frozenset({"append", "file"})
KINDS = RUN_KINDS | FILE_KINDS | {"skip"}

_MARKER = re.compile(r"^<!--\s*quickstart:\s*(?P<kind>[a-z]+)\s*(?:\((?P<reason>[^)]*)\))?\s*-->$")
_ANY_MARKER = re.compile(r"^<!--\s*quickstart\b")
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_TITLE = re.compile(r"""\btitle="(?P<title>[^"]+)\"""")


class SnippetError(ValueError):
    """The page's code blocks and their markers do not agree."""


@dataclass(frozen=True)
class Snippet:
    """One marked code block: what to do with it, its text, and where it is on the page."""

    kind: str
    text: str
    line: int  # the opening fence's line number, from 1
    title: str | None = None  # the target file, for append and file blocks
    reason: str | None = None  # why it is skipped, for skip blocks


def extract_snippets(markdown: str, source: str = "<page>") -> list[Snippet]:
    """The page's code blocks in order, each with its marker's kind; raises SnippetError."""
    lines = markdown.splitlines()
    snippets: list[Snippet] = []
    index = 0
    while index < len(lines):
        stripped = lines[index].strip()
        opening = _FENCE.match(lines[index])
        if _ANY_MARKER.match(stripped):
            marker = _MARKER.match(stripped)
            if marker is None:
                raise SnippetError(f"{source}:{index + 1}: unreadable marker {stripped!r}")
            after = _FENCE.match(lines[index + 1]) if index + 1 < len(lines) else None
            if after is None:
                raise SnippetError(
                    f"{source}:{index + 1}: marker not followed by a code block on the next line"
                )
            index += 1
            continue
        if opening is None:
            index += 1
            continue
        previous = lines[index - 1].strip() if index > 0 else ""
        marker = _MARKER.match(previous)
        if marker is None:
            raise SnippetError(
                f"{source}:{index + 1}: code block without a marker: put "
                "'<!-- quickstart: KIND -->' on the line before it "
                f"(KIND one of {', '.join(sorted(KINDS))}; see tests/quickstart/snippets.py)"
            )
        end = _closing_fence(lines, index, opening.group("fence"))
        if end is None:
            raise SnippetError(f"{source}:{index + 1}: code block never closed")
        indent = len(opening.group("indent"))
        body = "\n".join(line[indent:] for line in lines[index + 1 : end]) + "\n"
        snippets.append(_snippet(marker, opening.group("info"), body, index + 1, source))
        index = end + 1
    return snippets


def read_snippets(path: Path) -> list[Snippet]:
    """The marked code blocks of the Markdown file at ``path``."""
    return extract_snippets(path.read_text(encoding="utf-8"), source=str(path))


def _closing_fence(lines: list[str], opening: int, fence: str) -> int | None:
    for number in range(opening + 1, len(lines)):
        stripped = lines[number].strip()
        if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
            return number
    return None


def _snippet(marker: re.Match[str], info: str, body: str, line: int, source: str) -> Snippet:
    kind, reason = marker.group("kind"), marker.group("reason")
    where = f"{source}:{line}"
    if kind not in KINDS:
        raise SnippetError(f"{where}: unknown kind {kind!r} (one of {', '.join(sorted(KINDS))})")
    if kind == "skip" and not (reason or "").strip():
        raise SnippetError(f"{where}: a skipped block says why: '<!-- quickstart: skip (why) -->'")
    if kind != "skip" and reason is not None:
        raise SnippetError(f"{where}: only a skip marker takes a reason")
    title_match = _TITLE.search(info)
    title = title_match.group("title") if title_match else None
    if kind in FILE_KINDS and title is None:
        raise SnippetError(f'{where}: a {kind!r} block names its file: ```python title="path"')
    if kind in FILE_KINDS and (Path(title or "").is_absolute() or ".." in Path(title or "").parts):
        raise SnippetError(f"{where}: the file {title!r} must be relative to the project")
    return Snippet(kind=kind, text=body, line=line, title=title, reason=reason)
