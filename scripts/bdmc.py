"""Bound the error of AIS on a finished run's model by bidirectional Monte Carlo (Grosse, Ghahramani & Adams 2015).

    python scripts/bdmc.py RUN_DIR                                  # the run's ais.* settings
    python scripts/bdmc.py RUN_DIR ais.n_images=100 --steps 100 300 1000   # several schedules, each its own file
    python scripts/bdmc.py RUN_DIR --checkpoint epoch_1093 ais.start=posterior trainer.device=cuda

Simulates ``ais.n_images`` images from the model itself (z ~ p(z), x ~ p(x|z)), runs AIS forward from the initial
distribution (a stochastic lower bound of log p(x)) and in reverse from the z each image was made from (an exact
posterior sample: a stochastic upper bound), with the schedule, chains and HMC settings of the ``ais`` section.
The mean gap between the two bounds the error of forward AIS with those settings, on data like the model's own:
choose ``ais.steps`` for ``scripts/evaluate.py RUN --estimator ais`` from it. Each schedule's numbers go to a file
of their own, named by checkpoint and settings (``bdmc_ais.steps=300.json``; ``rhovae.rescoring``); a name already
taken is refused before any work.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's rhovae, not another copy pip installed

from rhovae.ais import bdmc  # noqa: E402
from rhovae.build import trained_config, trained_model  # noqa: E402
from rhovae.errors import RhovaeError  # noqa: E402
from rhovae.posteriors import posterior_label  # noqa: E402
from rhovae.rescoring import rescoring_path, unclaimed  # noqa: E402
from rhovae.tracking import write_json_atomic  # noqa: E402


def run_bdmc(run_dir: Path, overrides: list[str], checkpoint: str = "best") -> tuple[Path, dict]:
    config, ckpt = trained_config(run_dir, overrides, checkpoint, may_override=("ais",))
    path = unclaimed(rescoring_path(run_dir, "bdmc", checkpoint, overrides=overrides, saved=ckpt["config"]))
    _, model = trained_model(config, ckpt)
    result = bdmc(model, config.ais, config.ais.n_images, progress=config.trainer.progress,
                  posterior_label=posterior_label(ckpt["config"]["posterior"]))
    record = {"run_dir": str(run_dir), "checkpoint": checkpoint, "epoch": ckpt["state"]["epoch"],
              "overrides": overrides, "settings": asdict(config.ais), **result}
    write_json_atomic(path, record)
    return path, record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder written by train.py")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (ais.*, trainer.device)")
    parser.add_argument("--checkpoint", default="best", help="best (default), last, or a milestone's epoch_N")
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="run once per number of intermediate distributions (ais.steps), each into its own file; "
                             "give it after the overrides")
    args = parser.parse_intermixed_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"overrides must look like key=value, got {bad[0]!r}")
    if args.steps and any(o.startswith("ais.steps=") for o in args.overrides):
        parser.error("give the number of steps once: --steps or ais.steps=")
    schedules = [[*args.overrides, f"ais.steps={t}"] for t in args.steps] if args.steps else [args.overrides]
    print(f"{'steps':>6}  {'lower':>9}  {'upper':>9}  {'gap':>7}  {'gap se':>7}  {'accept':>6}  {'seconds':>8}")
    try:
        for overrides in schedules:
            path, r = run_bdmc(args.run_dir, overrides, args.checkpoint)
            print(f"{r['steps']:>6}  {r['log_px_lower']:>9.3f}  {r['log_px_upper']:>9.3f}  {r['gap']:>7.3f}  "
                  f"{r['gap_se']:>7.3f}  {r['accept_forward']:>6.2f}  {r['seconds']:>8.1f}  {path.name}", flush=True)
    except RhovaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
