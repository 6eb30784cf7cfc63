"""What a run is made of, built from its typed config: the model, the data, a finished run re-loaded, and the
inference-gap analysis written beside a run. ``rhovae.experiment`` and the scripts (``evaluate.py``, ``gaps.py``,
``bench.py``) build through these, so a model is always rebuilt exactly as its run built it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .allocator import retain_freed_memory
from .checkpoint import load_checkpoint
from .config import RunConfig, TrainerConfig, component_options, load_config, rescoring_config, validate_config
from .data import ImageData, load_image_data
from .errors import RhovaeError
from .gaps import GapSettings, inference_gaps
from .milestones import milestone_epoch
from .networks import build_networks
from .posteriors import build_posterior
from .tracking import write_json_atomic
from .vae import VAE

log = logging.getLogger(__name__)


def build_vae(config: RunConfig, image_shape) -> VAE:
    """The VAE ``config`` describes, freshly initialised, for images of ``image_shape``."""
    encoder, decoder = build_networks(config.networks.name, image_shape, config.latent_dim,
                                      **component_options(config.networks))
    posterior = build_posterior(config.posterior.name, encoder.out_features, config.latent_dim,
                                **component_options(config.posterior))
    return VAE(encoder, posterior, decoder, config.latent_dim)


def load_data(config: RunConfig, device: torch.device) -> ImageData:
    """The train, validation and test images of ``config.dataset``, on ``device``."""
    ds = config.dataset
    return load_image_data(ds.name, ds.root, binarize=ds.binarize, val_size=ds.val_size,
                           binarize_seed=ds.binarize_seed, download=ds.download, device=device)


def set_process_mode(trainer: TrainerConfig) -> None:
    """What a run sets for the whole process before it trains or is evaluated: torch's CPU threads as
    ``trainer.threads`` says (None keeps torch's default), subnormal flushing as ``trainer.flush_denormal`` says, and
    freed memory kept for reuse (``rhovae.allocator``)."""
    if trainer.threads is not None:
        torch.set_num_threads(trainer.threads)
    retain_freed_memory()
    torch.set_flush_denormal(trainer.flush_denormal)


def saved_checkpoints(run_dir: Path) -> list[str]:
    """The checkpoints saved in ``run_dir``: best and last first, then the milestones' epoch_N by epoch."""
    def order(name: str) -> tuple[int, str]:
        epoch = milestone_epoch(name)
        return (-1, name) if epoch is None else (epoch, "")
    return sorted((p.stem for p in (run_dir / "checkpoints").glob("*.pt")), key=order)


def trained_config(run_dir: Path, overrides: Sequence[str] = (), checkpoint: str = "best",
                   may_override: Sequence[str] = ("eval",)) -> tuple[RunConfig, dict[str, Any]]:
    """A finished run's config (its checkpoint's, with ``overrides`` on top: ``rhovae.config.rescoring_config`` says
    which keys may change) and the ``checkpoint`` itself (best, last or a milestone's epoch_N); a checkpoint that is
    not saved or a refused key is refused here, before any data is read."""
    saved = saved_checkpoints(run_dir)
    if saved and checkpoint not in saved:
        raise RhovaeError(f"--checkpoint {checkpoint!r} is not saved in {run_dir}; saved: {', '.join(saved)}")
    ckpt = load_checkpoint(run_dir / "checkpoints" / f"{checkpoint}.pt")
    return load_config(rescoring_config(ckpt["config"], overrides, may_override, run_dir)), ckpt


def trained_model(config: RunConfig, ckpt: dict[str, Any]) -> tuple[ImageData, VAE]:
    """The data and the trained model of ``trained_config``'s result, on the device the config names."""
    device = validate_config(config)
    set_process_mode(config.trainer)  # evaluate with the threads and floating-point mode it trained with
    data = load_data(config, device)
    model = build_vae(config, data.image_shape).to(device)
    model.load_state_dict(ckpt["model"])
    return data, model


def load_trained_run(run_dir: Path, overrides: Sequence[str] = (), checkpoint: str = "best",
                     may_override: Sequence[str] = ("eval",)):
    """A finished run's config, data, trained model and checkpoint (``trained_config`` and ``trained_model``).
    Returns ``(config, data, model, checkpoint)``."""
    config, ckpt = trained_config(run_dir, overrides, checkpoint, may_override)
    data, model = trained_model(config, ckpt)
    return config, data, model, ckpt


def gaps_paths(run_dir: Path, checkpoint: str = "best") -> tuple[Path, Path]:
    """Where the gap analysis of ``checkpoint`` goes: gaps.json and gaps.npz for the run's own model (best),
    gaps_<checkpoint>.json and .npz for another (a milestone's epoch_N, last)."""
    stem = "gaps" if checkpoint == "best" else f"gaps_{checkpoint}"
    return run_dir / f"{stem}.json", run_dir / f"{stem}.npz"


def write_gaps(model: VAE, data: ImageData, settings: GapSettings, run_dir: Path, *, progress: bool = False,
               stop: Callable[[], bool] = lambda: False, overrides: Sequence[str] = (),
               checkpoint: str = "best", epoch: int | None = None) -> dict[str, Any]:
    """The inference-gap analysis of the first ``settings.n_images`` test images: ``gaps.json`` (with the
    ``overrides`` a script applied to the run's config) and ``gaps.npz``, or ``gaps_paths``' names for another
    ``checkpoint`` than the run's own (its ``epoch`` recorded beside the numbers)."""
    images = data.test[: settings.n_images]
    log.info("inference gaps on %d test images: %d Adam steps each, log p(x) with K=%d", len(images),
             settings.steps, settings.iw_samples)
    summary, arrays = inference_gaps(model, images, settings, progress=progress, stop=stop)
    summary["overrides"] = list(overrides)
    summary["checkpoint"] = checkpoint
    if epoch is not None:
        summary["epoch"] = epoch
    json_path, npz_path = gaps_paths(run_dir, checkpoint)
    write_json_atomic(json_path, summary)
    np.savez(npz_path, **{k: v.numpy() for k, v in arrays.items()})
    log.info("approximation gap %.2f, amortization gap %.2f nats (log p(x) %.2f, ELBO %.2f -> %.2f locally)",
             summary["approximation_gap"], summary["amortization_gap"], summary["log_px"],
             summary["elbo_amortized"], summary["elbo_local"])
    return summary
