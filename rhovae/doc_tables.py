"""The results tables of README.md and docs/, generated from the committed result files under results/.

A table is the text between ``<!-- table: NAME FOLDER -->`` and ``<!-- end table -->``: ``TABLES[NAME]`` applied
to the runs below ``FOLDER`` (relative to the repository). ``regenerate`` rewrites those blocks and says which
changed; ``scripts/doc_tables.py`` is the command and a test fails when a committed table differs from what its
results give.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pandas as pd

from . import results
from .errors import RhovaeError

BLOCK = re.compile(r"(<!-- table: (?P<name>\S+) (?P<folder>\S+) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


def _ais(runs: pd.DataFrame) -> str:
    return results.ais_table(runs).to_markdown(index=False)


SUMMARY_COLUMNS = ["dataset", "method", "n", "test ELBO", "test NLL", "test KL", "active units", "NLL at K/10",
                   "k-hat > 0.7", "s/epoch"]


def _summary(runs: pd.DataFrame) -> str:
    shown = results.display_table(results.summarize(runs))
    return shown[[c for c in SUMMARY_COLUMNS if c in shown]].to_markdown(index=False)


def _differences(runs: pd.DataFrame) -> str:
    return results.display_differences(results.paired_differences(runs)).to_markdown(index=False)


def _milestones(runs: pd.DataFrame) -> str:
    milestones = results.load_milestones(runs)
    table = results.budget_table(milestones)
    return table.to_markdown(index=False, floatfmt=["g", *[".2f"] * (table.shape[1] - 1)])


TABLES: dict[str, Callable[[pd.DataFrame], str]] = {
    "ais": _ais,  # AIS beside the IW estimate on the same images, and both paired against diag
    "summary": _summary,  # mean ± sd over seeds per dataset and method (summarize.py's first table, main columns)
    "differences": _differences,  # paired differences from diag (summarize.py's second table)
    "milestones": _milestones,  # test NLL at each milestone epoch per run group, runs still training included
}


def documents(repo: Path) -> list[Path]:
    """The Markdown files that may hold generated tables: README.md, docs/*.md and results/*/README.md."""
    return [p for p in [repo / "README.md", *sorted((repo / "docs").glob("*.md")),
                        *sorted((repo / "results").glob("*/README.md"))] if p.is_file()]


def regenerate(text: str, repo: Path) -> tuple[str, list[str]]:
    """``text`` with every generated table made anew from its results, and the blocks that changed
    (``NAME FOLDER``)."""
    changed = []

    def replace(match: re.Match) -> str:
        name, folder = match["name"], match["folder"]
        if name not in TABLES:
            raise RhovaeError(f"table {name!r} is not known; accepted: {', '.join(TABLES)}")
        if not (repo / folder).is_dir():
            raise RhovaeError(f"table {name} names {folder}, which is not a folder of the repository")
        body = TABLES[name](results.load_runs(repo / folder)) + "\n"
        if body != match["body"]:
            changed.append(f"{name} {folder}")
        return match.group(1) + body + match.group(5)

    return BLOCK.sub(replace, text), changed
