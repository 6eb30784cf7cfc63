"""The pictures of a run: sample and reconstruction grids (logged during training and saved at the end), and the
end-of-run figures (learning curves, KL per dimension, the latent means of a 2-d model), saved as PNGs.

The grids draw from a seeded random stream of their own, so making them never perturbs training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .data import ImageData, to_unit_float
from .evaluation import seeded_rng
from .plots import (kl_per_dimension, latent_scatter, learning_curves, reconstruction_grid, sample_grid, save_figure,
                    save_grid, title_grid)
from .vae import VAE

N_GRID_IMAGES = 64


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


def write_pictures(model: VAE, data: ImageData, run_dir: Path, history: Sequence[Mapping[str, Any]],
                   latent_means: torch.Tensor, eval_seed: int, title: str = "",
                   kl_per_dim: list[float] | None = None) -> list[Path]:
    """Save every end-of-run picture as PNG in ``run_dir`` (the learning curves from ``history``, the per-epoch
    metrics); return their paths."""
    paths = []
    headings = {"samples": "samples from the prior", "reconstructions": "test reconstructions"}
    for name, grid in image_grids(model, data, eval_seed).items():
        save_grid(title_grid(grid, f"{headings[name]}: {title}" if title else headings[name]), run_dir / f"{name}.png")
        paths.append(run_dir / f"{name}.png")
    save_figure(learning_curves(history, title), run_dir / "learning_curves.png")
    paths.append(run_dir / "learning_curves.png")
    if kl_per_dim:
        save_figure(kl_per_dimension(kl_per_dim, title), run_dir / "kl_per_dim.png")
        paths.append(run_dir / "kl_per_dim.png")
    if latent_means.shape[-1] == 2:
        save_figure(latent_scatter(latent_means, data.test_labels), run_dir / "latent_means.png")
        paths.append(run_dir / "latent_means.png")
    return paths
