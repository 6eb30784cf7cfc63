"""The training loop: Adam on the negative ELBO, optional KL warm-up, validation, checkpoints, early stopping.

``fit`` is deliberately ignorant of Hydra and of which posterior the model holds. After every epoch it
appends a row to ``metrics.jsonl``, logs to the tracker, and atomically rewrites ``checkpoints/last.pt``
(and ``best.pt`` when the validation value of the trained bound improved: the ELBO, or with
``objective.iw_samples`` = k > 1 the k-sample IWAE bound, so an IWAE run keeps the model its objective prefers).
A checkpoint holds everything needed to carry on bit for bit: model, optimizer, ``TrainState``, every random
state, and, when a stop was requested in the middle of an epoch (SIGTERM), that epoch's batch order, position
and running sums (``EpochProgress``).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import save_atomic
from .compiled import checked_compile
from .data import ImageData, n_train_batches, train_batches
from .errors import RhovaeError
from .config import ObjectiveConfig, RunConfig, TrainerConfig, as_dict
from .evaluation import evaluate_elbo
from .pictures import image_grids
from .tracking import NullLogger, append_jsonl
from .vae import PRECISIONS, VAE

log = logging.getLogger(__name__)


class NonFiniteLossError(RhovaeError):
    """The loss became NaN or infinite; the message names the epoch, the step and the term."""


class TrainingInterrupted(RhovaeError):
    """A stop was requested (SIGTERM, Ctrl-C); a checkpoint of the exact position was written first.

    ``exit_code`` is what the process should exit with: 128 + the signal's number (143 for SIGTERM, 130 for SIGINT).
    """

    def __init__(self, message: str, exit_code: int = 143):
        super().__init__(message)
        self.exit_code = exit_code


class TrainingPaused(TrainingInterrupted):
    """``trainer.stop_at_epoch`` was reached: the run is saved and resumable, and nothing went wrong (exit status 0;
    a sweep goes on with its other jobs)."""

    def __init__(self, message: str):
        super().__init__(message, exit_code=0)


def interrupted(stop: Callable[[], bool], message: str) -> TrainingInterrupted:
    """The exception for a stop requested through ``stop`` (a ``StopRequest`` knows which signal it was)."""
    return TrainingInterrupted(message, getattr(stop, "exit_code", 143))


@dataclass
class TrainState:
    """Progress that a checkpoint must restore: completed epochs, the best epoch so far, and the metrics.

    ``run_id`` names the run for the tracker (one W&B run however often the run is resumed). ``best_val_bound`` is
    the best validation value of the trained bound (``selection_bound``), which picks ``best.pt``.
    """

    run_id: str = ""
    epoch: int = 0
    step: int = 0
    best_epoch: int = 0
    best_val_bound: float = -math.inf
    train_time_s: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> "TrainState":
        """The state a checkpoint saved; checkpoints from before IWAE selection called the bound ``best_val_elbo``
        (it was the ELBO, the bound of every run then)."""
        saved = dict(saved)
        if "best_val_elbo" in saved:
            saved["best_val_bound"] = saved.pop("best_val_elbo")
        return cls(**saved)

    @property
    def epochs_since_best(self) -> int:
        return self.epoch - self.best_epoch


def validation_metrics(model: VAE, data: ImageData, config: RunConfig) -> dict[str, float]:
    """The validation set's ELBO terms, with the k-sample bound of an IWAE run: what each epoch logs and picks its
    checkpoint by (``selection_bound``), and what a tuning trial reports."""
    return evaluate_elbo(model, data.val, batch_size=config.eval.batch_size, eval_seed=config.eval.seed,
                         iw_samples=config.objective.iw_samples)


def selection_bound(val: Mapping[str, float]) -> float:
    """The validation number that picks the best checkpoint: the bound the run trains (``iw_bound`` of an IWAE run,
    else the ELBO)."""
    return val.get("iw_bound", val["elbo"])


@dataclass
class EpochProgress:
    """An epoch stopped part-way: its batch order, the next batch to run, and the running per-image sums."""

    order: torch.Tensor
    next_batch: int
    sums: torch.Tensor
    n_images: int
    elapsed_s: float
    beta: float = 1.0


def make_optimizer(model: torch.nn.Module, lr: float, eps: float = 1e-8, betas: Sequence[float] = (0.9, 0.999),
                   second_moment_init: float = 0.0) -> torch.optim.Adam:
    """Adam with its fused kernel (CPU and CUDA): one kernel for all parameters instead of several small ops each,
    about 25% off a default MLP training step on 2 CPU cores (``scripts/bench.py`` measures what this builds).

    ``second_moment_init`` > 0 starts the second-moment estimate v at that value instead of 0 (as the IWAE paper's
    released code does with 1): the state Adam would create at its first step, written beforehand, so the update
    stays torch's, lr / (1 - beta1^t) * m / (sqrt(v / (1 - beta2^t)) + eps), and the state saves and resumes as
    usual. (The released code adds eps before dividing by sqrt(1 - beta2^t), which differs only while sqrt(v) is
    near eps.)"""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, eps=eps, betas=tuple(betas), fused=True)
    if second_moment_init > 0:
        for p in model.parameters():
            optimizer.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                  "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                  "exp_avg_sq": torch.full_like(p, second_moment_init,
                                                                memory_format=torch.preserve_format)}
    return optimizer


def configured_optimizer(model: torch.nn.Module, trainer: TrainerConfig) -> torch.optim.Adam:
    """``make_optimizer`` with the ``trainer`` section's Adam settings."""
    return make_optimizer(model, trainer.lr, trainer.adam_eps, trainer.adam_betas, trainer.adam_second_moment_init)


def learning_rate(trainer: TrainerConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (from 1): ``trainer.lr`` times ``lr_stage_decay`` to the power of the stage
    that epoch falls in (stage i lasts ``lr_stage_epochs[i]`` epochs; past the last stage its rate holds)."""
    stage, end = 0, 0
    for stage, length in enumerate(trainer.lr_stage_epochs):
        end += length
        if epoch <= end:
            break
    return trainer.lr * trainer.lr_stage_decay ** stage


def kl_weight(step: int, steps_per_epoch: int, warmup_epochs: float, beta: float = 1.0) -> float:
    """The KL weight: rising linearly from 0 to ``beta`` over ``warmup_epochs`` epochs (``beta`` throughout when
    that is 0)."""
    if warmup_epochs <= 0:
        return beta
    return beta * min(1.0, step / (warmup_epochs * steps_per_epoch))


def _check_finite(loss: torch.Tensor, recon: torch.Tensor, kl: torch.Tensor, epoch: int, step: int) -> None:
    if torch.isfinite(loss):
        return
    bad = [name for name, t in (("reconstruction", recon), ("KL", kl)) if not torch.isfinite(t).all()]
    raise NonFiniteLossError(
        f"non-finite loss at epoch {epoch}, step {step}: the {' and '.join(bad) or 'total'} term "
        f"went {'NaN' if torch.isnan(loss) else 'infinite'}; the last good checkpoint is kept"
    )


def training_loss(model: VAE, compile: bool) -> Callable[..., tuple[torch.Tensor, Any]]:
    """``model.loss``, or with ``compile`` its ``torch.compile`` version, checked against eager on each epoch's first
    batch (``rhovae.compiled``). Inductor's own random numbers are switched off (``fallback_random``), so a compiled
    run draws exactly what an eager one draws and resumes bit for bit. Wrapping again each epoch costs one eager
    batch: compiled code is cached on the method's code, guarded by the model."""
    if not compile:
        return model.loss
    return checked_compile(model.loss)


def train_one_epoch(model: VAE, optimizer: torch.optim.Optimizer, data: ImageData, trainer: TrainerConfig,
                    objective: ObjectiveConfig, state: TrainState, data_rng: torch.Generator,
                    progress: EpochProgress | None = None,
                    stop: Callable[[], bool] = lambda: False) -> dict[str, float] | EpochProgress:
    """One pass over the training images, or the rest of one when ``progress`` is given, with the ``trainer``
    section's batches, learning rate and warm-up, minimising the ``objective`` section's loss.

    Returns mean per-image train metrics (the ELBO with beta = 1), or, if ``stop()`` turns true after a
    step, the ``EpochProgress`` needed to finish the epoch later exactly as it would have run.
    """
    model.train()
    epoch = state.epoch + 1
    for group in optimizer.param_groups:  # computed from the epoch alone, so a resumed run follows the same schedule
        group["lr"] = learning_rate(trainer, epoch)
    started = time.perf_counter()
    n_batches = n_train_batches(len(data.train), trainer.batch_size, trainer.max_batches)
    if progress is None:
        order = torch.randperm(len(data.train), generator=data_rng, device=data.train.device)
        progress = EpochProgress(order=order, next_batch=0, sums=torch.zeros(3, device=data.train.device),
                                 n_images=0, elapsed_s=0.0)
    batches = train_batches(data.train, trainer.batch_size, order=progress.order, start=progress.next_batch,
                            binarize=data_rng if data.dynamic else None, max_batches=trainer.max_batches)
    sums, n_images, beta = progress.sums, progress.n_images, progress.beta  # sums: recon, kl, loss per image
    bar = tqdm(batches, total=n_batches, initial=progress.next_batch, desc=f"epoch {epoch}", leave=False,
               dynamic_ncols=True, disable=None if trainer.progress else True)
    loss_of = training_loss(model, trainer.compile)
    network_dtype = PRECISIONS[trainer.precision]
    for i, x in enumerate(bar, start=progress.next_batch):
        beta = kl_weight(state.step, n_batches, trainer.kl_warmup_epochs, objective.beta)
        loss, terms = loss_of(x, beta, objective.free_bits, objective.iw_samples, network_dtype)
        _check_finite(loss, terms.recon, terms.kl, epoch, state.step + 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.step += 1
        n_images += len(x)
        sums = sums + torch.stack([terms.recon.sum(), terms.kl.sum(), loss.detach() * len(x)])
        if state.step % 25 == 0:
            bar.set_postfix(loss=f"{sums[2].item() / n_images:.2f}", beta=f"{beta:.2f}")
        if stop() and i + 1 < n_batches:
            bar.close()
            return EpochProgress(order=progress.order, next_batch=i + 1, sums=sums, n_images=n_images,
                                 elapsed_s=progress.elapsed_s + time.perf_counter() - started, beta=beta)
    recon, kl, loss_sum = (sums / max(n_images, 1)).tolist()
    return {"train/elbo": recon - kl, "train/recon": recon, "train/kl": kl, "train/loss": loss_sum, "beta": beta,
            "epoch_s": progress.elapsed_s + time.perf_counter() - started}


def capture_rng(data_rng: torch.Generator) -> dict[str, Any]:
    """Every random state a run draws from, as tensors and plain containers (loadable with weights_only)."""
    np_state = np.random.get_state()
    rng = {"torch": torch.get_rng_state(), "data": data_rng.get_state(), "python": random.getstate(),
           "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]]}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any], data_rng: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    data_rng.set_state(rng["data"])
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in rng["python"]))
    np.random.set_state((rng["numpy"][0], rng["numpy"][1].numpy(), *rng["numpy"][2:]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


@dataclass
class TrainingRun:
    """One run's training: what ``fit`` trains, and what every checkpoint holds so the run carries on bit for bit.

    ``config`` is the run's typed config (``rhovae.config.load_config``): ``fit`` trains as its ``trainer``,
    ``objective`` and ``eval`` sections say, and every checkpoint saves it so the run can be rebuilt from it alone.
    ``state`` and ``progress`` start a fresh run empty; ``restore`` puts a checkpoint's back.
    """

    model: VAE
    optimizer: torch.optim.Optimizer
    data: ImageData
    data_rng: torch.Generator
    run_dir: Path
    config: RunConfig
    state: TrainState = field(default_factory=TrainState)
    progress: EpochProgress | None = None  # an epoch stopped part-way, finished first
    provenance: dict[str, Any] = field(default_factory=dict)  # what this attempt runs on (rhovae.provenance)

    def checkpoint(self, progress: EpochProgress | None = None) -> dict[str, Any]:
        """Model, optimizer, state, every random state, the config and the provenance of the attempt that wrote it;
        ``progress`` for a stop mid-epoch."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "state": asdict(self.state), "rng": capture_rng(self.data_rng), "config": as_dict(self.config),
                "provenance": self.provenance, "epoch_progress": None if progress is None else asdict(progress)}

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Put model, optimizer, random states, state and progress back as ``checkpoint`` saved them."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        restore_rng(checkpoint["rng"], self.data_rng)
        self.state = TrainState.from_saved(checkpoint["state"])
        progress = checkpoint.get("epoch_progress")
        # checkpoints are read onto the CPU: the stopped epoch's order and sums go to the data's device
        self.progress = None if progress is None else EpochProgress(**{
            k: v.to(self.data.train.device) if torch.is_tensor(v) else v for k, v in progress.items()})


def training_finished(state: TrainState, epochs: int, patience: int | None) -> bool:
    """Whether ``fit`` has nothing left to do: ``epochs`` reached, or early stopping's ``patience`` used up."""
    return state.epoch >= epochs or bool(patience and state.epochs_since_best >= patience)


def resume_command(run_dir: Path, *overrides: str) -> str:
    """The one command that continues the run in ``run_dir`` (its config comes from the checkpoint)."""
    return " ".join(["python train.py trainer.resume=true", *overrides, f"hydra.run.dir={run_dir}"])


def fit(run: TrainingRun, *, tracker=None, stop: Callable[[], bool] = lambda: False,
        on_milestone: Callable[[TrainingRun], Mapping[str, Any]] | None = None) -> TrainState:
    """Train ``run`` until ``trainer.epochs`` of its config (or early stopping); return its final ``TrainState``.

    A restored ``run`` (``TrainingRun.restore``) carries on where its checkpoint stopped. Every
    ``logger.image_every`` epochs the tracker gets sample and reconstruction grids. When ``stop()`` turns
    true, the exact position is checkpointed to ``last.pt`` and ``TrainingInterrupted`` is raised; after the epoch
    ``trainer.stop_at_epoch`` (saved like any other), ``TrainingPaused``.
    After each epoch of ``trainer.milestones``, ``on_milestone(run)`` runs before ``last.pt`` moves past that
    epoch (so a run killed during it redoes the epoch and the milestone on resume); what it returns is logged to
    the tracker.
    """
    tracker = tracker or NullLogger()
    model, data, state = run.model, run.data, run.state
    trainer, evaluation, image_every = run.config.trainer, run.config.eval, run.config.logger.image_every
    ckpt_dir = run.run_dir / "checkpoints"
    while not training_finished(state, trainer.epochs, trainer.patience):
        result = train_one_epoch(model, run.optimizer, data, trainer, run.config.objective, state, run.data_rng,
                                 run.progress, stop)
        run.progress = None
        if isinstance(result, EpochProgress):
            save_atomic(run.checkpoint(result), ckpt_dir / "last.pt")
            raise interrupted(stop, f"stop requested: saved epoch {state.epoch + 1} at step {state.step} to "
                                    f"{ckpt_dir / 'last.pt'}; continue with: {resume_command(run.run_dir)}")
        start_eval = time.perf_counter()
        val = validation_metrics(model, data, run.config)
        state.epoch += 1
        row = {"epoch": state.epoch, **result, **{f"val/{k}": v for k, v in val.items()},
               "lr": run.optimizer.param_groups[0]["lr"], "eval_s": time.perf_counter() - start_eval}
        state.train_time_s += row["epoch_s"] + row["eval_s"]
        bound = selection_bound(val)
        improved = bound > state.best_val_bound
        if improved:
            state.best_epoch, state.best_val_bound = state.epoch, bound
        state.history.append(row)
        append_jsonl(run.run_dir / "metrics.jsonl", row)
        tracker.log(row, step=state.epoch)
        payload = run.checkpoint()
        if improved:
            save_atomic(payload, ckpt_dir / "best.pt")
        if on_milestone is not None and state.epoch in trainer.milestones:
            tracker.log({f"milestone/{k}": v for k, v in on_milestone(run).items()}, step=state.epoch)
        save_atomic(payload, ckpt_dir / "last.pt")
        iw = f", IWAE bound {val['iw_bound']:.2f}" if "iw_bound" in val else ""
        log.info("epoch %d/%d  train elbo %.2f  val elbo %.2f (recon %.2f, kl %.2f%s)  %.1fs%s", state.epoch,
                 trainer.epochs, row["train/elbo"], val["elbo"], val["recon"], val["kl"], iw, row["epoch_s"],
                 "  *best*" if improved else "")
        if image_every and state.epoch % image_every == 0:
            tracker.log_images(image_grids(model, data, evaluation.seed), step=state.epoch)
        if stop() and state.epoch < trainer.epochs:
            raise interrupted(stop, f"stop requested: epoch {state.epoch} is complete and saved to "
                                    f"{ckpt_dir / 'last.pt'}; continue with: {resume_command(run.run_dir)}")
        if state.epoch == trainer.stop_at_epoch and not training_finished(state, trainer.epochs, trainer.patience):
            raise TrainingPaused(f"trainer.stop_at_epoch={state.epoch} reached: epoch {state.epoch} is complete and "
                                 f"saved to {ckpt_dir / 'last.pt'}; continue with: "
                                 f"{resume_command(run.run_dir, 'trainer.stop_at_epoch=null')}")
        if trainer.patience and state.epochs_since_best >= trainer.patience:
            log.info("early stopping: no improvement of the validation bound for %d epochs (best %.2f at epoch %d)",
                     trainer.patience, state.best_val_bound, state.best_epoch)
    return state
