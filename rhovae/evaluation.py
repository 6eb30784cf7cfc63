"""Scoring a trained VAE on a fixed image set: the per-image ELBO, its reconstruction term and KL, in nats.

Evaluation draws its posterior samples from its own seeded random stream (``eval_seed``), so the numbers
do not depend on how far training advanced the global generator, and evaluating never perturbs training.
"""

from __future__ import annotations

import contextlib

import torch

from .data import eval_batches
from .vae import VAE


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device):
    """Run the block with torch's global generators reseeded, restoring their state afterwards."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@torch.inference_mode()
def evaluate_elbo(model: VAE, images: torch.Tensor, *, batch_size: int = 1000, eval_seed: int = 0) -> dict[str, float]:
    """Mean per-image ``elbo``, ``recon`` and ``kl`` over ``images`` (uint8), one posterior sample per image."""
    was_training = model.training
    model.eval()
    totals = {"elbo": 0.0, "recon": 0.0, "kl": 0.0}
    try:
        with seeded_rng(eval_seed, images.device):
            for x in eval_batches(images, batch_size):
                terms = model.elbo_terms(x)
                totals["recon"] += terms.recon.sum().item()
                totals["kl"] += terms.kl.sum().item()
                totals["elbo"] += terms.elbo.sum().item()
    finally:
        model.train(was_training)
    return {k: v / len(images) for k, v in totals.items()}
