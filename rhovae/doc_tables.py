"""The results tables and figures of README.md, docs/ and results/*/README.md, generated from the committed result
files under results/.

A table is the text between ``<!-- table: NAME FOLDER -->`` and ``<!-- end table -->``: ``TABLES[NAME]`` applied
to the runs below ``FOLDER`` (relative to the repository; ``A+B`` for the runs of both folders). A table in
``PAIR_TABLES`` compares two sets of runs, ``FOLDERS~REFERENCE`` (each side a folder or ``A+B``): the runs left of
``~`` against their counterparts right of it, seed by seed (tuned against untuned). A figure is ``<!-- figure: NAME FOLDER -->`` ...
``<!-- end figure -->``: ``FIGURES[NAME]`` draws a PNG into ``docs/figures/`` from the same runs, and the block holds
the image link with its alt text and the SHA-1 of the numbers drawn, so that new numbers make the block (and the
figure) stale. ``regenerate`` rewrites the blocks and says which changed; ``scripts/doc_tables.py`` is the command,
and a test fails when a committed table or figure differs from what its results give.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable

import pandas as pd

from . import results
from .errors import RhovaeError

BLOCK = re.compile(r"(<!-- (?P<kind>table|figure): (?P<name>\S+) (?P<folder>\S+) -->\n)(?P<body>.*?)"
                   r"(<!-- end (?P=kind) -->)", re.S)
FIGURE_FOLDER = Path("docs") / "figures"
FOLDER_JOIN = "+"  # FOLDER may be several folders joined by it: their runs make one table (seeds run in two sweeps)
AGAINST = "~"  # a pair table's FOLDER: the runs left of it against those right of it


def _ais(runs: pd.DataFrame) -> str:
    return results.ais_table(runs).to_markdown(index=False)


SUMMARY_COLUMNS = ["dataset", "method", "n", "test ELBO", "test NLL", "test KL", "active units", "NLL at K/10",
                   "k-hat > 0.7", "s/epoch"]


def _summary(runs: pd.DataFrame) -> str:
    shown = results.display_table(results.summarize(runs))
    return shown[[c for c in SUMMARY_COLUMNS if c in shown]].to_markdown(index=False)


def _differences(runs: pd.DataFrame) -> str:
    return results.display_differences(results.paired_differences(runs)).to_markdown(index=False)


NOT_REACHED = "not reached"  # a milestone table's cell for a group none of whose runs has reached that epoch


def _milestones(runs: pd.DataFrame) -> str:
    table = results.budget_table(results.load_milestones(runs))
    shown = table[["epoch"]].astype(str).join(
        table.drop(columns="epoch").map(lambda value: NOT_REACHED if pd.isna(value) else f"{value:.2f}"))
    return shown.to_markdown(index=False, colalign=["right"] * shown.shape[1], disable_numparse=True)


PROTOCOL_FROM_EPOCH = 121  # the IWAE protocol's stages compared with the literature (earlier ones: milestones)


def _protocol(runs: pd.DataFrame) -> str:
    table = results.milestone_table(results.load_milestones(runs), from_epoch=PROTOCOL_FROM_EPOCH)
    return table.to_markdown(index=False, disable_numparse=True)


FURTHEST_STAGE_LEFT_OUT = ["active units", "s/epoch"]  # the README's short version of the protocol table


def _protocol_furthest(runs: pd.DataFrame) -> str:
    table = results.milestone_table(results.furthest_paired_stage(results.load_milestones(runs)))
    shown = table.drop(columns=FURTHEST_STAGE_LEFT_OUT, errors="ignore")
    return shown.to_markdown(index=False, disable_numparse=True)


def _ais_rescorings(runs: pd.DataFrame) -> str:
    return results.ais_rescorings_table(runs).to_markdown(index=False, disable_numparse=True)


def _ais_image_pairs(runs: pd.DataFrame) -> str:
    return results.display_image_pairs(results.ais_image_pairs(runs)).to_markdown(index=False, disable_numparse=True)


def _bdmc(runs: pd.DataFrame) -> str:
    return results.bdmc_table(runs).to_markdown(index=False, disable_numparse=True)


def _platforms(runs: pd.DataFrame) -> str:
    return results.platform_table(runs).to_markdown(index=False, disable_numparse=True)


def _between(runs: pd.DataFrame, reference: pd.DataFrame) -> str:
    diffs = results.paired_between(runs, reference, "reference")
    return results.display_differences(diffs).drop(columns="baseline", errors="ignore").to_markdown(index=False)


PAIR_TABLES: dict[str, Callable[[pd.DataFrame, pd.DataFrame], str]] = {
    "between": _between,  # each method minus its counterpart in the reference runs, same dataset and seed
}

TABLES: dict[str, Callable[[pd.DataFrame], str]] = {
    "ais": _ais,  # AIS beside the IW estimate on the same images, and both paired against diag
    "ais_rescorings": _ais_rescorings,  # every AIS re-scoring of every run (start, schedule, MC error)
    "ais_image_pairs": _ais_image_pairs,  # AIS and IW paired image for image against diag's model of the same stage
    "bdmc": _bdmc,  # every BDMC measurement: forward and reverse bounds and their gap per schedule
    "summary": _summary,  # mean ± sd over seeds per dataset and method (summarize.py's first table, main columns)
    "differences": _differences,  # paired differences from diag (summarize.py's second table)
    "milestones": _milestones,  # test NLL at each milestone epoch per run group, runs still training included
    "platforms": _platforms,  # each platform's seeds paired on their own, and the shift between platforms
    "protocol": _protocol,  # per stage from epoch 121: NLL vs diag, whole-test-set, AIS and gap scores, hours
    "protocol_furthest": _protocol_furthest,  # the protocol table at the furthest stage a posterior meets diag
}


def _differences_figure(runs: pd.DataFrame):
    from .plots import paired_difference_strip

    metrics = {m: results.METRICS[m][0] for m in ("test/nll", "ais/nll", "ais/iw_nll") if m in runs}
    data = runs[["status", "dataset", "method", "seed", *metrics]]
    return paired_difference_strip(data, metrics), data, (
        "Paired differences from diag, one dot per seed, with the mean and its 95% t interval: "
        + ", ".join(metrics.values()))


def _milestones_figure(runs: pd.DataFrame):
    from .plots import budget_curves

    milestones = results.load_milestones(runs)
    drawn = milestones[[c for c in ("dataset", "group", "seed", "epoch", "test/nll", "n_images", "test/iw_samples")
                        if c in milestones]]
    return budget_curves(milestones), drawn, (
        "Test NLL of each posterior's model at every milestone epoch (log scale), first 2,000 test images, and beside "
        "it each posterior minus diag trained the same way on the same seed")


def _gaps_figure(runs: pd.DataFrame):
    from .plots import gap_bars

    table = results.stage_gaps(results.load_milestones(runs))
    if table.empty:  # the runs' own models (gaps.json)
        table = results.summarize(runs)
        table = table[table["gaps/approximation_gap mean"].notna()] if "gaps/approximation_gap mean" in table \
            else pd.DataFrame()
    if table.empty:
        raise RhovaeError("figure gaps: no run below this folder has a gap analysis (scripts/gaps.py)")
    drawn = table[[c for c in table if c in ("dataset", "method", "n") or c.startswith("gaps/")]]
    return gap_bars(table), drawn, (
        "Approximation and amortization gaps stacked per posterior (mean over seeds, ± 1 sd): "
        "log p(x) - ELBO split into what the family cannot represent and what the encoder misses")


# name -> (figure, the numbers it draws, its alt text)
FIGURES: dict[str, Callable[[pd.DataFrame], tuple]] = {
    "differences": _differences_figure,
    "milestones": _milestones_figure,
    "gaps": _gaps_figure,
}


def figure_path(name: str, folder: str) -> Path:
    """Where the figure block ``NAME FOLDER`` draws its PNG, relative to the repository."""
    return FIGURE_FOLDER / f"{name}-{'_and_'.join(Path(part).name for part in folder.split(FOLDER_JOIN))}.png"


def orphan_figures(repo: Path) -> list[Path]:
    """PNGs in ``docs/figures`` that no figure block of the documents draws any more (left by a removed or renamed
    block), relative to the repository."""
    drawn = {figure_path(m["name"], m["folder"]) for path in documents(repo)
             for m in BLOCK.finditer(path.read_text()) if m["kind"] == "figure"}
    return sorted(p.relative_to(repo) for p in (repo / FIGURE_FOLDER).glob("*.png")
                  if p.relative_to(repo) not in drawn)


def documents(repo: Path) -> list[Path]:
    """The Markdown files that may hold generated tables: README.md, docs/*.md and results/*/README.md."""
    return [p for p in [repo / "README.md", *sorted((repo / "docs").glob("*.md")),
                        *sorted((repo / "results").glob("*/README.md"))] if p.is_file()]


def regenerate(text: str, repo: Path, where: Path | None = None,
               loaded: dict[str, pd.DataFrame] | None = None, write_figures: bool = True) -> tuple[str, list[str]]:
    """``text`` (a document in the folder ``where``, by default the repository's root) with every generated table
    and figure made anew from its results, and the blocks that changed (``NAME FOLDER``; a figure's PNG is
    rewritten only when its numbers changed or the file is missing, and a missing one counts as a change).
    ``write_figures=False`` writes no PNG (a check that changes nothing). ``loaded`` keeps the runs of each folder
    for the next call (several documents cite one folder)."""
    import os

    loaded = {} if loaded is None else loaded

    changed = []

    def load_side(folder: str, block: str) -> pd.DataFrame:
        parts = folder.split(FOLDER_JOIN)
        for part in parts:
            if not (repo / part).is_dir():
                raise RhovaeError(f"{block} names {part}, which is not a folder of the repository")
            if part not in loaded:
                loaded[part] = results.load_runs(repo / part)
        return results.sort_runs(pd.concat([loaded[part] for part in parts], ignore_index=True))

    def replace(match: re.Match) -> str:
        kind, name, folder = match["kind"], match["name"], match["folder"]
        known = {**TABLES, **PAIR_TABLES} if kind == "table" else FIGURES
        if name not in known:
            raise RhovaeError(f"{kind} {name!r} is not known; accepted: {', '.join(known)}")
        sides = folder.split(AGAINST)
        if len(sides) != (2 if name in PAIR_TABLES else 1):
            accepted = "FOLDER~REFERENCE" if name in PAIR_TABLES else "FOLDER or A+B, without ~"
            raise RhovaeError(f"{kind} {name} names {folder!r}; accepted: {accepted}")
        runs, *reference = [load_side(side, f"{kind} {name}") for side in sides]
        if kind == "table":
            body = (PAIR_TABLES[name](runs, *reference) if reference else TABLES[name](runs)) + "\n"
        else:
            figure, data, alt = FIGURES[name](runs)
            digest = hashlib.sha1(data.to_csv(index=False).encode()).hexdigest()[:12]
            png = figure_path(name, folder)
            link = Path(os.path.relpath(repo / png, where or repo)).as_posix()
            body = f"![{alt}]({link})\n<!-- numbers: {digest} -->\n"
            missing = not (repo / png).is_file()
            if (body != match["body"] or missing) and write_figures:
                from .plots import save_figure

                (repo / FIGURE_FOLDER).mkdir(parents=True, exist_ok=True)
                save_figure(figure, repo / png)
            if missing and body == match["body"]:
                changed.append(f"{name} {folder} ({png} was missing)")
        if body != match["body"]:
            changed.append(f"{name} {folder}")
        return match.group(1) + body + match.group(6)

    return BLOCK.sub(replace, text), changed
