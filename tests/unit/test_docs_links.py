"""Every relative link in README.md and docs/ points at a file that exists (and a heading that
exists, for links with an anchor into a Markdown page)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target); target up to whitespace or ')', optional "title"
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


def prose(text: str) -> str:
    """The text with fenced code blocks and inline code removed (links there are not links)."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def links(text: str) -> list[str]:
    return _LINK.findall(prose(text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for heading in _HEADING.findall(_FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """One message per link whose file, or whose heading anchor, does not exist."""
    problems = []
    for target in links(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = page if not path_part else (page.parent / path_part).resolve()
        where = f"{page.relative_to(root)}: link {target!r}"
        shown = dest.relative_to(root) if dest.is_relative_to(root) else dest
        if not dest.exists():
            problems.append(f"{where}: {shown} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with anchor #{anchor} in {shown}")
    return problems


def test_the_checker_sees_links_and_catches_broken_ones(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Title `x`\n## Two — words\n[ok](#title-x) [ok2](#two--words) ![img](page.md)\n"
        "[gone](missing.md) [bad](#nope) [web](https://example.com/x)\n"
        "`[not](a-link.md)`\n```\n[also not](in-code.md)\n```\n"
    )
    assert links(page.read_text()) == [
        "#title-x", "#two--words", "page.md", "missing.md", "#nope", "https://example.com/x",
    ]  # fmt: skip
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 2
    assert "missing.md does not exist" in problems[0]
    assert "#nope" in problems[1]


def test_pages_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/README.md", "docs/concepts/windows.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []
