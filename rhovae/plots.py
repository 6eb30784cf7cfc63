"""The pictures researchers look at: sample and reconstruction grids, learning curves, 2-d latent maps.

Figures use matplotlib's object API (``matplotlib.figure.Figure``), so saving them never touches the
interactive backend of a notebook that imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid, save_image

from .results import milestone_differences

ZOOM = 2  # image grids show each pixel as ZOOM x ZOOM, so a 28 x 28 digit is readable on a slide
PADDING = 4


def sample_grid(images: torch.Tensor, image_shape: Sequence[int], nrow: int = 8) -> torch.Tensor:
    """Flat images ``[N, n_pixels]`` in [0, 1] as one ``[C, H, W]`` grid, each image enlarged ``ZOOM`` times."""
    tiles = images.detach().reshape(-1, *image_shape).cpu()
    tiles = tiles.repeat_interleave(ZOOM, dim=-2).repeat_interleave(ZOOM, dim=-1)
    return make_grid(tiles, nrow=nrow, padding=PADDING, pad_value=1.0)


def reconstruction_grid(inputs: torch.Tensor, recons: torch.Tensor, image_shape: Sequence[int],
                        per_row: int = 8) -> torch.Tensor:
    """Rows of ``per_row`` test inputs, each row followed by the row of their reconstructions, labelled on the left."""
    inputs, recons = inputs.detach(), recons.detach()
    rows = [block for start in range(0, len(inputs), per_row)
            for block in (inputs[start:start + per_row], recons[start:start + per_row])]
    grid = sample_grid(torch.cat(rows), image_shape, nrow=per_row)
    return label_rows(grid, ["input", "reconstruction"] * (len(rows) // 2), row_height=image_shape[-2] * ZOOM)


def label_rows(grid: torch.Tensor, labels: Sequence[str], row_height: int, width: int = 120) -> torch.Tensor:
    """``grid`` with a white margin on the left naming each of its rows of tiles."""
    height = grid.shape[-2]
    margin = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(margin)
    font = ImageFont.load_default(size=14)
    for i, label in enumerate(labels):
        middle = PADDING + i * (row_height + PADDING) + row_height / 2
        draw.text((width - 6, middle), label, fill=0, font=font, anchor="rm")
    return torch.cat([_as_strip(margin, grid.shape[0]), grid], dim=-1)


def title_grid(grid: torch.Tensor, title: str, height: int = 24) -> torch.Tensor:
    """``grid`` with a white band on top carrying ``title`` (one line, left-aligned: keep it short)."""
    band = Image.new("L", (grid.shape[-1], height), 255)
    ImageDraw.Draw(band).text((6, height / 2), title, fill=0, font=ImageFont.load_default(size=14), anchor="lm")
    return torch.cat([_as_strip(band, grid.shape[0]), grid], dim=-2)


def _as_strip(image: Image.Image, channels: int) -> torch.Tensor:
    """A greyscale PIL image as a ``[channels, H, W]`` tensor in [0, 1], to put beside an image grid."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).expand(channels, -1, -1)


def save_grid(grid: torch.Tensor, path: str | Path) -> None:
    save_image(grid, str(path))


def learning_curves(history: Sequence[Mapping[str, Any]], title: str = "") -> Figure:
    """Train and validation ELBO (left) and KL (right) per epoch, from ``metrics.jsonl`` rows, under ``title``."""
    fig = Figure(figsize=(9, 3.8), layout="constrained")
    if title:
        fig.suptitle(title)
    epochs = [row["epoch"] for row in history]
    for ax, metric, label in zip(fig.subplots(1, 2), ("elbo", "kl"), ("ELBO (nats)", "KL (nats)")):
        for split, style in (("train", "-"), ("val", "--")):
            ax.plot(epochs, [row[f"{split}/{metric}"] for row in history], style, marker=".", label=split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def kl_per_dimension(kl: Sequence[float], title: str = "") -> Figure:
    """Mean KL of each latent dimension over the test set, largest first: how many dimensions carry information.
    Each bar is labelled with its dimension's index (0-based, as in z[:, j])."""
    fig = Figure(figsize=(max(6, 0.22 * len(kl)), 3.2), layout="constrained")
    ax = fig.subplots()
    order = sorted(range(len(kl)), key=lambda j: -kl[j])
    ax.bar(range(len(order)), [kl[j] for j in order])
    ax.set_xticks(range(len(order)), [str(j) for j in order], fontsize=7)
    ax.set_xlabel("latent dimension j, sorted by KL")
    ax.set_ylabel("mean KL (nats)")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"KL per dimension{': ' + title if title else ''}", fontsize=9)
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


def likelihood_comparison(table, iw_samples: Sequence[int] = ()) -> Figure:
    """The headline figure of a sweep: test NLL per method where it was estimated, otherwise -test ELBO.

    The title says what the error bars are and, for the NLL, the numbers K of importance samples (``iw_samples``).
    """
    if "test/nll mean" in table and table["test/nll mean"].notna().any():
        ks = ", ".join(str(int(k)) for k in sorted(set(iw_samples)))
        fig = method_comparison(table, "test/nll", "test NLL (nats)")
        what = "importance-weighted test NLL" + (f" with K = {ks}" if ks else "")
    else:
        negated = table.assign(**{"test/elbo mean": -table["test/elbo mean"]})
        fig = method_comparison(negated, "test/elbo", "-test ELBO (nats)")
        what = "negative test ELBO (no NLL was estimated)"
    fig.suptitle(f"{what}\nmean over seeds, error bars ± 1 sd\n(n seeds beside each point)", fontsize=9)
    return fig


def gap_bars(table) -> Figure:
    """Approximation and amortization gaps (mean over seeds) stacked per method, one panel per dataset."""
    datasets = list(dict.fromkeys(table["dataset"]))
    fig = Figure(figsize=(4.5 * len(datasets), 3.8), layout="constrained")
    for ax, dataset in zip(fig.subplots(1, len(datasets), squeeze=False)[0], datasets):
        rows = table[table["dataset"] == dataset]
        x = range(len(rows))
        approx, amort = rows["gaps/approximation_gap mean"], rows["gaps/amortization_gap mean"]
        ax.bar(x, approx, label="approximation gap", yerr=rows["gaps/approximation_gap sd"].fillna(0), capsize=3)
        ax.bar(x, amort, bottom=approx, label="amortization gap", yerr=rows["gaps/amortization_gap sd"].fillna(0),
               capsize=3)
        ax.set_xticks(list(x), [str(m) for m in rows["method"]], rotation=30, ha="right")
        ax.set_title(dataset)
        ax.set_ylabel("log p(x) - ELBO (nats)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    fig.suptitle("where the nats go: mean over seeds, error bars ± 1 sd over seeds", fontsize=9)
    return fig


# where the difference panel of ``budget_curves`` labels its symmetric-log axis, in nats
DIFFERENCE_TICKS = (-100, -30, -10, -4, -2, -1, 0, 1, 2, 4, 10, 30, 100)


def budget_curves(milestones, metric: str = "test/nll", label: str = "test NLL (nats)",
                  baseline: str | None = "diag") -> Figure:
    """``metric`` at each milestone epoch per group (mean over seeds, ± 1 sd where there are several), log-scaled
    epochs, a row per dataset: how the ranking of posteriors moves with training budget. Where ``baseline`` runs
    share seeds and recipe with others (``results.milestone_differences``), a second panel shows each group minus
    the baseline trained the same way: a dot per seed, a line through the means, on a scale linear within ±2 nats
    (where the posteriors differ near convergence) and logarithmic beyond (the first epochs). A colour per method,
    a line style per recipe (``factors``)."""
    key = "group" if "group" in milestones else "method"
    differences = milestone_differences(milestones, baseline, metric) if baseline else None
    paired = differences is not None and not differences.empty
    datasets = list(dict.fromkeys(milestones["dataset"]))
    groups = list(dict.fromkeys(milestones[key]))
    methods = list(dict.fromkeys(milestones["method"]))
    recipes = list(dict.fromkeys(milestones["factors"])) if "factors" in milestones else [""]
    palette = "tab10" if len(methods) <= 10 else "tab20"
    colours = {m: colormaps[palette](i % colormaps[palette].N) for i, m in enumerate(methods)}
    style = {}
    for _, first in milestones.drop_duplicates(key).iterrows():
        recipe = recipes.index(first["factors"]) if "factors" in milestones else 0
        style[first[key]] = {"color": colours[first["method"]], "linestyle": ("-", "--", ":", "-.")[recipe % 4],
                             "marker": ("o", "s", "^", "D")[recipe % 4]}
    columns = 2 if paired else 1
    fig = Figure(figsize=(4.6 * columns + 3.2, 3.9 * len(datasets)), layout="constrained")
    axes = fig.subplots(len(datasets), columns, squeeze=False)
    for row, dataset in zip(axes, datasets):
        rows = milestones[milestones["dataset"] == dataset]
        epochs = sorted(rows["epoch"].unique())
        for name, curve in rows.groupby(key, sort=False):
            stats = curve.groupby("epoch")[metric].agg(["mean", "std"])
            row[0].errorbar(stats.index, stats["mean"], yerr=stats["std"].fillna(0), capsize=3, markersize=4,
                            label=str(name), **style[name])
        row[0].set_title(dataset)
        row[0].set_ylabel(label)
        if paired:
            mine = differences[differences["dataset"] == dataset]
            for name, pairs in mine.groupby("group", sort=False):
                means = pairs.groupby("epoch")["difference"].mean()
                row[1].plot(means.index, means, markersize=4, **style[name])
                row[1].plot(pairs["epoch"], pairs["difference"], linestyle="none", marker=style[name]["marker"],
                            color=style[name]["color"], markersize=3, alpha=0.45)
            row[1].axhline(0, color="black", linewidth=0.8)
            row[1].set_yscale("symlog", linthresh=2.0)
            low, high = row[1].get_ylim()
            ticks = [t for t in DIFFERENCE_TICKS if low <= t <= high]
            row[1].set_yticks(ticks, [f"{t:+g}" if t else "0" for t in ticks])
            row[1].minorticks_off()
            row[1].set_title(f"{dataset}: minus {baseline} trained the same way (same seed)", fontsize=9)
            row[1].set_ylabel(f"difference in {label}")
        for ax in row:
            ax.set_xscale("log")
            ax.set_xticks(epochs, [str(e) for e in epochs])
            ax.set_xlabel("epochs trained")
            ax.grid(alpha=0.3)
        shown = [name for name in groups if name in set(rows[key])]
        row[-1].legend([Line2D([], [], markersize=4, **style[name]) for name in shown], [str(n) for n in shown],
                       fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    images = ", ".join(str(n) for n in sorted(milestones["n_images"].unique())) if "n_images" in milestones else "?"
    ks = ", ".join(str(int(k)) for k in sorted(milestones["test/iw_samples"].dropna().unique())) \
        if "test/iw_samples" in milestones else "?"
    fig.suptitle(f"{label} of the model at each milestone\non the first {images} test images, K = {ks}; error bars "
                 f"± 1 sd over seeds{', dots: seeds' if paired else ''}", fontsize=9)
    return fig


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


def paired_difference_strip(runs, metrics: Mapping[str, str], baseline: str = "diag") -> Figure:
    """Each method minus ``baseline`` on the same dataset and seed: one dot per seed, the mean with its 95% t
    interval beside the dots, one panel per metric (``{metric column: label}``), a line at 0. Shows what an interval
    hides: which seeds carry a difference, and how far apart they are."""
    from scipy import stats

    longest = max((len(str(m)) for m in runs["method"]), default=0)
    upright = longest > 8  # tuned names ("iaf[flow_length=6]") would overlap side by side: turned, with room below
    fig = Figure(figsize=(4.2 * len(metrics), 3.6 + (0.08 * longest if upright else 0)), layout="constrained")
    for ax, (metric, label) in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics.items()):
        done = runs[(runs["status"] == "completed") & runs[metric].notna()] if metric in runs else runs.iloc[:0]
        methods = [m for m in dict.fromkeys(done["method"]) if m != baseline]
        for x, method in enumerate(methods):
            pairs = done[done["method"] == method][["dataset", "seed", metric]].merge(
                done[done["method"] == baseline][["dataset", "seed", metric]], on=["dataset", "seed"],
                suffixes=("", "_base"))
            diff = (pairs[metric] - pairs[f"{metric}_base"]).to_numpy()
            ax.plot(np.full(len(diff), x - 0.1), diff, "o", color="0.45", markersize=4)
            if len(diff) > 1:
                half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / np.sqrt(len(diff))
                ax.errorbar([x + 0.1], [diff.mean()], yerr=[half], fmt="s", color="C0", capsize=4)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(methods)), methods, rotation=90 if upright else 0)
        ax.set_ylabel(f"{label} minus {baseline} (nats)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    gap = ": " if len(metrics) > 1 else ":\n"  # one panel is too narrow for the title on one line
    fig.suptitle(f"paired differences from {baseline}{gap}dots are seeds, squares the mean with its 95% t interval",
                 fontsize=9)
    return fig
