"""The pictures researchers look at: sample and reconstruction grids, learning curves, 2-d latent maps.

Figures use matplotlib's object API (``matplotlib.figure.Figure``), so saving them never touches the
interactive backend of a notebook that imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
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


def learning_curves(history: Sequence[Mapping[str, Any]]) -> Figure:
    """Train and validation ELBO (left) and KL (right) per epoch, from ``metrics.jsonl`` rows."""
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    epochs = [row["epoch"] for row in history]
    for ax, metric, label in zip(fig.subplots(1, 2), ("elbo", "kl"), ("ELBO (nats)", "KL (nats)")):
        for split, style in (("train", "-"), ("val", "--")):
            ax.plot(epochs, [row[f"{split}/{metric}"] for row in history], style, marker=".", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def latent_scatter(means: torch.Tensor, labels: torch.Tensor) -> Figure:
    """Posterior means of a 2-d latent space, coloured by class label."""
    if means.shape[-1] != 2:
        raise ValueError(f"latent_scatter draws 2-d latents, got d={means.shape[-1]}")
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.subplots()
    points = ax.scatter(*means.cpu().T.numpy(), c=labels.cpu().numpy(), cmap="tab10", s=3, alpha=0.7)
    fig.colorbar(points, ax=ax, label="label")
    ax.set_xlabel("E[z_1 | x]")
    ax.set_ylabel("E[z_2 | x]")
    return fig


def save_figure(fig: Figure, path: str | Path) -> None:
    fig.savefig(str(path), dpi=110)


def method_comparison(table, metric: str = "test/nll", label: str = "test NLL (nats)") -> Figure:
    """Mean +- sd over seeds of ``metric`` per method, one panel per dataset, from ``results.summarize``."""
    datasets = list(dict.fromkeys(table["dataset"]))
    fig = Figure(figsize=(4.5 * len(datasets), 3.8), layout="constrained")
    for ax, dataset in zip(fig.subplots(1, len(datasets), squeeze=False)[0], datasets):
        rows = table[table["dataset"] == dataset]
        names = [" ".join(str(v) for v in r) for r in rows.drop(columns=["dataset"]).filter(
            regex=r"^(method|config\.)").itertuples(index=False)]
        ax.errorbar(range(len(rows)), rows[f"{metric} mean"], yerr=rows[f"{metric} sd"].fillna(0.0), fmt="o",
                    capsize=4)
        for i, n in enumerate(rows["n"]):
            ax.annotate(f"n={n}", (i, rows[f"{metric} mean"].iloc[i]), textcoords="offset points", xytext=(6, 4),
                        fontsize=7)
        ax.set_xticks(range(len(rows)), names, rotation=30, ha="right")
        ax.set_title(dataset)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    return fig


def likelihood_comparison(table) -> Figure:
    """The headline figure of a sweep: test NLL per method where it was estimated, otherwise -test ELBO."""
    if "test/nll mean" in table and table["test/nll mean"].notna().any():
        return method_comparison(table, "test/nll", "test NLL (nats)")
    negated = table.assign(**{"test/elbo mean": -table["test/elbo mean"]})
    return method_comparison(negated, "test/elbo", "-test ELBO (nats)")


def learning_curve_bands(histories, metric: str = "val/elbo", group: str = "method") -> Figure:
    """Mean +- sd over seeds of a per-epoch ``metric`` for each ``group`` value, one panel per dataset."""
    datasets = list(dict.fromkeys(histories["dataset"]))
    fig = Figure(figsize=(5 * len(datasets), 3.8), layout="constrained")
    for ax, dataset in zip(fig.subplots(1, len(datasets), squeeze=False)[0], datasets):
        rows = histories[histories["dataset"] == dataset]
        for name, curve in rows.groupby(group, sort=False)[metric]:
            stats = curve.groupby(rows.loc[curve.index, "epoch"]).agg(["mean", "std"])
            line, = ax.plot(stats.index, stats["mean"], marker=".", label=str(name))
            ax.fill_between(stats.index, stats["mean"] - stats["std"].fillna(0), stats["mean"] + stats["std"].fillna(0),
                            color=line.get_color(), alpha=0.2)
        ax.set_title(dataset)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig
