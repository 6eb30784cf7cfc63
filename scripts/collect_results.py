"""Copy the small result files of runs into results/ (the committed evidence), never their checkpoints or pictures.

    python scripts/collect_results.py outputs/multirun/<sweep> results/<experiment>       # every run of a sweep
    python scripts/collect_results.py /runs/iwae_paper/mnist_fullcov_k1_s0 results/iwae_paper_posteriors

Each run folder below SOURCE (itself included) is mirrored under DEST with its path relative to SOURCE (a single
run keeps its own folder name): ``summary.json``, ``.hydra/*.yaml``, ``metrics.jsonl``, ``milestones.jsonl``,
``train.log``, and its re-scorings (``evaluation*.json``, ``bdmc*.json``, ``gaps*.json``). A run still training
can be collected again as it goes: the copies are refreshed, and nothing else under DEST is touched. The copies
are what ``scripts/summarize.py DEST`` and ``scripts/doc_tables.py`` read.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rhovae.results import find_runs  # noqa: E402

PATTERNS = ("summary.json", ".hydra/*.yaml", "metrics.jsonl", "milestones.jsonl", "train.log", "evaluation*.json",
            "bdmc*.json", "gaps*.json")


def collect(source: Path, dest: Path) -> list[Path]:
    """Copy the result files of every run below ``source`` into ``dest``; return the copies."""
    copied = []
    for run in find_runs(source):
        relative = run.relative_to(source) if run != source else Path(source.name)
        for pattern in PATTERNS:
            for path in sorted(run.glob(pattern)):
                target = dest / relative / path.relative_to(run)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                copied.append(target)
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a run folder, or a sweep folder holding runs")
    parser.add_argument("dest", type=Path, help="a folder under results/")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        print(f"error: {args.source} is not a folder", file=sys.stderr)
        return 1
    copied = collect(args.source, args.dest)
    if not copied:
        print(f"error: no run under {args.source}: expected folders holding summary.json or .hydra/config.yaml",
              file=sys.stderr)
        return 1
    print(f"{len(copied)} files copied into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
