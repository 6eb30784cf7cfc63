"""One training run from a composed config, read top to bottom: plan, train, test, summarise.

    run_experiment(cfg, run_dir)
      plan_run         the typed config checked, the folder checked, data loaded, model built; nothing written
      start_training   the folder claimed; a fresh optimizer, or the checkpoint's state restored
      fit              the epochs (rhovae.trainer), checkpoints and milestones
      test_best        the best checkpoint's test scores (rhovae.evaluation) and, with eval.gaps, its gaps
      record           summary.json, written once however the run ends (completed, interrupted, failed)

Everything lands in ``run_dir``:

    metrics.jsonl  summary.json  checkpoints/{last,best}.pt  samples.png  reconstructions.png
    learning_curves.png  latent_means.png (d = 2 only)  gaps.json  milestones.jsonl  wandb/
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from omegaconf import DictConfig

from .build import build_vae, load_data, set_process_mode, write_gaps
from .checkpoint import load_checkpoint
from .config import RunConfig, as_dict, load_config, resolve_device, resumed_config, validate_config
from .data import ImageData
from .errors import ConfigError
from .evaluation import EvaluationStopped, evaluate_test_set
from .interrupt import stop_on_signals
from .milestones import MILESTONES, evaluate_milestone, keep_saved_milestones
from .pictures import write_pictures
from .posteriors import posterior_label
from .provenance import provenance
from .run_folder import (CHECKPOINT, check_start, clear_outputs, exclusive_use, overwrite_salt, recorded_status,
                         run_records, wandb_run_id)
from .tracking import NullLogger, WandbLogger, append_jsonl, write_json_atomic
from .trainer import (NonFiniteLossError, TrainingInterrupted, TrainingRun, TrainState, configured_optimizer, fit,
                      interrupted, resume_command, training_finished)
from .vae import VAE, count_parameters

log = logging.getLogger(__name__)


def run_experiment(cfg: DictConfig | RunConfig, run_dir: str | Path, sweep: str | None = None,
                   given: Iterable[str] | None = None,
                   on_start: Callable[[RunPlan], None] | None = None) -> dict[str, Any]:
    """Train, test and summarise one run described by ``cfg``; return the summary written to summary.json.

    ``sweep`` names the multirun this run belongs to (a W&B tag and a summary field), if any. ``given`` lists the
    keys the user set (see ``rhovae.config.resumed_config``). Everything is checked before the first write
    (``plan_run``); ``on_start`` is called once the run is accepted, before anything else is written.
    """
    run_dir = Path(run_dir)
    with contextlib.ExitStack() as held:
        if run_dir.is_dir():  # held before its checkpoint is read: another process may be training there
            held.enter_context(exclusive_use(run_dir))
        plan = plan_run(cfg, run_dir, given)
        if plan.complete:
            log.info("%s is complete (status completed); nothing to resume. Re-score it with scripts/evaluate.py, "
                     "or raise trainer.epochs to train on", run_dir)
            return json.loads((run_dir / "summary.json").read_text())
        if not run_dir.is_dir():
            run_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(exclusive_use(run_dir))
        claim_folder(plan, run_dir, on_start)
        return train_test_and_record(plan, run_dir, sweep)


def train_test_and_record(plan: RunPlan, run_dir: Path, sweep: str | None) -> dict[str, Any]:
    """The accepted run, in its claimed folder: train, test the best checkpoint, write pictures and summary.json."""
    config, model, data = plan.config, plan.model, plan.data
    summary = opening_summary(plan, sweep)
    state, tracker = TrainState(), NullLogger()
    try:
        run = start_training(plan, run_dir)
        run.provenance = summary["provenance"]
        state = run.state
        tracker = build_tracker(config, run_dir, sweep, run_id=state.run_id, provenance=summary["provenance"])
        with stop_on_signals() as stop:
            state = fit(run, tracker=tracker, stop=stop, on_milestone=evaluate_milestone)
            test, latent_means = test_best(plan, run_dir, state, stop)
    except Exception as err:  # the folder is claimed: every way out leaves summary.json saying how the run ended
        record(summary, run_dir, tracker, ended_by(err, state), config)
        raise
    title = f"{config.dataset.name}, {summary['method']}, seed {config.seed}"
    pictures = write_pictures(model, data, run_dir, state.history, latent_means, config.eval.seed, title,
                              test.get("test/kl_per_dim"))
    tracker.log_images({p.stem: p for p in pictures}, step=state.epoch)
    epoch_times = [row["epoch_s"] for row in state.history]
    best_row = next(row for row in state.history if row["epoch"] == state.best_epoch)
    record(summary, run_dir, tracker, {
        "status": "completed", "epochs": state.epoch, "best_epoch": state.best_epoch,
        "train_time_s": state.train_time_s, "epoch_s": sum(epoch_times) / len(epoch_times),
        "train/loss": state.history[-1]["train/loss"],
        **{key: value for key, value in best_row.items() if key.startswith("val/")}, **test,
    }, config)
    nll = f", NLL {test['test/nll']:.2f} (K={test['test/iw_samples']})" if "test/nll" in test else ""
    log.info("test ELBO %.2f (recon %.2f, KL %.2f)%s, %d active units, best epoch %d; outputs in %s",
             test["test/elbo"], test["test/recon"], test["test/kl"], nll, test["test/active_units"],
             state.best_epoch, run_dir)
    return summary


@dataclass
class RunPlan:
    """What a run will do, decided before anything is written: its typed config, device, data and model (built
    once, for the data's image shape), and the checkpoint it continues from, if any."""

    config: RunConfig
    device: torch.device
    checkpoint: dict[str, Any] | None = None
    status: str | None = None  # how the checkpoint's run ended, from its summary.json
    overwrite: bool = False
    notes: list[str] = field(default_factory=list)
    data: ImageData | None = None
    model: VAE | None = None

    @property
    def complete(self) -> bool:
        """A finished run resumed with nothing left to train: it is left exactly as it is."""
        if self.checkpoint is None:
            return False
        state = TrainState.from_saved(self.checkpoint["state"])
        return (self.status == "completed" and self.checkpoint.get("epoch_progress") is None
                and training_finished(state, self.config.trainer.epochs, self.config.trainer.patience))


def plan_run(cfg: DictConfig | RunConfig, run_dir: Path, given: Iterable[str] | None = None) -> RunPlan:
    """Check the config and the run folder, load the data and build the model; write nothing into ``run_dir``.

    Raises ``RhovaeError`` on anything that would refuse the run. A resumed run continues with its checkpoint's
    config (``resumed_config``: the keys given here that may change, on top). A complete run
    (``RunPlan.complete``) is planned without data or model: there is nothing to do with them.
    """
    config = cfg if isinstance(cfg, RunConfig) else load_config(cfg)
    device = validate_config(config)
    trainer = config.trainer
    check_start(run_dir, resume=trainer.resume, overwrite=trainer.overwrite)
    if trainer.overwrite and run_records(run_dir):
        plan = RunPlan(config, device, overwrite=True)
    elif not trainer.resume:
        plan = RunPlan(config, device)
    elif not (run_dir / CHECKPOINT).is_file():
        plan = RunPlan(config, device, notes=[f"no checkpoint in {run_dir}, starting afresh"])
    else:
        checkpoint = load_checkpoint(run_dir / CHECKPOINT, map_location="cpu")
        config = load_config(resumed_config(checkpoint["config"], as_dict(config), given, run_dir))
        # every value is one given here (checked above) or the checkpoint's; only the device is the machine's
        plan = RunPlan(config, resolve_device(config.trainer.device), checkpoint=checkpoint,
                       status=recorded_status(run_dir))
    if not plan.complete:
        check_stop_at_epoch(plan, run_dir)
        plan.data, plan.model = prepare(plan.config, plan.device)
    return plan


def check_stop_at_epoch(plan: RunPlan, run_dir: Path) -> None:
    """A resumed run already at (or past) ``trainer.stop_at_epoch`` would stop again at once: refuse in one line."""
    stop_at = plan.config.trainer.stop_at_epoch
    done = plan.checkpoint["state"]["epoch"] if plan.checkpoint is not None else 0
    if stop_at is not None and done >= stop_at:
        raise ConfigError(f"trainer.stop_at_epoch={stop_at}, but the run in {run_dir} has already trained {done} "
                          f"epochs; accepted: an epoch after {done}, or null to train to trainer.epochs="
                          f"{plan.config.trainer.epochs}")


def prepare(config: RunConfig, device: torch.device) -> tuple[ImageData, VAE]:
    """The process mode (``set_process_mode``: threads, subnormals) and seeds as the config says, then its data and
    its freshly initialised model, on ``device``."""
    set_process_mode(config.trainer)
    seed_everything(config.seed)
    data = load_data(config, device)
    batch_size = config.trainer.batch_size
    if batch_size > len(data.train):
        raise ConfigError(f"trainer.batch_size={batch_size} is larger than the training set ({len(data.train)} "
                          f"images of {config.dataset.name} after dataset.val_size={config.dataset.val_size}); "
                          f"accepted: 1 to {len(data.train)}")
    return data, build_vae(config, data.image_shape).to(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def claim_folder(plan: RunPlan, run_dir: Path, on_start: Callable[[RunPlan], None] | None) -> None:
    """The run is accepted and its folder held: empty it first with trainer.overwrite, then tell the caller."""
    if plan.overwrite:
        log.warning("trainer.overwrite=true: removed the previous run's %s from %s",
                    ", ".join(clear_outputs(run_dir)), run_dir)
    if on_start is not None:
        on_start(plan)
    for note in plan.notes:
        log.info("%s", note)


def opening_summary(plan: RunPlan, sweep: str | None) -> dict[str, Any]:
    """What summary.json says about a run whatever its ending: what it is and what it runs on."""
    config, device = plan.config, plan.device
    n_params = count_parameters(plan.model)
    log.info("%s | %s posterior | %s networks | d=%d | %d parameters | %s | train %d, val %d, test %d images",
             config.dataset.name, config.posterior.name, config.networks.name, config.latent_dim, n_params, device,
             len(plan.data.train), len(plan.data.val), len(plan.data.test))
    return {
        "status": "running", "dataset": config.dataset.name, "posterior": config.posterior.name,
        "method": posterior_label(dataclasses.asdict(config.posterior)), "sweep": sweep, "networks": config.networks.name,
        "seed": config.seed, "latent_dim": config.latent_dim, "binarize": config.dataset.binarize,
        "n_params": n_params, "device": str(device), "provenance": provenance(device),
    }


def start_training(plan: RunPlan, run_dir: Path) -> TrainingRun:
    """The plan's model and data with a fresh optimizer, restored from the plan's checkpoint or started afresh
    (with an empty metrics log)."""
    config = plan.config
    run = TrainingRun(plan.model, configured_optimizer(plan.model, config.trainer), plan.data,
                      torch.Generator(device=plan.device).manual_seed(config.seed), run_dir, config)
    metrics = run_dir / "metrics.jsonl"
    if plan.checkpoint is None:
        metrics.unlink(missing_ok=True)  # logs left by an attempt that never finished an epoch
        (run_dir / MILESTONES).unlink(missing_ok=True)
        run.state.run_id = wandb_run_id(run_dir, overwrite_salt() if plan.overwrite else "")
        return run
    run.restore(plan.checkpoint)
    state = run.state
    state.run_id = state.run_id or wandb_run_id(run_dir)  # checkpoints written before run ids existed
    metrics.unlink(missing_ok=True)  # the checkpoint's history is the truth: drop rows of an unsaved epoch
    for row in state.history:
        append_jsonl(metrics, row)
    keep_saved_milestones(run_dir, state.epoch)
    if run.progress is None and training_finished(state, config.trainer.epochs, config.trainer.patience):
        log.info("resuming %s: training is complete (%d epochs), on to the test evaluation", run_dir, state.epoch)
    else:
        log.info("resuming %s at epoch %d, step %d%s", run_dir, state.epoch + 1, state.step,
                 f" (batch {run.progress.next_batch} of that epoch)" if run.progress else "")
    return run


def test_best(plan: RunPlan, run_dir: Path, state: TrainState,
              stop: Callable[[], bool]) -> tuple[dict[str, Any], torch.Tensor]:
    """The test scores of the best checkpoint, loaded into the plan's model, and its test latent means."""
    config, model = plan.config, plan.model
    evaluation = config.eval
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.pt", map_location=plan.device)["model"])
    log.info("test evaluation of the best checkpoint (epoch %d): ELBO and active units on %d images%s",
             state.best_epoch, len(plan.data.test),
             f", then importance-weighted NLL with K={evaluation.iw_samples}" if evaluation.iw_samples else "")
    try:
        test, latent_means = evaluate_test_set(model, plan.data, evaluation, progress=config.trainer.progress,
                                               stop=stop)
        if evaluation.gaps:
            gaps = write_gaps(model, plan.data, config.gaps, run_dir, progress=config.trainer.progress, stop=stop)
            test.update({f"gaps/{k}": v for k, v in gaps.items() if not isinstance(v, dict)})
    except EvaluationStopped as err:
        raise interrupted(stop, f"{err}; training is complete and saved, so resuming goes straight to the test "
                                f"evaluation: {resume_command(run_dir)}") from err
    return test, latent_means


def ended_by(err: Exception, state: TrainState) -> dict[str, Any]:
    """summary.json's fields for a run that ``err`` ended: interrupted (a requested stop) or failed."""
    status = "interrupted" if isinstance(err, TrainingInterrupted) else "failed"
    known = isinstance(err, (NonFiniteLossError, TrainingInterrupted))  # messages that already say what happened
    if status == "failed" and not isinstance(err, NonFiniteLossError):
        log.exception("the run failed at epoch %d", state.epoch + 1)  # the traceback, into train.log
    return {"status": status, "error": str(err) if known else f"{type(err).__name__}: {err}", "epochs": state.epoch}


def record(summary: dict[str, Any], run_dir: Path, tracker, ending: dict[str, Any], config: RunConfig) -> None:
    """Write summary.json (``summary``, how the run ended, and its config) and hand the numbers to the tracker."""
    summary.update(ending, config=as_dict(config))
    write_json_atomic(run_dir / "summary.json", summary)
    tracker.summarize({k: v for k, v in summary.items() if k != "config"})
    tracker.finish(exit_code=0 if summary["status"] == "completed" else 1)


def build_tracker(config: RunConfig, run_dir: Path, sweep: str | None = None, run_id: str | None = None,
                  provenance: dict[str, Any] | None = None):
    """W&B (or nothing): seeds of one dataset and method share a group, runs of one sweep share its name as a tag.

    ``run_id`` (default: derived from the run folder) makes every attempt of a resumed run log into one W&B run;
    ``provenance`` is stored beside the config.
    """
    logger = config.logger
    if logger.name == "none":
        return NullLogger()
    plain = as_dict(config)
    dataset, posterior, networks = config.dataset.name, config.posterior.name, config.networks.name
    tags = [dataset, posterior, networks, *logger.tags, *([sweep] if sweep else [])]
    return WandbLogger(run_dir, {**plain, "provenance": provenance or {}}, project=logger.project,
                       entity=logger.entity, mode=logger.mode, group=f"{dataset}-{posterior_label(plain['posterior'])}",
                       name=run_dir.name, tags=tags, run_id=run_id or wandb_run_id(run_dir), verbose=logger.verbose)
