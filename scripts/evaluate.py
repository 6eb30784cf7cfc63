"""Re-score a finished run from its checkpoint: test ELBO, importance-weighted NLL, active units; or log p(x) by AIS.

    python scripts/evaluate.py RUN_DIR                        # same settings as the run itself
    python scripts/evaluate.py RUN_DIR eval.iw_samples=500    # any eval.* key, and how it runs (trainer.device)
    python scripts/evaluate.py RUN_DIR --update-summary       # also merge the test/* numbers into summary.json
    python scripts/evaluate.py RUN_DIR --checkpoint epoch_364 # a milestone's model (trainer.milestones), whole test set
    python scripts/evaluate.py RUN_DIR --estimator ais ais.steps=1000   # annealed importance sampling (ais.* keys)

The run's config is read from its checkpoint (so the model is rebuilt exactly), overrides are applied on
top, and the results are written to a file of their own in RUN_DIR, named by checkpoint, estimator and settings
(``rhovae.rescoring``): evaluation.json for the run's own checkpoint (best) at its own settings,
evaluation_<checkpoint>.json for another checkpoint, ``_ais`` for AIS, and the overrides of ``eval.*``/``ais.*`` at the
end (evaluation_eval.iw_samples=500.json). A name already taken is refused before any work: no re-scoring replaces
another. With the same eval.seed and settings the numbers reproduce those written at the end of training.

``--estimator ais`` scores the first ``ais.n_images`` test images by annealed importance sampling (``rhovae.ais``:
the ``ais`` section's schedule, chains, HMC settings and initial distribution) and, on the same images, by the
importance-weighted estimate with ``ais.iw_samples`` samples, so the two pair image for image; its numbers are
``ais/*`` (``ais/nll``, ``ais/iw_nll``, ``ais/iw_minus_ais``), with the settings that made them (docs/ais.md), and
``per_image``: each image's log p(x) by both estimators with its Monte Carlo variance, so that two models scored on
the same images pair image for image (``rhovae.results.ais_image_pairs``, the ``ais_image_pairs`` table).

A milestone's checkpoint (epoch_N) gives that model's numbers on the whole test set, where milestones.jsonl has them
on the first ``eval.milestone_images`` test images. A key that would change the model or its data (``posterior.min_std``, ``latent_dim``) is refused with one line before
anything runs; ``--update-summary`` records the overrides in summary.json (``rescored_with``) beside the numbers
they made.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's rhovae, not another copy pip installed

from rhovae.ais import ais_metrics  # noqa: E402
from rhovae.errors import RhovaeError  # noqa: E402
from rhovae.evaluation import evaluate_test_set  # noqa: E402
from rhovae.build import trained_config, trained_model  # noqa: E402
from rhovae.posteriors import posterior_label  # noqa: E402
from rhovae.rescoring import rescoring_path, unclaimed  # noqa: E402
from rhovae.tracking import write_json_atomic  # noqa: E402

ESTIMATORS = ("iw", "ais")  # the run's own test evaluation (importance-weighted NLL), or annealed importance sampling


def rescore(run_dir: Path, overrides: list[str], checkpoint: str = "best", update_summary: bool = False,
            estimator: str = "iw") -> dict:
    if update_summary and checkpoint != "best":
        raise RhovaeError(f"--update-summary takes the run's own checkpoint (best), not {checkpoint!r}: summary.json "
                          "holds the numbers of the model the run selected")
    if update_summary and estimator != "iw":
        raise RhovaeError(f"--update-summary merges the run's own test numbers, not --estimator {estimator}'s: those "
                          "stay in their own file, which scripts/summarize.py reads")
    config, ckpt = trained_config(run_dir, overrides, checkpoint,
                                  may_override=("eval",) if estimator == "iw" else ("ais",))
    path = unclaimed(rescoring_path(run_dir, "evaluation", checkpoint, "" if estimator == "iw" else estimator,
                                    overrides, ckpt["config"]))
    data, model = trained_model(config, ckpt)
    result = {"run_dir": str(run_dir), "checkpoint": checkpoint, "epoch": ckpt["state"]["epoch"],
              "estimator": estimator, "overrides": overrides}
    if estimator == "iw":
        metrics, _ = evaluate_test_set(model, data, config.eval)
    else:
        images = data.test[: config.ais.n_images]
        label = posterior_label(ckpt["config"]["posterior"])
        numbers, per_image = ais_metrics(model, images, config.ais, progress=True, posterior_label=label)
        metrics = {f"ais/{k}": v for k, v in numbers.items()}
        result["settings"] = asdict(config.ais)
        result["per_image"] = per_image
    result.update(metrics)
    write_json_atomic(path, result)
    if update_summary:
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        write_json_atomic(summary_path, {**summary, **metrics, "rescored_with": overrides})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder written by train.py")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value (e.g. eval.iw_samples=500)")
    parser.add_argument("--checkpoint", default="best",
                        help="best (the run's own test numbers), last, or a milestone's epoch_N")
    parser.add_argument("--update-summary", action="store_true", help="merge the test/* numbers into summary.json")
    parser.add_argument("--estimator", choices=ESTIMATORS, default="iw",
                        help="iw: the run's own test evaluation; ais: annealed importance sampling (ais.* keys)")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"overrides must look like key=value, got {bad[0]!r}")
    try:
        result = rescore(args.run_dir, args.overrides, args.checkpoint, args.update_summary, args.estimator)
    except RhovaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    width = max(len(k) for k in result)
    for key, value in result.items():
        if key == "per_image":
            value = f"{', '.join(value)} for each of the {len(next(iter(value.values())))} images (in the file)"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        print(f"{key:<{width}}  {value:.3f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
