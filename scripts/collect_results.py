"""Copy the small result files of runs into results/ (the committed evidence), never their checkpoints or pictures.

    python scripts/collect_results.py outputs/multirun/<sweep> results/<experiment>       # every run of a sweep
    python scripts/collect_results.py /runs/iwae_paper/mnist_fullcov_k1_s0 results/iwae_paper_posteriors
    python scripts/collect_results.py --completed <sweep still running> results/<experiment>  # its finished runs

Each run folder below SOURCE (itself included) is mirrored under DEST with its path relative to SOURCE (a single
run keeps its own folder name): ``summary.json``, ``.hydra/*.yaml``, ``metrics.jsonl``, ``milestones.jsonl``,
``train.log``, and its re-scorings (``evaluation*.json``, ``bdmc*.json``, ``gaps*.json``). A run still training
can be collected again as it goes: the copies are refreshed, and nothing else under DEST is touched. A copy that
the source does not continue (another run or a rerun in its place, a re-scoring that differs) is refused, nothing
copied, unless ``--replace`` is given (rhovae/collecting.py). The copies are what ``scripts/summarize.py DEST`` and
``scripts/doc_tables.py`` read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rhovae.collecting import collect  # noqa: E402
from rhovae.errors import RhovaeError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a run folder, or a sweep folder holding runs")
    parser.add_argument("dest", type=Path, help="a folder under results/")
    parser.add_argument("--replace", action="store_true",
                        help="replace the copies of runs that the source does not continue (another run, a rerun)")
    parser.add_argument("--completed", action="store_true",
                        help="only the runs whose summary.json says completed (a sweep collected while it runs)")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        print(f"error: {args.source} is not a folder", file=sys.stderr)
        return 1
    try:
        copied = collect(args.source, args.dest, replace=args.replace, completed_only=args.completed)
    except RhovaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if not copied:
        what = "completed run (summary.json with status completed)" if args.completed else \
            "run: expected folders holding summary.json or .hydra/config.yaml"
        print(f"error: no {what} under {args.source}", file=sys.stderr)
        return 1
    print(f"{len(copied)} files copied into {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
