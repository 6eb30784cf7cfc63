"""Split a finished run's log p(x) - ELBO into approximation and amortization gaps (Cremer, Li & Duvenaud 2018).

    python scripts/gaps.py RUN_DIR                            # the run's gaps.* settings (1000 test images)
    python scripts/gaps.py RUN_DIR gaps.n_images=500          # any gaps.* key, and how it runs (trainer.device)
    python scripts/gaps.py RUN_DIR --checkpoint epoch_364     # a milestone's model: gaps_epoch_364.json / .npz
    python scripts/gaps.py RUN_DIR --overwrite                # replace an earlier gaps.json / gaps.npz

Loads the best checkpoint (or ``--checkpoint``: last, a milestone's epoch_N), optimizes each test image's local
posterior parameters (``rhovae/gaps.py`` says how every number is estimated) and writes RUN_DIR/gaps.json (means,
spreads, settings, time) and RUN_DIR/gaps.npz (the per-image arrays); another checkpoint's analysis goes to
gaps_<checkpoint>.json and .npz, with its epoch, so a run's milestones can be analysed while it trains on. Nothing
else in the run folder changes; ``scripts/summarize.py`` picks gaps.json up, ``scripts/doc_tables.py`` the
milestones' files. A key that would change the model or its data (``posterior.min_std``, ``latent_dim``) or that
this analysis does not read (``eval.*``) is refused before anything runs, and the overrides are recorded in the
file.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's rhovae, not another copy pip installed

from rhovae.errors import RhovaeError  # noqa: E402
from rhovae.build import gaps_paths, load_trained_run, write_gaps  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder written by train.py")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. gaps.n_images=500)")
    parser.add_argument("--checkpoint", default="best",
                        help="best (the run's own model), last, or a milestone's epoch_N")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing analysis of that checkpoint")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"overrides must look like key=value, got {bad[0]!r}")
    outputs = gaps_paths(args.run_dir, args.checkpoint)
    existing = [p for p in outputs if p.exists()]
    try:
        # the checkpoint and keys are checked before anything else, so a typo is reported whether or not an
        # analysis exists
        config, data, model, ckpt = load_trained_run(args.run_dir, args.overrides, args.checkpoint,
                                                     may_override=("gaps",))
        if existing and not args.overwrite:
            raise RhovaeError(f"{existing[0]} exists; nothing was changed. Pass --overwrite to replace it")
        summary = write_gaps(model, data, config.gaps, args.run_dir, progress=config.trainer.progress,
                             overrides=args.overrides, checkpoint=args.checkpoint, epoch=ckpt["state"]["epoch"])
    except RhovaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for key, value in summary.items():
        if not isinstance(value, dict):
            print(f"{key:<20}  {value:.3f}" if isinstance(value, float) else f"{key:<20}  {value}")
    print(f"written: {outputs[0]}, {outputs[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
