"""One training run from a composed config: data, model, training, test scores, pictures and summary.json.

This is the glue between the configuration (an OmegaConf ``DictConfig``, usually composed by Hydra in
``train.py``) and the Hydra-free pieces of the package. Everything lands in ``run_dir``:

    metrics.jsonl  summary.json  checkpoints/{last,best}.pt  samples.png  reconstructions.png
    learning_curves.png  latent_means.png (d = 2 only)  wandb/
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .checkpoint import load_checkpoint
from .config import flatten, validate_config
from .data import ImageData, load_image_data, to_unit_float
from .errors import ConfigError
from .evaluation import EvalSettings, evaluate_test_set, seeded_rng
from .networks import build_networks
from .plots import latent_scatter, learning_curves, reconstruction_grid, sample_grid, save_figure, save_grid
from .posteriors import build_posterior, posterior_label
from .interrupt import stop_on_signals
from .tracking import NullLogger, WandbLogger, append_jsonl, write_json_atomic
from .trainer import (EpochProgress, NonFiniteLossError, TrainingInterrupted, TrainSettings, TrainState, fit,
                      make_optimizer, restore_training)
from .vae import VAE, count_parameters

log = logging.getLogger(__name__)

N_GRID_IMAGES = 64


def _options(section: Mapping[str, Any]) -> dict[str, Any]:
    """A config group's entries other than its ``name``, as constructor keyword arguments."""
    return {k: v for k, v in section.items() if k != "name"}


def build_vae(config: Mapping[str, Any], image_shape) -> VAE:
    """The VAE a (resolved, plain-dict) run config describes; used for training and for re-loading runs."""
    latent_dim = config["latent_dim"]
    encoder, decoder = build_networks(config["decoder"]["name"], image_shape, latent_dim,
                                      **_options(config["decoder"]))
    posterior = build_posterior(config["posterior"]["name"], encoder.out_features, latent_dim,
                                **_options(config["posterior"]))
    return VAE(encoder, posterior, decoder, latent_dim)


def load_data(config: Mapping[str, Any], device: torch.device) -> ImageData:
    ds = config["dataset"]
    return load_image_data(ds["name"], ds["root"], binarize=ds["binarize"], val_size=ds["val_size"],
                           binarize_seed=ds["binarize_seed"], download=ds["download"], device=device)


def eval_settings(config: Mapping[str, Any]) -> EvalSettings:
    return EvalSettings(**config["eval"])


# Keys that may change when a run is resumed; any other difference from the checkpoint's config is refused.
RESUMABLE_CHANGES = ("trainer.resume", "trainer.epochs", "trainer.patience", "trainer.progress", "trainer.device",
                     "trainer.threads",
                     "dataset.root", "dataset.download", "logger.", "eval.iw_", "eval.mean_samples",
                     "eval.active_threshold")


def check_resumable(saved: Mapping[str, Any], current: Mapping[str, Any], run_dir: Path) -> None:
    """Refuse to continue a run under a config that would train a different model or on different data."""
    old, new = flatten(saved), flatten(current)
    changed = sorted(k for k in old.keys() | new.keys()
                     if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES))
    if changed:
        diffs = "; ".join(f"{k}={new.get(k)!r} (checkpoint: {old.get(k)!r})" for k in changed)
        raise ConfigError(f"cannot resume {run_dir}: the config differs from its checkpoint in {diffs}; "
                          f"accepted changes: {', '.join(RESUMABLE_CHANGES)}")


def resume_or_start(config: Mapping[str, Any], run_dir: Path, model: VAE, optimizer: torch.optim.Optimizer,
                    data_rng: torch.Generator, device: torch.device) -> tuple[TrainState, EpochProgress | None]:
    """With ``trainer.resume`` and a ``last.pt`` in the run folder, restore it; otherwise start afresh."""
    metrics = run_dir / "metrics.jsonl"
    last = run_dir / "checkpoints" / "last.pt"
    if not (config["trainer"]["resume"] and last.exists()):
        metrics.unlink(missing_ok=True)  # a fresh run in a reused folder starts a fresh log
        return TrainState(), None
    checkpoint = load_checkpoint(last, map_location=device)
    check_resumable(checkpoint["config"], config, run_dir)
    state, progress = restore_training(checkpoint, model, optimizer, data_rng)
    metrics.unlink(missing_ok=True)  # the checkpoint's history is the truth: drop rows of an unsaved epoch
    for row in state.history:
        append_jsonl(metrics, row)
    log.info("resuming %s at epoch %d, step %d%s", run_dir, state.epoch + 1, state.step,
             f" (batch {progress.next_batch} of that epoch)" if progress else "")
    return state, progress


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_tracker(config: Mapping[str, Any], run_dir: Path, sweep: str | None = None):
    """W&B (or nothing): seeds of one dataset and posterior share a group, runs of one sweep share its name as a tag."""
    logger_cfg = config["logger"]
    if logger_cfg["name"] == "none":
        return NullLogger()
    dataset, posterior, decoder = config["dataset"]["name"], config["posterior"]["name"], config["decoder"]["name"]
    tags = [dataset, posterior, decoder, *logger_cfg.get("tags", []), *([sweep] if sweep else [])]
    return WandbLogger(run_dir, config, project=logger_cfg["project"], entity=logger_cfg.get("entity"),
                       mode=logger_cfg["mode"], group=f"{dataset}-{posterior_label(config['posterior'])}",
                       name=run_dir.name, tags=tags)


def image_grids(model: VAE, data: ImageData, eval_seed: int) -> dict[str, torch.Tensor]:
    """Prior samples and test reconstructions (inputs beside outputs), drawn from a seeded stream."""
    was_training = model.training
    model.eval()
    with seeded_rng(eval_seed, data.test.device):
        inputs = to_unit_float(data.test[: N_GRID_IMAGES // 2])
        grids = {
            "samples": sample_grid(model.sample_images(N_GRID_IMAGES), data.image_shape),
            "reconstructions": reconstruction_grid(inputs, model.reconstruct(inputs), data.image_shape),
        }
    model.train(was_training)
    return grids


def write_pictures(model: VAE, data: ImageData, run_dir: Path, state: TrainState, latent_means: torch.Tensor,
                   eval_seed: int) -> list[Path]:
    """Save every end-of-run picture as PNG in ``run_dir``; return their paths."""
    paths = []
    for name, grid in image_grids(model, data, eval_seed).items():
        save_grid(grid, run_dir / f"{name}.png")
        paths.append(run_dir / f"{name}.png")
    save_figure(learning_curves(state.history), run_dir / "learning_curves.png")
    paths.append(run_dir / "learning_curves.png")
    if latent_means.shape[-1] == 2:
        save_figure(latent_scatter(latent_means, data.test_labels), run_dir / "latent_means.png")
        paths.append(run_dir / "latent_means.png")
    return paths


def run_experiment(cfg: DictConfig, run_dir: str | Path, sweep: str | None = None) -> dict[str, Any]:
    """Train, test and summarise one run described by ``cfg``; return the summary written to summary.json.

    ``sweep`` names the multirun this run belongs to (a W&B tag and a summary field), if any.
    """
    run_dir = Path(run_dir)
    device = validate_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    if cfg.trainer.threads is not None:
        torch.set_num_threads(cfg.trainer.threads)
    seed_everything(cfg.seed)
    data = load_data(config, device)
    model = build_vae(config, data.image_shape).to(device)
    optimizer = make_optimizer(model, cfg.trainer.lr)
    settings = TrainSettings(
        epochs=cfg.trainer.epochs, batch_size=cfg.trainer.batch_size, lr=cfg.trainer.lr,
        max_batches=cfg.trainer.max_batches, kl_warmup_epochs=cfg.trainer.kl_warmup_epochs,
        patience=cfg.trainer.patience, progress=cfg.trainer.progress, image_every=cfg.logger.image_every,
    )
    evaluation = eval_settings(config)
    n_params = count_parameters(model)
    log.info("%s | %s posterior | %s networks | d=%d | %d parameters | %s | train %d, val %d, test %d images",
             cfg.dataset.name, cfg.posterior.name, cfg.decoder.name, cfg.latent_dim, n_params, device,
             len(data.train), len(data.val), len(data.test))
    summary: dict[str, Any] = {
        "status": "running", "dataset": cfg.dataset.name, "posterior": cfg.posterior.name,
        "method": posterior_label(config["posterior"]), "sweep": sweep, "decoder": cfg.decoder.name,
        "seed": cfg.seed, "latent_dim": cfg.latent_dim, "binarize": cfg.dataset.binarize, "n_params": n_params,
        "device": str(device),
    }
    tracker = build_tracker(config, run_dir, sweep)
    data_rng = torch.Generator(device=device).manual_seed(cfg.seed)

    def log_images(m: VAE, epoch: int) -> None:
        tracker.log_images(image_grids(m, data, evaluation.seed), step=epoch)

    state, progress = resume_or_start(config, run_dir, model, optimizer, data_rng, device)
    try:
        with stop_on_signals() as stop:
            state = fit(model, optimizer, data, settings, run_dir, data_rng=data_rng, config=config,
                        evaluation=evaluation, tracker=tracker, state=state, progress=progress, stop=stop,
                        on_images=log_images)
    except (NonFiniteLossError, TrainingInterrupted) as err:
        status = "failed" if isinstance(err, NonFiniteLossError) else "interrupted"
        summary.update(status=status, error=str(err))
        write_json_atomic(run_dir / "summary.json", summary)
        tracker.summarize(summary)
        tracker.finish(exit_code=1)
        raise

    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.pt", map_location=device)["model"])
    test, latent_means = evaluate_test_set(model, data, evaluation)
    pictures = write_pictures(model, data, run_dir, state, latent_means, evaluation.seed)
    epoch_times = [row["epoch_s"] for row in state.history]
    summary.update({
        "status": "completed", "epochs": state.epoch, "best_epoch": state.best_epoch,
        "train_time_s": state.train_time_s, "epoch_s": sum(epoch_times) / len(epoch_times),
        "val/elbo": state.best_val_elbo, **test,
    })
    write_json_atomic(run_dir / "summary.json", summary)
    tracker.log_images({p.stem: p for p in pictures}, step=state.epoch)
    tracker.summarize(summary)
    tracker.finish()
    nll = f", NLL {test['test/nll']:.2f} (K={test['test/iw_samples']})" if "test/nll" in test else ""
    log.info("test ELBO %.2f (recon %.2f, KL %.2f)%s, %d active units, best epoch %d; outputs in %s",
             test["test/elbo"], test["test/recon"], test["test/kl"], nll, test["test/active_units"],
             state.best_epoch, run_dir)
    return summary
