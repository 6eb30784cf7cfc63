"""Copy the small result files of runs into ``results/`` (the committed evidence), never their checkpoints.

Each run folder below a source (the source itself included) is mirrored under the destination with its path
relative to the source (a single run keeps its own folder name). A copy already there is committed evidence, so it
is refreshed only by the same run gone further: its ``metrics.jsonl`` and ``milestones.jsonl`` must be the start of
the source's (a resumed run only appends), and a re-scoring file present in both must be the same bytes. Anything
else (another run, a rerun, a shorter run, a re-scoring redone differently) is refused before a file is copied,
unless ``replace`` is asked for, which deletes those runs' copies first. Files only the copy has (a re-scoring of a
run folder since lost) are kept. A refusal says whether the source is a rerun that reproduces every recorded number
but the timings, up to float32 rounding (the training is deterministic on one kind of machine), which metrics it
records that the copy lacks (added to the code since), and then what ``replace`` would lose: the old timings, and
the re-scorings only the copy has.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from .errors import RhovaeError
from .results import find_runs

RESULT_FILES = ("summary.json", ".hydra/*.yaml", "metrics.jsonl", "milestones.jsonl", "train.log", "evaluation*.json",
                "bdmc*.json", "gaps*.json")
APPEND_ONLY = ("metrics.jsonl", "milestones.jsonl")  # a continued run adds lines and rewrites none
RESCORINGS = ("evaluation*.json", "bdmc*.json", "gaps*.json")
ROUNDING = 1e-5  # relative: float32 rounding summed over an epoch, far below any difference a table shows
TIMING_SUFFIX = "_s"  # epoch_s, eval_s: seconds, which differ between two runs of the same deterministic training


class CollectConflict(RhovaeError):
    """A run's copy under the destination holds results that the source's files would replace."""


def finished(run: Path) -> bool:
    """Whether ``run`` has finished training and scoring: its summary.json says ``completed``."""
    try:
        return json.loads((run / "summary.json").read_text()).get("status") == "completed"
    except (OSError, json.JSONDecodeError, AttributeError):
        return False


def run_pairs(source: Path, dest: Path, completed_only: bool = False) -> list[tuple[Path, Path]]:
    """(run folder, its copy's folder) for every run below ``source`` (only the finished ones if
    ``completed_only``)."""
    return [(run, dest / (run.relative_to(source) if run != source else Path(source.name)))
            for run in find_runs(source) if not completed_only or finished(run)]


def _agree(old: object, new: object) -> bool:
    if isinstance(old, float) and isinstance(new, float):
        return math.isclose(old, new, rel_tol=ROUNDING, abs_tol=1e-12)
    return old == new


def _records(text: bytes) -> list[dict]:
    """The JSON lines of ``text`` without their timings."""
    return [{k: v for k, v in json.loads(line).items() if not k.endswith(TIMING_SUFFIX)}
            for line in text.splitlines() if line.strip()]


def reproduces(old: bytes, new: bytes) -> bool:
    """Whether the JSON lines ``new`` start with the records of ``old``, every value but the timings equal up to
    float32 rounding (an epoch's mean training loss, summed in another order, differs in its last digits). A record
    of ``new`` may hold keys that ``old``'s lacks (a metric a later version of the code adds), never lack one."""
    try:
        kept, fresh = _records(old), _records(new)
    except (json.JSONDecodeError, AttributeError):
        return False
    return len(fresh) >= len(kept) and all(
        a.keys() <= b.keys() and all(_agree(a[k], b[k]) for k in a) for a, b in zip(kept, fresh))


def first_difference(one: bytes, other: bytes) -> tuple[int, str | None, list[str]]:
    """How many records two runs' JSON lines share (the shorter file's count), where they first part, and the keys
    only one of them records. The second is None when every value both records hold agrees up to float32 rounding,
    timings aside, else its epoch and the first value that differs (``"epoch 3: test/nll 92.21 against 92.30"``).
    A key only one run records (a metric a later version of the code adds, such as ``test/active_units``) is no
    difference in what both measured; the third lists them, sorted, so that a report can say so."""
    mine, theirs = _records(one), _records(other)
    only_one: set[str] = set()
    for a, b in zip(mine, theirs):
        only_one |= a.keys() ^ b.keys()
        for key in a:  # in the record's own order, so that a report names the same value every time
            if key in b and not _agree(a[key], b[key]):
                where = f"epoch {a.get('epoch', '?')}"
                return min(len(mine), len(theirs)), f"{where}: {key} {a[key]!r} against {b[key]!r}", sorted(only_one)
    return min(len(mine), len(theirs)), None, sorted(only_one)


def conflict(run: Path, copy: Path) -> str | None:
    """Why copying ``run`` over ``copy`` would replace evidence, or None if it only adds to it."""
    broken = []  # (file, the source's file, whether the source reproduces it timings aside)
    added: set[str] = set()  # metrics the reproducing source records and the copy does not
    for name in APPEND_ONLY:
        kept = copy / name
        if not kept.is_file():
            continue
        new = run / name
        if not new.is_file():
            return f"{new} is missing (another run, or one that has not started)"
        old_bytes, new_bytes = kept.read_bytes(), new.read_bytes()
        if not new_bytes.startswith(old_bytes):
            same = reproduces(old_bytes, new_bytes)
            broken.append((name, new, same))
            if same:  # every key of the copy's records is the source's too: the keys in one only are added
                added.update(first_difference(old_bytes, new_bytes)[2])
    for pattern in RESCORINGS:
        for kept in sorted(copy.glob(pattern)):
            new = run / kept.name
            if new.is_file() and new.read_bytes() != kept.read_bytes():
                return f"its {kept.name} differs from {new}"
    if not broken:
        return None
    unreproduced = [(name, new) for name, new, same in broken if not same]
    if unreproduced:
        name, new = unreproduced[0]
        return f"its {name} is not the start of {new}'s (another run, or a rerun that does not reproduce it)"
    name, new, _ = broken[0]
    lost = ["the old timings"] + [kept.name for pattern in RESCORINGS for kept in sorted(copy.glob(pattern))
                                  if not (run / kept.name).exists()]
    besides = f", and records {', '.join(sorted(added))} besides" if added else ""
    return (f"its {name} is not the start of {new}'s (a rerun that reproduces every recorded number to float32 "
            f"rounding, timings aside{besides}; --replace would lose {', '.join(lost)})")


def collect(source: Path, dest: Path, replace: bool = False, completed_only: bool = False) -> list[Path]:
    """Copy the result files of every run below ``source`` into ``dest``; return the copies. With
    ``completed_only``, runs still training, stopped or failed are left out (a sweep collected as it goes).

    Raises CollectConflict, having copied nothing, when a copy under ``dest`` holds results the source does not
    continue; with ``replace`` such copies are deleted and written afresh instead.
    """
    pairs = run_pairs(source, dest, completed_only)
    clashes = [(copy, why) for run, copy in pairs if copy.is_dir() and (why := conflict(run, copy))]
    if clashes and not replace:
        copy, why = clashes[0]
        more = f" (and {len(clashes) - 1} more runs)" if len(clashes) > 1 else ""
        raise CollectConflict(f"{copy} already holds results that {source} would replace: {why}{more}; nothing was "
                              f"copied. Collect into another folder, or pass --replace to replace those runs' copies")
    for copy, _ in clashes:
        shutil.rmtree(copy)
    copied = []
    for run, copy in pairs:
        for pattern in RESULT_FILES:
            for path in sorted(run.glob(pattern)):
                target = copy / path.relative_to(run)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                copied.append(target)
    return copied
