# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # rhovae: comparing approximate posteriors
#
# Loads one sweep (`python train.py -m ...`) into pandas with the same code as `scripts/summarize.py`, then
# shows the table, the paired differences against `diag`, learning curves (mean ± sd over seeds), the NLL
# comparison and sample grids side by side.
#
# Point it at a sweep folder with the environment variable `RHOVAE_SWEEP` (default: the newest folder under
# `outputs/multirun`; a relative path is taken from the folder Jupyter was started in), or read the runs from Weights & Biases instead with `RHOVAE_WANDB_PROJECT`
# (`project` or `entity/project`) and optionally `RHOVAE_WANDB_TAGS` (comma-separated, e.g. the sweep's name).
# `RHOVAE_AGAINST`, a second sweep folder, adds each method's paired difference from its counterpart there (a tuned
# sweep against the untuned one), as `scripts/summarize.py --against` does.
# This file is paired with `results.py` by jupytext: edit either, then `jupytext --sync notebooks/results.ipynb`.

# %%
# %matplotlib inline
import base64
import html
import io
import os
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import HTML, Markdown, display
from PIL import Image

from rhovae import results
from rhovae.plots import budget_curves, gap_bars, learning_curve_bands, likelihood_comparison

REPO = Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()
WANDB_PROJECT = os.environ.get("RHOVAE_WANDB_PROJECT")
WANDB_TAGS = [t for t in os.environ.get("RHOVAE_WANDB_TAGS", "").split(",") if t]
SWEEP_DIR = os.environ.get("RHOVAE_SWEEP")
AGAINST = os.environ.get("RHOVAE_AGAINST")
if SWEEP_DIR:  # relative to the folder the user started Jupyter in, not to notebooks/
    SWEEP_DIR = str(results.resolve_user_path(SWEEP_DIR, REPO))
elif not WANDB_PROJECT:
    sweeps = sorted((REPO / "outputs" / "multirun").glob("*/"), key=lambda p: p.stat().st_mtime)
    SWEEP_DIR = str(sweeps[-1]) if sweeps else None
pd.set_option("display.width", 160)


def show(fig, alt: str) -> None:
    """A figure as a PNG image with alternative text, which screen readers (and the exported HTML) need."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    data = base64.b64encode(png.getvalue()).decode()
    display(HTML(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'))

# %% [markdown]
# ## Runs

# %%
if WANDB_PROJECT:
    entity, _, project = WANDB_PROJECT.rpartition("/")
    runs = results.load_wandb_runs(project, entity or None, tags=WANDB_TAGS)
    source = f"W&B project {WANDB_PROJECT}" + (f" (tags {WANDB_TAGS})" if WANDB_TAGS else "")
elif SWEEP_DIR:
    runs = results.load_runs(SWEEP_DIR)
    source = SWEEP_DIR
else:
    raise SystemExit("no sweep found: set RHOVAE_SWEEP to a folder written by `python train.py -m ...`")
keys = results.group_keys(runs)
display(Markdown(f"**{source}**: {len(results.completed(runs))} of {len(runs)} runs completed; "
                 f"grouped by {', '.join(keys)}"))
runs[["run", "status", *keys, "seed", "test/elbo", "test/kl"] + (["test/nll"] if "test/nll" in runs else [])]

# %% [markdown]
# ## The table (mean ± sd over seeds, nats per image)

# %%
table = results.summarize(runs, keys)
results.display_table(table)

# %% [markdown]
# ## Each method against `diag`, paired by seed (95% t interval)
# Negative NLL differences and positive ELBO differences favour the method; the last column is how many seeds
# would find a 0.5-nat difference 80% of the time at the spread these seeds show.

# %%
results.display_differences(results.paired_differences(runs, keys))

# %% [markdown]
# ## Against another sweep (`RHOVAE_AGAINST`), paired method by method and seed by seed

# %%
if AGAINST:
    other = results.resolve_user_path(AGAINST, REPO)
    display(Markdown(f"each method here minus its counterpart in **{other}**"))
    display(results.display_differences(results.paired_between(runs, results.load_runs(other), other.name)))
else:
    print("set RHOVAE_AGAINST to a second sweep folder to pair this one with it")

# %% [markdown]
# Runs left out of the averages (failed, interrupted or unfinished):

# %%
results.not_completed(runs)

# %% [markdown]
# ## Learning curves (local sweeps)

# %%
histories = results.load_histories(runs, keys) if not WANDB_PROJECT else pd.DataFrame()
if not histories.empty:
    show(learning_curve_bands(histories, "val/elbo"),
         "validation ELBO against epoch, mean and sd over seeds, per method")
    show(learning_curve_bands(histories, "val/kl"), "validation KL against epoch, mean and sd over seeds, per method")

# %% [markdown]
# ## Test NLL per method (-ELBO where no NLL was estimated)

# %%
show(likelihood_comparison(table, results.iw_samples_used(runs)), "test NLL per method and dataset, with error bars")

# %% [markdown]
# ## Against training budget (runs with `trainer.milestones`)
# The model of each milestone epoch scored on a fixed subset of the test set (`experiment=budget`): whether the
# ranking of posteriors at a short budget holds as they train on.

# %%
milestones = results.load_milestones(runs) if not WANDB_PROJECT else pd.DataFrame()
if not milestones.empty and "test/nll" in milestones:
    show(budget_curves(milestones), "test NLL on the milestone subset against training epochs, one line per method")
    display(milestones.pivot_table(index="epoch", columns=["dataset", "group"], values="test/nll").round(2))
else:
    print("no run of this sweep has milestones")

# %% [markdown]
# ## Where the nats go: approximation and amortization gaps
# Runs with a `gaps.json` (`python scripts/gaps.py <run>`, or `eval.gaps=true` in the sweep): log p(x) - ELBO split
# into what the family cannot represent and what the encoder fails to find (Cremer et al. 2018).

# %%
if "gaps/approximation_gap mean" in table and table["gaps/approximation_gap mean"].notna().any():
    show(gap_bars(table[table["gaps/approximation_gap mean"].notna()]),
         "approximation and amortization gaps in nats per method, stacked bars")
else:
    print("no run of this sweep has a gaps.json")

# %% [markdown]
# ## Prior samples side by side (first completed seed of each group)

# %%
if not WANDB_PROJECT:
    firsts = results.completed(runs).groupby(keys, sort=False, dropna=False).head(1)
    datasets = list(dict.fromkeys(firsts["dataset"]))  # one row of panels per dataset
    width = firsts.groupby("dataset").size().max()
    fig, axes = plt.subplots(len(datasets), width, figsize=(5.0 * width, 5.4 * len(datasets)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for row, dataset in zip(axes, datasets):
        for ax, (_, run) in zip(row, firsts[firsts["dataset"] == dataset].iterrows()):
            ax.imshow(Image.open(Path(run["run_dir"]) / "samples.png"), cmap="gray")
            ax.set_title(f"{dataset}: {run['method']}", fontsize=8)
    show(fig, "prior samples of the first completed seed of each method: " + ", ".join(
        f"{run['dataset']} {run['method']}" for _, run in firsts.iterrows()))
