"""One training run from a composed config: data, model, training, test scores, pictures and summary.json.

This is the glue between the configuration (an OmegaConf ``DictConfig``, usually composed by Hydra in
``train.py``) and the Hydra-free pieces of the package. Everything lands in ``run_dir``:

    metrics.jsonl  summary.json  checkpoints/{last,best}.pt  samples.png  reconstructions.png  wandb/
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from .checkpoint import load_checkpoint
from .config import validate_config
from .data import ImageData, load_image_data, to_unit_float
from .evaluation import evaluate_elbo, seeded_rng
from .networks import build_networks
from .plots import reconstruction_grid, sample_grid, save_grid
from .posteriors import build_posterior
from .tracking import NullLogger, WandbLogger, write_json_atomic
from .trainer import NonFiniteLossError, TrainSettings, fit
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_tracker(config: Mapping[str, Any], run_dir: Path):
    logger_cfg = config["logger"]
    if logger_cfg["name"] == "none":
        return NullLogger()
    dataset, posterior, decoder = config["dataset"]["name"], config["posterior"]["name"], config["decoder"]["name"]
    return WandbLogger(run_dir, config, project=logger_cfg["project"], entity=logger_cfg.get("entity"),
                       mode=logger_cfg["mode"], group=f"{dataset}-{posterior}", name=run_dir.name,
                       tags=[dataset, posterior, decoder, *logger_cfg.get("tags", [])])


def write_grids(model: VAE, data: ImageData, run_dir: Path | None, eval_seed: int) -> dict[str, torch.Tensor]:
    """Prior samples and test reconstructions as grids (saved as PNG when ``run_dir`` is given)."""
    model.eval()
    with seeded_rng(eval_seed, data.test.device):
        inputs = to_unit_float(data.test[: N_GRID_IMAGES // 2])
        grids = {
            "samples": sample_grid(model.sample_images(N_GRID_IMAGES), data.image_shape),
            "reconstructions": reconstruction_grid(inputs, model.reconstruct(inputs), data.image_shape),
        }
    model.train()
    if run_dir is not None:
        for name, grid in grids.items():
            save_grid(grid, run_dir / f"{name}.png")
    return grids


def run_experiment(cfg: DictConfig, run_dir: str | Path) -> dict[str, Any]:
    """Train, test and summarise one run described by ``cfg``; return the summary written to summary.json."""
    run_dir = Path(run_dir)
    device = validate_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg, resolve=True)
    seed_everything(cfg.seed)
    ds = cfg.dataset
    data = load_image_data(ds.name, ds.root, binarize=ds.binarize, val_size=ds.val_size,
                           binarize_seed=ds.binarize_seed, download=ds.download, device=device)
    model = build_vae(config, data.image_shape).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.trainer.lr)
    settings = TrainSettings(
        epochs=cfg.trainer.epochs, batch_size=cfg.trainer.batch_size, lr=cfg.trainer.lr,
        max_batches=cfg.trainer.max_batches, kl_warmup_epochs=cfg.trainer.kl_warmup_epochs,
        patience=cfg.trainer.patience, eval_batch_size=cfg.eval.batch_size, eval_seed=cfg.eval.seed,
        progress=cfg.trainer.progress, image_every=cfg.logger.image_every,
    )
    n_params = count_parameters(model)
    log.info("%s | %s posterior | %s networks | d=%d | %d parameters | %s | train %d, val %d, test %d images",
             ds.name, cfg.posterior.name, cfg.decoder.name, cfg.latent_dim, n_params, device,
             len(data.train), len(data.val), len(data.test))
    summary: dict[str, Any] = {
        "status": "running", "dataset": ds.name, "posterior": cfg.posterior.name, "decoder": cfg.decoder.name,
        "seed": cfg.seed, "latent_dim": cfg.latent_dim, "binarize": ds.binarize, "n_params": n_params,
        "device": str(device),
    }
    tracker = build_tracker(config, run_dir)
    data_rng = torch.Generator(device=device).manual_seed(cfg.seed)

    def log_images(m: VAE, epoch: int) -> None:
        tracker.log_images(write_grids(m, data, None, settings.eval_seed), step=epoch)

    start = time.perf_counter()
    try:
        state = fit(model, optimizer, data, settings, run_dir, data_rng=data_rng, config=config,
                    tracker=tracker, on_images=log_images)
    except NonFiniteLossError as err:
        summary.update(status="failed", error=str(err), train_time_s=time.perf_counter() - start)
        write_json_atomic(run_dir / "summary.json", summary)
        tracker.summarize(summary)
        tracker.finish(exit_code=1)
        raise
    train_time = time.perf_counter() - start

    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.pt", map_location=device)["model"])
    test = evaluate_elbo(model, data.test, batch_size=settings.eval_batch_size, eval_seed=settings.eval_seed)
    grids = write_grids(model, data, run_dir, settings.eval_seed)
    epoch_times = [row["epoch_s"] for row in state.history]
    summary.update({
        "status": "completed", "epochs": state.epoch, "best_epoch": state.best_epoch,
        "train_time_s": train_time, "epoch_s": sum(epoch_times) / len(epoch_times),
        "val/elbo": state.best_val_elbo,
        **{f"test/{k}": v for k, v in test.items()},
    })
    write_json_atomic(run_dir / "summary.json", summary)
    tracker.log_images(grids, step=state.epoch)
    tracker.summarize(summary)
    tracker.finish()
    log.info("test elbo %.2f (recon %.2f, kl %.2f) at best epoch %d; outputs in %s",
             test["elbo"], test["recon"], test["kl"], state.best_epoch, run_dir)
    return summary
