"""One training run from a composed config: data, model, training, test scores, pictures and summary.json.

This is the glue between the configuration (an OmegaConf ``DictConfig``, usually composed by Hydra in
``train.py``) and the Hydra-free pieces of the package. Everything lands in ``run_dir``:

    metrics.jsonl  summary.json  checkpoints/{last,best}.pt  samples.png  reconstructions.png
    learning_curves.png  latent_means.png (d = 2 only)  wandb/
"""

from __future__ import annotations

import functools
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .checkpoint import load_checkpoint
from .config import RESUMABLE_KEYS, flatten, in_sections, reject_unknown_keys, unflatten, validate_config
from .data import ImageData, load_image_data
from .errors import ConfigError
from .evaluation import EvalSettings, EvaluationStopped, evaluate_test_set
from .gaps import GapSettings, inference_gaps
from .networks import build_networks
from .pictures import write_pictures
from .posteriors import build_posterior, posterior_label
from .provenance import provenance
from .interrupt import stop_on_signals
from .milestones import MILESTONES, evaluate_milestone, keep_saved_milestones
from .run_folder import (CHECKPOINT, check_start, clear_outputs, overwrite_salt, recorded_status, run_records,
                         wandb_run_id)
from .schema import keys_with, section_defaults, upgrade
from .tracking import NullLogger, WandbLogger, append_jsonl, write_json_atomic
from .trainer import (NonFiniteLossError, TrainingInterrupted, TrainingRun, TrainSettings, TrainState, fit,
                      interrupted, make_optimizer, resume_command, training_finished)
from .vae import VAE, count_parameters

log = logging.getLogger(__name__)


def _options(section: Mapping[str, Any]) -> dict[str, Any]:
    """A config group's entries other than its ``name``, as constructor keyword arguments."""
    return {k: v for k, v in section.items() if k != "name"}


def build_vae(config: Mapping[str, Any], image_shape) -> VAE:
    """The VAE a (resolved, plain-dict) run config describes; used for training and for re-loading runs."""
    latent_dim = config["latent_dim"]
    encoder, decoder = build_networks(config["networks"]["name"], image_shape, latent_dim,
                                      **_options(config["networks"]))
    posterior = build_posterior(config["posterior"]["name"], encoder.out_features, latent_dim,
                                **_options(config["posterior"]))
    return VAE(encoder, posterior, decoder, latent_dim)


def load_data(config: Mapping[str, Any], device: torch.device) -> ImageData:
    ds = config["dataset"]
    return load_image_data(ds["name"], ds["root"], binarize=ds["binarize"], val_size=ds["val_size"],
                           binarize_seed=ds["binarize_seed"], download=ds["download"], device=device)


def eval_settings(config: Mapping[str, Any]) -> EvalSettings:
    return EvalSettings(**config["eval"])


def gap_settings(config: Mapping[str, Any]) -> GapSettings:
    return GapSettings(**config["gaps"])


# What only says how a command runs (device, threads, data folder, logger) or how it batches its work: any script
# that re-scores a run may change these (rhovae/key_roles.py marks them).
NOT_FACTORS = keys_with("is_factor", False)


def load_trained_run(run_dir: Path, overrides: Sequence[str] = (), checkpoint: str = "best",
                     may_override: Sequence[str] = ("eval",)):
    """A finished run's config (its checkpoint's, with ``overrides`` on top), device, data and trained model.

    Overrides name keys of the run's config (``eval.iw_samples=500``); an unknown key is refused with the closest
    known one, and so is a key outside ``may_override`` (sections or keys the caller estimates with) and the keys
    that only say how a command runs: anything else would score a different model or different data than the run
    trained and write its numbers beside the run's. Returns ``(config, data, model, checkpoint_dict)``.
    """
    ckpt = load_checkpoint(run_dir / "checkpoints" / f"{checkpoint}.pt")
    # keys added to the project after the run was trained take their defaults
    saved = OmegaConf.merge(OmegaConf.create(section_defaults()), OmegaConf.create(upgrade(ckpt["config"])))
    given = flatten(OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides))))
    reject_unknown_keys(given, flatten(OmegaConf.to_container(saved)), where="of the run's configuration")
    accepted = [*may_override, *(k for k in NOT_FACTORS if not in_sections(k, ("eval", "gaps")))]
    refused = sorted(k for k in given if not in_sections(k, accepted))
    if refused:
        shown = ", ".join(f"{k}.*" if k in ("eval", "gaps") else k for k in accepted)
        raise ConfigError(f"{', '.join(refused)} would change the model or data that {run_dir} trained; nothing was "
                          f"written. Accepted here: {shown}")
    cfg = OmegaConf.merge(saved, OmegaConf.from_dotlist(list(overrides)))
    device = validate_config(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    data = load_data(config, device)
    model = build_vae(config, data.image_shape).to(device)
    model.load_state_dict(ckpt["model"])
    return config, data, model, ckpt


def write_gaps(model: VAE, data: ImageData, settings: GapSettings, run_dir: Path, *, progress: bool = False,
               stop: Callable[[], bool] = lambda: False, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The inference-gap analysis of the first ``settings.n_images`` test images: ``gaps.json`` (with the
    ``overrides`` a script applied to the run's config) and ``gaps.npz``."""
    images = data.test[: settings.n_images]
    log.info("inference gaps on %d test images: %d Adam steps each, log p(x) with K=%d", len(images),
             settings.steps, settings.iw_samples)
    summary, arrays = inference_gaps(model, images, settings, progress=progress, stop=stop)
    summary["overrides"] = list(overrides)
    write_json_atomic(run_dir / "gaps.json", summary)
    np.savez(run_dir / "gaps.npz", **{k: v.numpy() for k, v in arrays.items()})
    log.info("approximation gap %.2f, amortization gap %.2f nats (log p(x) %.2f, ELBO %.2f -> %.2f locally)",
             summary["approximation_gap"], summary["amortization_gap"], summary["log_px"],
             summary["elbo_amortized"], summary["elbo_local"])
    return summary


def resumed_config(saved: Mapping[str, Any], current: Mapping[str, Any], given: Iterable[str] | None,
                   run_dir: Path) -> dict[str, Any]:
    """The config a resumed run continues with: the checkpoint's, with the given keys that may change applied.

    ``given`` lists the keys the user set for this command (``None``: treat every key of ``current`` as given).
    A given key that differs from the checkpoint and would train a different model, or on different data, is
    refused. Keys the checkpoint does not have (added to the project after it was written) take ``current``'s.
    """
    old, new = flatten(saved), flatten(current)
    given = set(new) if given is None else set(given)
    changed = sorted(k for k in given & set(new) if k in old and old[k] != new[k])
    refused = [k for k in changed if not in_sections(k, RESUMABLE_KEYS)]
    if refused:
        diffs = "; ".join(f"{k}={new[k]!r} (checkpoint: {old[k]!r})" for k in refused)
        allowed = ", ".join(k for k in sorted(old.keys() | new.keys()) if in_sections(k, RESUMABLE_KEYS))
        raise ConfigError(f"cannot resume {run_dir}: the config differs from its checkpoint in {diffs}; nothing was "
                          f"changed. Keys that may change on resume: {allowed}")
    merged = {**new, **old, **{k: new[k] for k in changed}}
    return unflatten({k: v for k, v in merged.items() if k in new or k in old})


@dataclass
class RunPlan:
    """What a run will do, decided before anything is written: its config, device, data and model (built once,
    for the data's image shape), and the checkpoint it continues from, if any."""

    config: dict[str, Any]
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
        trainer = self.config["trainer"]
        state = TrainState(**self.checkpoint["state"])
        return (self.status == "completed" and self.checkpoint.get("epoch_progress") is None
                and training_finished(state, trainer["epochs"], trainer["patience"]))


def plan_run(cfg: DictConfig, run_dir: Path, given: Iterable[str] | None = None) -> RunPlan:
    """Check the config and the run folder, load the data and build the model; write nothing into ``run_dir``.

    Raises ``RhovaeError`` on anything that would refuse the run. A complete run (``RunPlan.complete``) is
    planned without data or model: there is nothing to do with them.
    """
    device = validate_config(cfg)
    config = OmegaConf.to_container(cfg, resolve=True)
    trainer = config["trainer"]
    check_start(run_dir, resume=trainer["resume"], overwrite=trainer["overwrite"])
    if trainer["overwrite"] and run_records(run_dir):
        plan = RunPlan(config, device, overwrite=True)
    elif not trainer["resume"]:
        plan = RunPlan(config, device)
    elif not (run_dir / CHECKPOINT).is_file():
        plan = RunPlan(config, device, notes=[f"no checkpoint in {run_dir}, starting afresh"])
    else:
        checkpoint = load_checkpoint(run_dir / CHECKPOINT, map_location=device)
        config = resumed_config(upgrade(checkpoint["config"]), config, given, run_dir)
        device = validate_config(OmegaConf.create(config))
        plan = RunPlan(config, device, checkpoint=checkpoint, status=recorded_status(run_dir))
    if not plan.complete:
        plan.data, plan.model = prepare(plan.config, plan.device)
    return plan


def prepare(config: Mapping[str, Any], device: torch.device) -> tuple[ImageData, VAE]:
    """Threads and seeds as the config says, then its data and its freshly initialised model, on ``device``."""
    if config["trainer"]["threads"] is not None:
        torch.set_num_threads(config["trainer"]["threads"])
    seed_everything(config["seed"])
    data = load_data(config, device)
    batch_size = config["trainer"]["batch_size"]
    if batch_size > len(data.train):
        raise ConfigError(f"trainer.batch_size={batch_size} is larger than the training set ({len(data.train)} "
                          f"images of {config['dataset']['name']} after dataset.val_size="
                          f"{config['dataset']['val_size']}); accepted: 1 to {len(data.train)}")
    return data, build_vae(config, data.image_shape).to(device)


def start_training(plan: RunPlan, run_dir: Path) -> TrainingRun:
    """The plan's model and data with a fresh optimizer, restored from the plan's checkpoint or started afresh
    (with an empty metrics log)."""
    config = plan.config
    run = TrainingRun(plan.model, make_optimizer(plan.model, config["trainer"]["lr"], config["trainer"]["adam_eps"]),
                      plan.data,
                      torch.Generator(device=plan.device).manual_seed(config["seed"]), run_dir, config)
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
    trainer = config["trainer"]
    if run.progress is None and training_finished(state, trainer["epochs"], trainer["patience"]):
        log.info("resuming %s: training is complete (%d epochs), on to the test evaluation", run_dir, state.epoch)
    else:
        log.info("resuming %s at epoch %d, step %d%s", run_dir, state.epoch + 1, state.step,
                 f" (batch {run.progress.next_batch} of that epoch)" if run.progress else "")
    return run


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_tracker(config: Mapping[str, Any], run_dir: Path, sweep: str | None = None, run_id: str | None = None):
    """W&B (or nothing): seeds of one dataset and posterior share a group, runs of one sweep share its name as a tag.

    ``run_id`` (default: derived from the run folder) makes every attempt of a resumed run log into one W&B run.
    """
    logger_cfg = config["logger"]
    if logger_cfg["name"] == "none":
        return NullLogger()
    dataset, posterior, networks = config["dataset"]["name"], config["posterior"]["name"], config["networks"]["name"]
    tags = [dataset, posterior, networks, *logger_cfg.get("tags", []), *([sweep] if sweep else [])]
    return WandbLogger(run_dir, config, project=logger_cfg["project"], entity=logger_cfg.get("entity"),
                       mode=logger_cfg["mode"], group=f"{dataset}-{posterior_label(config['posterior'])}",
                       name=run_dir.name, tags=tags, run_id=run_id or wandb_run_id(run_dir),
                       verbose=logger_cfg.get("verbose", False))


def run_experiment(cfg: DictConfig, run_dir: str | Path, sweep: str | None = None, given: Iterable[str] | None = None,
                   on_start: Callable[[RunPlan], None] | None = None) -> dict[str, Any]:
    """Train, test and summarise one run described by ``cfg``; return the summary written to summary.json.

    ``sweep`` names the multirun this run belongs to (a W&B tag and a summary field), if any. ``given`` lists the
    keys the user set (see ``resumed_config``). Everything is checked before the first write (``plan_run``);
    ``on_start`` is called once the run is accepted, before anything else is written.
    """
    run_dir = Path(run_dir)
    plan = plan_run(cfg, run_dir, given)
    if plan.complete:
        log.info("%s is complete (status completed); nothing to resume. Re-score it with scripts/evaluate.py, or "
                 "raise trainer.epochs to train on", run_dir)
        return json.loads((run_dir / "summary.json").read_text())
    return start_run(plan, run_dir, sweep, on_start)


def start_run(plan: RunPlan, run_dir: Path, sweep: str | None = None,
              on_start: Callable[[RunPlan], None] | None = None) -> dict[str, Any]:
    """Carry out an accepted ``RunPlan``: train (or continue), test, write pictures and summary.json."""
    config, device, data, model = plan.config, plan.device, plan.data, plan.model
    run_dir.mkdir(parents=True, exist_ok=True)
    if plan.overwrite:
        log.warning("trainer.overwrite=true: removed the previous run's %s from %s",
                    ", ".join(clear_outputs(run_dir)), run_dir)
    if on_start is not None:
        on_start(plan)
    for note in plan.notes:
        log.info("%s", note)
    dataset, posterior = config["dataset"]["name"], config["posterior"]["name"]
    settings = TrainSettings.from_config(config)
    evaluation = eval_settings(config)
    n_params = count_parameters(model)
    log.info("%s | %s posterior | %s networks | d=%d | %d parameters | %s | train %d, val %d, test %d images",
             dataset, posterior, config["networks"]["name"], config["latent_dim"], n_params, device,
             len(data.train), len(data.val), len(data.test))
    summary: dict[str, Any] = {
        "status": "running", "dataset": dataset, "posterior": posterior,
        "method": posterior_label(config["posterior"]), "sweep": sweep, "networks": config["networks"]["name"],
        "seed": config["seed"], "latent_dim": config["latent_dim"], "binarize": config["dataset"]["binarize"],
        "n_params": n_params, "device": str(device), "provenance": provenance(device),
    }
    state, tracker = TrainState(), NullLogger()
    try:
        run = start_training(plan, run_dir)
        run.provenance = summary["provenance"]
        state = run.state
        tracker = build_tracker({**config, "provenance": summary["provenance"]}, run_dir, sweep, run_id=state.run_id)
        with stop_on_signals() as stop:
            state = fit(run, settings, evaluation, tracker=tracker, stop=stop,
                        on_milestone=functools.partial(evaluate_milestone, settings=evaluation))
            model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.pt", map_location=device)["model"])
            log.info("test evaluation of the best checkpoint (epoch %d): ELBO and active units on %d images%s",
                     state.best_epoch, len(data.test),
                     f", then importance-weighted NLL with K={evaluation.iw_samples}" if evaluation.iw_samples else "")
            try:
                test, latent_means = evaluate_test_set(model, data, evaluation, progress=settings.progress, stop=stop)
                if evaluation.gaps:
                    gaps = write_gaps(model, data, gap_settings(config), run_dir, progress=settings.progress,
                                      stop=stop)
                    test.update({f"gaps/{k}": v for k, v in gaps.items() if not isinstance(v, dict)})
            except EvaluationStopped as err:
                raise interrupted(stop, f"{err}; training is complete and saved, so resuming goes straight to the "
                                        f"test evaluation: {resume_command(run_dir)}") from err
    except Exception as err:  # the folder is claimed: every way out leaves summary.json saying how the run ended
        status = "interrupted" if isinstance(err, TrainingInterrupted) else "failed"
        known = isinstance(err, (NonFiniteLossError, TrainingInterrupted))  # messages that already say what happened
        error = str(err) if known else f"{type(err).__name__}: {err}"
        if status == "failed" and not isinstance(err, NonFiniteLossError):
            log.exception("the run failed at epoch %d", state.epoch + 1)  # the traceback, into train.log
        summary.update(status=status, error=error, epochs=state.epoch, config=config)
        write_json_atomic(run_dir / "summary.json", summary)
        tracker.summarize(summary)
        tracker.finish(exit_code=1)
        raise

    title = f"{dataset}, {summary['method']}, seed {config['seed']}"
    pictures = write_pictures(model, data, run_dir, state, latent_means, evaluation.seed, title,
                              test.get("test/kl_per_dim"))
    epoch_times = [row["epoch_s"] for row in state.history]
    summary.update({
        "status": "completed", "epochs": state.epoch, "best_epoch": state.best_epoch,
        "train_time_s": state.train_time_s, "epoch_s": sum(epoch_times) / len(epoch_times),
        "train/loss": state.history[-1]["train/loss"], "val/elbo": state.best_val_elbo, **test, "config": config,
    })
    write_json_atomic(run_dir / "summary.json", summary)
    tracker.log_images({p.stem: p for p in pictures}, step=state.epoch)
    tracker.summarize({k: v for k, v in summary.items() if k != "config"})
    tracker.finish()
    nll = f", NLL {test['test/nll']:.2f} (K={test['test/iw_samples']})" if "test/nll" in test else ""
    log.info("test ELBO %.2f (recon %.2f, KL %.2f)%s, %d active units, best epoch %d; outputs in %s",
             test["test/elbo"], test["test/recon"], test["test/kl"], nll, test["test/active_units"],
             state.best_epoch, run_dir)
    return summary
