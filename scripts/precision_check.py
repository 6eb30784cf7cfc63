"""Is ``eval.iw_precision=bfloat16`` safe for these runs on this machine? A paired check against float32.

    python scripts/precision_check.py RUN_DIR [RUN_DIR ...] [--images 2000] [--samples 1000]

For each finished run, the importance-weighted log p(x) of the first ``--images`` test images is estimated twice
from the same draws (the run's ``eval.seed``): with the decoder in float32 and under bfloat16 autocast. Printed per
run: both NLLs and their wall times, the paired difference (mean and its standard error over images, the largest
per-image change), and the NLL's own Monte Carlo standard error, the noise a precision change has to stay below.
Nothing in the run folder is written; ``--out`` saves the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's rhovae, not another copy pip installed

from rhovae.build import load_trained_run  # noqa: E402
from rhovae.errors import RhovaeError  # noqa: E402
from rhovae.evaluation import importance_weighted_estimates  # noqa: E402


def paired_check(run_dir: Path, images: int, samples: int) -> dict:
    config, data, model, _ = load_trained_run(run_dir)
    subset = data.test[:images]
    estimates, seconds = {}, {}
    for precision in ("float32", "bfloat16"):
        started = time.perf_counter()
        estimates[precision] = importance_weighted_estimates(
            model, subset, n_samples=samples, chunk=config.eval.iw_chunk, batch_size=config.eval.iw_batch_size,
            eval_seed=config.eval.seed, precision=precision)
        seconds[precision] = time.perf_counter() - started
    f32, bf16 = estimates["float32"], estimates["bfloat16"]
    change = -(bf16.log_px - f32.log_px)  # NLL(bfloat16) - NLL(float32) per image
    return {"run": str(run_dir), "images": len(subset), "samples": samples,
            "nll_float32": -f32.log_px.mean().item(), "nll_bfloat16": -bf16.log_px.mean().item(),
            "difference": change.mean().item(), "difference_se": (change.std() / len(change) ** 0.5).item(),
            "largest_change": change.abs().max().item(),
            "nll_mc_se": (f32.mc_variance.sum().sqrt() / len(subset)).item(),
            "seconds_float32": seconds["float32"], "seconds_bfloat16": seconds["bfloat16"],
            "speedup": seconds["float32"] / seconds["bfloat16"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", help="run folders written by train.py")
    parser.add_argument("--images", type=int, default=2000, help="first N test images")
    parser.add_argument("--samples", type=int, default=1000, help="importance samples K per image")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    for name in ("images", "samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be an integer >= 1, got {getattr(args, name)}")
    rows = []
    try:
        for run_dir in args.run_dirs:
            row = paired_check(run_dir, args.images, args.samples)
            rows.append(row)
            if args.out is not None:  # after every run, so that an interrupted check keeps what it measured
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(json.dumps(rows, indent=2) + "\n")
            print(f"{run_dir}: NLL float32 {row['nll_float32']:.3f} ({row['seconds_float32']:.0f} s), bfloat16 "
                  f"{row['nll_bfloat16']:.3f} ({row['seconds_bfloat16']:.0f} s, {row['speedup']:.2f}x faster); "
                  f"paired difference {row['difference']:+.4f} +- {row['difference_se']:.4f} nats (largest per "
                  f"image {row['largest_change']:.3f}); the NLL's Monte Carlo se {row['nll_mc_se']:.4f}", flush=True)
    except RhovaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
