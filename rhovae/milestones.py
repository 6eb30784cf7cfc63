"""Scores at chosen epochs of one long run, so that one run gives the whole curve of a number against training budget.

With ``trainer.milestones=[10,20,50,100]`` the training loop stops at the end of each of those epochs, saves that
epoch's checkpoint to ``checkpoints/epoch_<N>.pt`` and scores the model of that epoch (not the best one so far) on
the first ``eval.milestone_images`` test images: test ELBO, active units, importance-weighted NLL with
K = ``eval.milestone_iw_samples``, its K / 10 estimate, ESS and the Pareto k-hat (``rhovae.evaluation``). One row
per milestone goes into ``milestones.jsonl``; ``n_images`` in the row says it is a subset. The final test evaluation
of the run still scores the whole test set. Every evaluation draws from its own seeded stream, so milestones never
change training: a run with milestones trains exactly as one without.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from .checkpoint import save_atomic
from .evaluation import active_units, evaluate_elbo, importance_metrics, importance_weighted_estimates
from .tracking import append_jsonl, read_jsonl
from .trainer import TrainingRun

log = logging.getLogger(__name__)

MILESTONES = "milestones.jsonl"
CHECKPOINT_PREFIX = "epoch_"  # checkpoints/epoch_<N>.pt


def milestone_checkpoint(run_dir: Path, epoch: int) -> Path:
    return run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{epoch}.pt"


def milestone_epoch(checkpoint_name: str) -> int | None:
    """The epoch of a milestone checkpoint's name (``epoch_364`` -> 364), None for any other name."""
    epoch = checkpoint_name.removeprefix(CHECKPOINT_PREFIX)
    return int(epoch) if checkpoint_name.startswith(CHECKPOINT_PREFIX) and epoch.isdigit() else None


def evaluate_milestone(run: TrainingRun) -> dict[str, Any]:
    """Save the current epoch's checkpoint and append its scores (the run's ``eval`` settings) to
    ``milestones.jsonl``; return the row."""
    epoch, settings = run.state.epoch, run.config.eval
    save_atomic(run.checkpoint(), milestone_checkpoint(run.run_dir, epoch))
    images = run.data.test[: settings.milestone_images]
    started = time.perf_counter()
    row: dict[str, Any] = {"epoch": epoch, "n_images": len(images)}
    row.update({f"test/{k}": v for k, v in evaluate_elbo(run.model, images, batch_size=settings.batch_size,
                                                         eval_seed=settings.seed).items()})
    row["test/active_units"] = active_units(run.model, images, batch_size=settings.batch_size, eval_seed=settings.seed,
                                            mean_samples=settings.mean_samples, threshold=settings.active_threshold)
    if settings.milestone_iw_samples > 0:
        estimates = importance_weighted_estimates(run.model, images, n_samples=settings.milestone_iw_samples,
                                                  chunk=settings.iw_chunk, batch_size=settings.iw_batch_size,
                                                  eval_seed=settings.seed, precision=settings.iw_precision)
        row.update({f"test/{k}": v for k, v in importance_metrics(estimates, settings.milestone_iw_samples).items()})
    row["eval_s"] = time.perf_counter() - started
    append_jsonl(run.run_dir / MILESTONES, row)
    nll = f", NLL {row['test/nll']:.2f} (K={settings.milestone_iw_samples})" if "test/nll" in row else ""
    log.info("milestone epoch %d on %d test images: ELBO %.2f%s, %.0fs", epoch, len(images), row["test/elbo"], nll,
             row["eval_s"])
    return row


def keep_saved_milestones(run_dir: Path, epoch: int) -> None:
    """Drop rows of ``milestones.jsonl`` after ``epoch``: a resumed run redoes any epoch its checkpoint lacks, and
    with it that epoch's milestone."""
    path = run_dir / MILESTONES
    if not path.is_file():
        return
    rows = read_jsonl(path)
    kept = [row for row in rows if row["epoch"] <= epoch]
    if len(kept) < len(rows):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)
        for row in kept:
            append_jsonl(tmp, row)
        os.replace(tmp, path)
