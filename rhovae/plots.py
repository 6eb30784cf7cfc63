"""Image grids researchers look at: prior samples, and reconstructions beside their inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torchvision.utils import make_grid, save_image


def sample_grid(images: torch.Tensor, image_shape: Sequence[int], nrow: int = 8) -> torch.Tensor:
    """Flat images ``[N, n_pixels]`` in [0, 1] as one ``[C, H, W]`` grid."""
    return make_grid(images.detach().reshape(-1, *image_shape).cpu(), nrow=nrow, padding=2, pad_value=1.0)


def reconstruction_grid(inputs: torch.Tensor, recons: torch.Tensor, image_shape: Sequence[int],
                        pairs_per_row: int = 4) -> torch.Tensor:
    """Each input immediately followed by its reconstruction, ``pairs_per_row`` pairs per row."""
    paired = torch.stack([inputs.detach(), recons.detach()], dim=1).reshape(-1, inputs.shape[-1])
    return sample_grid(paired, image_shape, nrow=2 * pairs_per_row)


def save_grid(grid: torch.Tensor, path: str | Path) -> None:
    save_image(grid, str(path))
