"""Every relative link and #anchor in README.md, docs/, configs/README.md, results/README.md and results/*/README.md points at a file
that exists and, with an anchor, at a heading of that file (GitHub's anchors: lower case, punctuation dropped,
spaces as hyphens)."""

from __future__ import annotations

import re
from pathlib import Path

from helpers import REPO

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "configs" / "README.md",
            REPO / "results" / "README.md", *sorted((REPO / "results").glob("*/README.md"))]


def outside_code(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(path: Path) -> set[str]:
    """GitHub's anchor of every heading of ``path``."""
    found = set()
    for line in outside_code(path.read_text()).splitlines():
        match = re.match(r"^#{1,6} (.*)", line)
        if match:
            heading = re.sub(r"[^\w\- ]", "", match[1].strip().lower())
            found.add(heading.replace(" ", "-"))
    return found


def test_github_anchors_are_computed_as_github_does():
    text = "# The IWAE paper's protocol\n## fullcov: what went wrong, and the fix\n### Do the flows suffer from it too?\n"
    path = REPO / "tests" / "_anchor_probe.md"
    try:
        path.write_text(text)
        assert anchors(path) == {"the-iwae-papers-protocol", "fullcov-what-went-wrong-and-the-fix",
                                 "do-the-flows-suffer-from-it-too"}
    finally:
        path.unlink()


def test_every_relative_link_and_anchor_resolves():
    broken = []
    files = markdown_files()
    assert len(files) >= 5 and all(p.is_file() for p in files)
    for path in files:
        for target in LINK.findall(outside_code(path.read_text())):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.relative_to(REPO)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{path.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
