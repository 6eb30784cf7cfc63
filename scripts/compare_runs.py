"""Whether two runs are the same run: does a rerun (another machine, another install) reproduce a run or its
committed copy, or where do they part?

    python scripts/compare_runs.py <runs>/iwae_paper/mnist_rho_k1_s0 results/iwae_paper_posteriors/mnist_rho_k1_s0

For ``metrics.jsonl`` and ``milestones.jsonl`` (every epoch's training and validation numbers, every milestone's
scores) it compares the records both folders hold, so a shorter run can be checked against a longer one: equal up
to float32 rounding (relative 1e-5), timings aside, or the first epoch and value where they differ. A value only one
run records (a metric that a later version of the code adds) is listed, not compared. Exit status 0
when every shared record agrees and at least one is shared, 1 otherwise. The training is deterministic on one kind
of processor; across processors the kernels' vector width can change the rounding (results/iwae_paper_avx2_check).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rhovae.collecting import APPEND_ONLY, first_difference  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder")
    parser.add_argument("other", type=Path, help="another run folder, or a run's copy under results/")
    args = parser.parse_args(argv)
    same, compared = True, 0
    for name in APPEND_ONLY:
        files = [folder / name for folder in (args.run, args.other)]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            print(f"{name}: not compared ({', '.join(missing)} missing)")
            continue
        shared, difference, only_one = first_difference(*(f.read_bytes() for f in files))
        compared += shared
        if difference is None:
            print(f"{name}: {'the 1 record' if shared == 1 else f'the {shared} records'} both hold "
                  f"{'agrees' if shared == 1 else 'agree'} (float32 rounding, timings aside)")
        else:
            same = False
            print(f"{name}: they part at {difference} ({shared} shared)")
        if only_one:
            print(f"{name}: recorded by one run only, not compared: {', '.join(only_one)}")
    if compared == 0:
        print(f"error: {args.run} and {args.other} share no records to compare", file=sys.stderr)
        return 1
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
