"""The training loop: Adam on the negative ELBO, optional KL warm-up, validation, checkpoints, early stopping.

``fit`` is deliberately ignorant of Hydra and of which posterior the model holds. After every epoch it
appends a row to ``metrics.jsonl``, logs to the tracker, and atomically rewrites ``checkpoints/last.pt``
(and ``best.pt`` when the validation ELBO improved); ``TrainState`` is everything needed to carry on.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from .checkpoint import save_atomic
from .data import ImageData, n_train_batches, train_batches
from .errors import RhovaeError
from .evaluation import EvalSettings, evaluate_elbo
from .tracking import NullLogger, append_jsonl
from .vae import VAE

log = logging.getLogger(__name__)


class NonFiniteLossError(RhovaeError):
    """The loss became NaN or infinite; the message names the epoch, the step and the term."""


@dataclass
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    max_batches: int | None = None
    kl_warmup_epochs: float = 0.0
    patience: int | None = None
    progress: bool = True
    image_every: int = 0


@dataclass
class TrainState:
    """Progress that a checkpoint must restore: completed epochs, the best epoch so far, and the metrics."""

    epoch: int = 0
    step: int = 0
    best_epoch: int = 0
    best_val_elbo: float = -math.inf
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def epochs_since_best(self) -> int:
        return self.epoch - self.best_epoch


def kl_weight(step: int, steps_per_epoch: int, warmup_epochs: float) -> float:
    """beta rising linearly from 0 to 1 over ``warmup_epochs`` epochs (1 throughout when that is 0)."""
    if warmup_epochs <= 0:
        return 1.0
    return min(1.0, step / (warmup_epochs * steps_per_epoch))


def _check_finite(loss: torch.Tensor, recon: torch.Tensor, kl: torch.Tensor, epoch: int, step: int) -> None:
    if torch.isfinite(loss):
        return
    bad = [name for name, t in (("reconstruction", recon), ("KL", kl)) if not torch.isfinite(t).all()]
    raise NonFiniteLossError(
        f"non-finite loss at epoch {epoch}, step {step}: the {' and '.join(bad) or 'total'} term "
        f"went {'NaN' if torch.isnan(loss) else 'infinite'}; the last good checkpoint is kept"
    )


def train_one_epoch(model: VAE, optimizer: torch.optim.Optimizer, data: ImageData, settings: TrainSettings,
                    state: TrainState, data_rng: torch.Generator) -> dict[str, float]:
    """One pass over the training images; returns mean per-image train metrics (ELBO with beta = 1)."""
    model.train()
    epoch = state.epoch + 1
    n_batches = n_train_batches(len(data.train), settings.batch_size, settings.max_batches)
    batches = train_batches(data.train, settings.batch_size, order=data_rng,
                            binarize=data_rng if data.dynamic else None, max_batches=settings.max_batches)
    sums = torch.zeros(3, device=data.train.device)  # recon, kl, loss (per-image sums)
    n_images = 0
    beta = 1.0
    bar = tqdm(batches, total=n_batches, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True,
               disable=None if settings.progress else True)
    for x in bar:
        beta = kl_weight(state.step, n_batches, settings.kl_warmup_epochs)
        loss, terms = model.loss(x, beta)
        _check_finite(loss, terms.recon, terms.kl, epoch, state.step + 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.step += 1
        n_images += len(x)
        sums += torch.stack([terms.recon.sum(), terms.kl.sum(), loss.detach() * len(x)])
        if state.step % 25 == 0:
            bar.set_postfix(loss=f"{sums[2].item() / n_images:.2f}", beta=f"{beta:.2f}")
    recon, kl, loss_sum = (sums / max(n_images, 1)).tolist()
    return {"train/elbo": recon - kl, "train/recon": recon, "train/kl": kl, "train/loss": loss_sum, "beta": beta}


def checkpoint_payload(model: VAE, optimizer: torch.optim.Optimizer, state: TrainState,
                       data_rng: torch.Generator, config: dict[str, Any]) -> dict[str, Any]:
    rng = {"torch": torch.get_rng_state(), "data": data_rng.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": asdict(state),
            "rng": rng, "config": config}


def fit(model: VAE, optimizer: torch.optim.Optimizer, data: ImageData, settings: TrainSettings, run_dir: Path,
        *, data_rng: torch.Generator, config: dict[str, Any], evaluation: EvalSettings | None = None, tracker=None,
        state: TrainState | None = None, on_images: Callable[[VAE, int], None] | None = None) -> TrainState:
    """Train until ``settings.epochs`` (or early stopping); return the final ``TrainState``."""
    tracker = tracker or NullLogger()
    evaluation = evaluation or EvalSettings()
    state = state or TrainState()
    ckpt_dir = run_dir / "checkpoints"
    while state.epoch < settings.epochs:
        start = time.perf_counter()
        train_metrics = train_one_epoch(model, optimizer, data, settings, state, data_rng)
        epoch_s = time.perf_counter() - start
        val = evaluate_elbo(model, data.val, batch_size=evaluation.batch_size, eval_seed=evaluation.seed)
        state.epoch += 1
        row = {"epoch": state.epoch, **train_metrics, **{f"val/{k}": v for k, v in val.items()},
               "lr": optimizer.param_groups[0]["lr"], "epoch_s": epoch_s,
               "eval_s": time.perf_counter() - start - epoch_s}
        improved = val["elbo"] > state.best_val_elbo
        if improved:
            state.best_epoch, state.best_val_elbo = state.epoch, val["elbo"]
        state.history.append(row)
        append_jsonl(run_dir / "metrics.jsonl", row)
        tracker.log(row, step=state.epoch)
        payload = checkpoint_payload(model, optimizer, state, data_rng, config)
        if improved:
            save_atomic(payload, ckpt_dir / "best.pt")
        save_atomic(payload, ckpt_dir / "last.pt")
        log.info("epoch %d/%d  train elbo %.2f  val elbo %.2f (recon %.2f, kl %.2f)  %.1fs%s", state.epoch,
                 settings.epochs, row["train/elbo"], val["elbo"], val["recon"], val["kl"], epoch_s,
                 "  *best*" if improved else "")
        if on_images and settings.image_every and state.epoch % settings.image_every == 0:
            on_images(model, state.epoch)
        if settings.patience and state.epochs_since_best >= settings.patience:
            log.info("early stopping: no val ELBO improvement for %d epochs (best %.2f at epoch %d)",
                     settings.patience, state.best_val_elbo, state.best_epoch)
            break
    return state
