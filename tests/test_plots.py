"""Pictures people put on slides: readable grids, labelled reconstruction rows, titled curves, captioned results."""

from __future__ import annotations

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
import torch

from rhovae.plots import (PADDING, ZOOM, kl_per_dimension, learning_curves, likelihood_comparison,
                          reconstruction_grid, sample_grid, title_grid)

SHAPE = (1, 28, 28)
TILE = 28 * ZOOM


def test_sample_grid_enlarges_every_pixel():
    images = torch.rand(64, 784)
    grid = sample_grid(images, SHAPE)
    assert grid.shape[-2:] == (8 * (TILE + PADDING) + PADDING,) * 2
    first = grid[0, PADDING:PADDING + TILE, PADDING:PADDING + TILE]
    assert torch.equal(first, images[0].reshape(28, 28).repeat_interleave(ZOOM, 0).repeat_interleave(ZOOM, 1))


def test_reconstruction_rows_alternate_inputs_and_reconstructions_under_labels():
    inputs, recons = torch.zeros(16, 784), torch.ones(16, 784)  # black inputs, white reconstructions
    grid = reconstruction_grid(inputs, recons, SHAPE)
    margin = grid.shape[-1] - sample_grid(torch.zeros(32, 784), SHAPE).shape[-1]
    assert margin > 0
    tiles = grid[0, :, margin:]

    def row(i: int) -> torch.Tensor:
        top = PADDING + i * (TILE + PADDING)
        return tiles[top:top + TILE, PADDING:PADDING + TILE]

    assert [row(i).mean().item() for i in range(4)] == [0.0, 1.0, 0.0, 1.0]  # input row, its reconstructions, ...
    for i in range(4):  # each row's label is drawn in the margin beside it
        top = PADDING + i * (TILE + PADDING)
        assert grid[0, top:top + TILE, :margin].min() < 0.5


def test_learning_curves_have_a_title_and_whole_epoch_ticks():
    history = [{"epoch": e, "train/elbo": -100.0 - e, "val/elbo": -101.0, "train/kl": 5.0, "val/kl": 5.0}
               for e in (1, 2, 3)]
    fig = learning_curves(history, "mnist, rho, seed 3")
    assert fig._suptitle.get_text() == "mnist, rho, seed 3"
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)


def test_results_figure_says_what_the_error_bars_are_and_which_k():
    table = pd.DataFrame({"dataset": ["mnist", "mnist"], "method": ["diag", "rho"], "n": [3, 3],
                          "test/nll mean": [90.0, 91.0], "test/nll sd": [0.5, 0.4],
                          "test/elbo mean": [-95.0, -96.0], "test/elbo sd": [0.5, 0.5]})
    title = likelihood_comparison(table, [1000])._suptitle.get_text()
    assert "K = 1000" in title and "error bars ± 1 sd" in title
    fig = likelihood_comparison(table, [1000])
    canvas = FigureCanvasAgg(fig)
    canvas.draw()  # the title fits inside the figure: nothing clipped at either side
    box = fig._suptitle.get_window_extent(canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width
    no_nll = table.drop(columns=["test/nll mean", "test/nll sd"])
    assert "negative test ELBO" in likelihood_comparison(no_nll)._suptitle.get_text()


def test_kl_bars_are_labelled_with_their_dimension_and_sample_grids_carry_a_title():
    fig = kl_per_dimension([0.1, 3.0, 0.0, 1.5], "mnist, diag, seed 0")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "3", "0", "2"]  # largest KL first
    grid = sample_grid(torch.zeros(8, 784), SHAPE)
    titled = title_grid(grid, "samples from the prior: mnist, diag, seed 0")
    assert titled.shape[-2] == grid.shape[-2] + 24 and titled.shape[-1] == grid.shape[-1]
    assert titled[:, :24].min() < 0.5 and torch.equal(titled[:, 24:], grid)  # dark text on top of the same grid


def test_budget_figure_title_fits_for_one_dataset():
    from rhovae.plots import budget_curves

    milestones = pd.DataFrame({"dataset": ["mnist"] * 4, "method": ["diag", "diag", "iaf", "iaf"],
                               "epoch": [10, 100, 10, 100], "test/nll": [96.4, 89.6, 101.1, 90.8],
                               "n_images": [2000] * 4, "test/iw_samples": [1000] * 4})
    fig = budget_curves(milestones)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    box = fig._suptitle.get_window_extent(canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width and "K = 1000" in fig._suptitle.get_text()


def test_paired_strip_tick_labels_do_not_overlap_with_tuned_method_names():
    from rhovae.plots import paired_difference_strip

    methods = ["diag", "fullcov", "iaf[flow_length=6]", "planar[flow_length=1]", "rho"]
    runs = pd.DataFrame([{"status": "completed", "dataset": "mnist", "method": m, "seed": s,
                          "test/nll": 92.0 + i * 0.3 + s * 0.1} for i, m in enumerate(methods) for s in range(3)])
    fig = paired_difference_strip(runs, {"test/nll": "test NLL"})
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    labels = [t for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert [t.get_text() for t in labels] == methods[1:]
    boxes = [t.get_window_extent(canvas.get_renderer()) for t in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert all(box.x0 >= 0 and box.y0 >= 0 for box in boxes)  # turned labels stay inside the figure


def _two_recipes_of_milestones():
    """diag and fullcov on seeds 0 and 1 under two recipes (``factors``), and iaf under the second recipe only on
    seed 0; iaf under the first recipe has no diag partner at epoch 40 (diag's runs of that recipe stop at 10)."""
    rows = []
    nll = {("diag", "w=0"): (100.0, 90.0), ("diag", "w=10"): (104.0, 90.5), ("fullcov", "w=0"): (99.0, 88.0),
           ("fullcov", "w=10"): (101.0, 89.0), ("iaf", "w=10"): (110.0, 89.5), ("iaf", "w=0"): (112.0, 93.0)}
    for (method, recipe), (at_10, at_40) in nll.items():
        for seed in (0, 1):
            if method == "iaf" and seed == 1:
                continue
            for epoch, value in ((10, at_10), (40, at_40)):
                if method == "diag" and recipe == "w=0" and epoch == 40:
                    continue
                rows.append({"dataset": "mnist", "method": method, "factors": recipe, "group": f"{method} {recipe}",
                             "seed": seed, "epoch": epoch, "test/nll": value + 0.25 * seed, "n_images": 2000,
                             "test/iw_samples": 1000})
    return pd.DataFrame(rows)


def test_budget_curves_draw_each_posterior_minus_diag_trained_the_same_way():
    from rhovae.plots import budget_curves

    milestones = _two_recipes_of_milestones()
    fig = budget_curves(milestones)
    nll_panel, difference_panel = fig.axes
    legend = difference_panel.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == list(dict.fromkeys(milestones["group"]))
    means = {}  # the difference panel's lines through the means: (x, y) pairs, one line per group with a partner
    for line in difference_panel.get_lines():
        if line.get_linestyle() != "None" and len(line.get_xdata()) and line.get_xdata()[0] != line.get_xdata()[-1]:
            means[tuple(line.get_xdata())] = means.get(tuple(line.get_xdata()), []) + [list(line.get_ydata())]
    # fullcov w=10 minus diag w=10, the same seed: (101 - 104, 89 - 90.5) on both seeds
    assert [-3.0, -1.5] in means[(10, 40)]
    # iaf w=10 minus diag w=10 on seed 0 only: (6, -1)
    assert [6.0, -1.0] in means[(10, 40)]
    # fullcov w=0 and iaf w=0 pair only at epoch 10 (diag w=0 has no epoch 40): single-point lines, never a
    # difference across recipes such as iaf w=0 minus diag w=10 at 40 (+2.5)
    assert all(2.5 not in ys for lines in means.values() for ys in lines)
    dots = [line for line in difference_panel.get_lines() if line.get_linestyle() == "None"]
    assert sorted(y for line in dots for y in line.get_ydata()) == sorted(
        [-1.0, -1.0, -3.0, -3.0, -1.5, -1.5, 6.0, -1.0, 12.0])  # a dot per seed and epoch with a partner
    assert len(nll_panel.get_lines()) >= len(set(milestones["group"]))


def test_budget_curves_without_a_baseline_to_pair_draw_one_panel():
    from rhovae.plots import budget_curves

    milestones = _two_recipes_of_milestones()
    assert len(budget_curves(milestones[milestones["method"] != "diag"]).axes) == 1
    assert len(budget_curves(milestones, baseline=None).axes) == 1
