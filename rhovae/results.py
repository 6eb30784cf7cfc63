"""Sweep folders (or W&B runs) as pandas tables: one row per run, one row per method, paired differences.

The summary script (``scripts/summarize.py``) and the analysis notebook (``notebooks/results.ipynb``) both
read results through this module, so the paper table and the notebook cannot disagree.

* ``load_runs(sweep_dir)``: every run folder below ``sweep_dir`` (a folder holding ``.hydra/config.yaml``
  or ``summary.json``), with its status, its summary numbers and its flattened config (columns
  ``config.<key>``), its config read from its own record (summary.json, else its checkpoint), and the gaps of a
  ``gaps.json`` beside it. A run that never wrote ``summary.json`` (killed, crashed) is kept as ``unfinished``.
* ``group_keys(runs)``: what tells methods apart: dataset, the posterior's ``method`` label, and every other
  config key that the sweep varied (networks, latent_dim, ...), but never the seed.
* ``summarize(runs)``: mean and sd over seeds of the completed runs, one row per group.
* ``paired_differences(runs)``: each method minus ``diag`` on the same dataset and seed, with a 95%
  Student-t confidence interval over seeds, and how many seeds would find a 0.5-nat difference 80% of the time at
  that spread (``seeds_needed``, a paired power calculation).
* ``load_histories(runs)``: the per-epoch ``metrics.jsonl`` rows of every completed run, for learning curves.
* ``load_milestones(runs)``: the ``milestones.jsonl`` rows of every run, for NLL against training budget;
  ``budget_table(milestones)`` puts them side by side, an epoch per row; ``milestone_differences(milestones)`` pairs
  each run's milestones with diag trained the same way, seed by seed; ``milestone_table(milestones)`` gives each
  stage's NLL paired against diag with what was re-scored on the milestone's model (whole test set, AIS, gaps),
  and ``stage_gaps(milestones)`` those models' inference gaps.
* ``ais_table(runs)``: AIS beside the IW estimate, paired against diag; ``ais_rescorings_table(runs)`` and
  ``bdmc_table(runs)``: every AIS re-scoring and every BDMC measurement, one row each.
* ``budget(runs)`` and ``provenance_differences(runs)``: what budget made a table, and what its runs ran on where
  they differ.
* ``load_wandb_runs(project)``: the same run table from the W&B API instead of local folders.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from scipy import stats

from .checkpoint import CheckpointError, load_checkpoint
from .config import NOT_FACTORS, flatten, in_sections, with_todays_defaults
from .posteriors import posterior_label

BASELINE = "diag"
# Reported per group: the columns averaged over seeds, and how each is shown in the tables.
METRICS = {
    "test/elbo": ("test ELBO", 2),
    "test/nll": ("test NLL", 2),
    "test/kl": ("test KL", 2),
    "test/active_units": ("active units", 1),
    # I(x; z) as a fraction of its cap log N (rhovae/information.py; not for flows): near 1 it is saturated, and
    # I(x; z) and the marginal KL (in summary.json and results.csv) then say nothing about the posterior
    "test/mutual_information_fraction": ("I(x; z) / log N", 3),
    "test/ess_fraction": ("ESS / K", 3),
    "test/nll_tenth_k": ("NLL at K/10", 2),  # minus test NLL: how much the estimate still moves with K
    "test/pareto_k_above_0_7": ("k-hat > 0.7", 3),  # the fraction of images whose NLL cannot be trusted
    "train/loss": ("final train loss", 2),  # the objective trained (differs from -ELBO for published_code, warm-up)
    "test/rho_mean": ("mean rho", 2),  # rho posteriors only
    "test/log_s_mean": ("mean log s", 2),
    "gaps/approximation_gap": ("approximation gap", 2),  # runs with a gaps.json (scripts/gaps.py, eval.gaps=true)
    "gaps/amortization_gap": ("amortization gap", 2),
    # runs re-scored by AIS (scripts/evaluate.py RUN --estimator ais): log p(x) on the first ais.n_images test
    # images by annealed importance sampling, the importance-weighted estimate on the same images, and their difference
    "ais/nll": ("AIS NLL", 2),
    "ais/iw_nll": ("IW NLL (AIS images)", 2),
    "ais/iw_minus_ais": ("IW - AIS", 2),
    "ais/bdmc_gap": ("BDMC gap", 2),  # the AIS schedule's error bound on data simulated from the model
    "epoch_s": ("s/epoch", 1),
}
PAIRED_METRICS = ("test/nll", "test/elbo", "ais/nll", "ais/iw_nll")
CONFIG = "config."  # prefix of the flattened config columns
# Config keys that do not change what is being measured, so a sweep that varies them is still one method: the
# seed (the replicate), how a run executes, and how evaluation batches its work (the flags of rhovae/config/schema.py).
NOT_A_FACTOR = ("seed", *NOT_FACTORS)


def resolve_user_path(path: str | Path, repo: Path) -> Path:
    """A folder the user named, relative to where they started (``$PWD``, set by the shell that launched Jupyter),
    else to the working directory, else to the repository (a notebook kernel runs in ``notebooks/``)."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    starts = [Path(os.environ["PWD"])] if os.environ.get("PWD") else []
    candidates = list(dict.fromkeys(start / path for start in [*starts, Path.cwd(), repo]))
    for candidate in candidates:
        if candidate.exists():
            return candidate.resolve()
    raise FileNotFoundError(f"{path} not found; looked in {', '.join(str(c.parent) for c in candidates)}")


def find_runs(sweep_dir: str | Path) -> list[Path]:
    """Run folders below ``sweep_dir`` (itself included): those with a Hydra config or a summary."""
    root = Path(sweep_dir)
    found = {p.parent for p in root.rglob("summary.json")}
    found |= {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
    return sorted(found)


def run_config(run: Path, summary: Mapping[str, Any]) -> dict[str, Any]:
    """The config a run records of itself: in summary.json, else in its last checkpoint (a run killed before it
    wrote a summary), else the unresolved ``.hydra/config.yaml`` (a run that never finished an epoch)."""
    if "config" in summary:
        return summary["config"]
    checkpoint, hydra_config = run / "checkpoints" / "last.pt", run / ".hydra" / "config.yaml"
    if checkpoint.is_file():
        with contextlib.suppress(CheckpointError):
            return load_checkpoint(checkpoint)["config"]
    return OmegaConf.to_container(OmegaConf.load(hydra_config), resolve=False) if hydra_config.is_file() else {}


def iw_samples_used(runs: pd.DataFrame) -> list[int]:
    """The distinct numbers K of importance samples behind the completed runs' test NLL."""
    done = completed(runs)
    return sorted({int(k) for k in done["test/iw_samples"].dropna()}) if "test/iw_samples" in done else []


def run_row(summary: Mapping[str, Any], config: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """One table row from a run's summary and resolved config (either may be incomplete; an older version's config
    is read in today's keys, those added since at their defaults, so that they never look like a factor)."""
    config = with_todays_defaults(config) if config else {}
    row = {"status": summary.get("status", "unfinished"), "error": summary.get("error"),
           "dataset": summary.get("dataset", config.get("dataset", {}).get("name")),
           "posterior": summary.get("posterior", config.get("posterior", {}).get("name")),
           # labelled now, from the config, so runs summarized by an older version get today's label
           "method": posterior_label(config["posterior"]) if "posterior" in config else summary.get("method"),
           "seed": summary.get("seed", config.get("seed")), **extra}
    row.update({k: v for k, v in summary.items() if k not in row and k not in ("config", "provenance")})
    row.update({f"provenance.{k}": v for k, v in summary.get("provenance", {}).items()})
    # lists (hidden sizes) become strings, so that columns can be compared and grouped
    row.update({k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in flatten(config, CONFIG).items()})
    return row


# The AIS settings that make two estimates the same estimator (the seed and the batching only change the noise).
AIS_SCHEDULE = ("steps", "chains", "start", "schedule", "sigmoid_delta", "leapfrog_steps", "target_accept")


def same_schedule(one: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether two AIS settings (a re-scoring's or a BDMC's ``settings``) anneal the same way."""
    return all(one.get(k) == other.get(k) for k in AIS_SCHEDULE)


def ais_rescoring(run: Path, checkpoint: str = "best") -> dict[str, Any]:
    """The ``ais/*`` numbers of the run's AIS re-scoring of ``checkpoint`` (``evaluation[_<checkpoint>]_ais*.json``,
    written beside its summary by ``scripts/evaluate.py --estimator ais``) with their settings (``ais/steps``,
    ...); of several, one from the prior (what the comparison uses: independent of the posterior) before one from
    q(z|x), then the one with the most intermediate distributions, then chains (the most accurate).
    ``ais/bdmc_gap`` is the BDMC gap of the same schedule on the same model (``bdmc*.json`` of ``scripts/bdmc.py``),
    where one was measured. {} when there is no AIS re-scoring."""
    prefix = "evaluation_" if checkpoint == "best" else f"evaluation_{checkpoint}_"
    records = [json.loads(p.read_text()) for p in sorted(run.glob(f"{prefix}ais*.json"))]
    if not records:
        return {}
    best = max(records, key=lambda r: (r["settings"]["start"] == "prior", r["settings"]["steps"],
                                       r["settings"]["chains"]))
    gaps = [r["gap"] for r in (json.loads(p.read_text()) for p in sorted(run.glob("bdmc*.json")))
            if r["checkpoint"] == checkpoint and same_schedule(r["settings"], best["settings"])]
    return {**{k: v for k, v in best.items() if k.startswith("ais/")},
            **{f"ais/{k}": best["settings"][k] for k in ("steps", "chains", "start", "schedule")},
            **({"ais/bdmc_gap": gaps[-1]} if gaps else {})}


def milestone_rescorings(run: Path, epoch: int) -> dict[str, Any]:
    """What was measured on the model a run saved at milestone ``epoch`` besides its ``milestones.jsonl`` row: the
    whole test set at the run's own settings (``scripts/evaluate.py --checkpoint epoch_N``: ``whole/nll`` with
    ``whole/iw_samples`` importance samples), AIS (``ais/*``, as ``ais_rescoring``) and the inference gaps
    (``scripts/gaps.py --checkpoint epoch_N``: ``gaps/*``)."""
    checkpoint = f"epoch_{epoch}"
    found: dict[str, Any] = {}
    whole = run / f"evaluation_{checkpoint}.json"
    if whole.is_file():
        record = json.loads(whole.read_text())
        found.update({"whole/nll": record["test/nll"], "whole/iw_samples": record["test/iw_samples"]})
    found.update(ais_rescoring(run, checkpoint))
    found.update(gap_numbers(run / f"gaps_{checkpoint}.json"))
    return found


def gap_numbers(path: Path) -> dict[str, Any]:
    """The numbers of a gap analysis (``gaps*.json`` of ``scripts/gaps.py``) as ``gaps/*`` columns, without its
    settings and overrides; {} when there is none."""
    if not path.is_file():
        return {}
    return {f"gaps/{k}": v for k, v in json.loads(path.read_text()).items() if not isinstance(v, (dict, list))}


def load_runs(sweep_dir: str | Path) -> pd.DataFrame:
    """Every run below ``sweep_dir`` as one row: status, summary numbers, flattened config; sorted for reading."""
    root = Path(sweep_dir)
    rows = []
    for run in find_runs(root):
        summary_path = run / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        # re-scorings written later (scripts/gaps.py, scripts/evaluate.py) beside a summary they never rewrite
        summary = {**gap_numbers(run / "gaps.json"), **ais_rescoring(run), **summary}
        rows.append(run_row(summary, run_config(run, summary), run=str(run.relative_to(root)) or ".", run_dir=str(run)))
    if not rows:
        raise FileNotFoundError(f"no runs under {root}: expected folders holding summary.json or .hydra/config.yaml")
    return sort_runs(pd.DataFrame(rows))


def sort_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Baseline first, then methods alphabetically; within a method by seed."""
    order = runs["method"].map(lambda m: (m != BASELINE, str(m)))
    return (runs.assign(_order=order).sort_values(["dataset", "_order", "seed"], kind="stable")
            .drop(columns="_order").reset_index(drop=True))


def completed(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "completed"]


def not_completed(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs left out of every average: failed, interrupted or unfinished, with the reason when known."""
    columns = [c for c in ("run", "dataset", "method", "seed", "status", "error") if c in runs]
    return runs.loc[runs["status"] != "completed", columns]


def group_keys(runs: pd.DataFrame, include_unfinished: bool = False) -> list[str]:
    """``dataset``, ``method`` and the config keys the sweep varied within a (dataset, method) pair: among the
    completed runs (what the tables average), or with ``include_unfinished`` among all (what the budget curves of
    runs still training show)."""
    base = ["dataset", "method"]
    done = runs if include_unfinished else completed(runs)
    keys = list(base)
    for column in runs.columns:
        key = column.removeprefix(CONFIG)
        if key == column or in_sections(key, NOT_A_FACTOR) or key.startswith("posterior."):
            continue  # not a config key, not a factor, or a posterior option (part of the method label)
        if done.groupby(base, dropna=False)[column].nunique(dropna=False).max() > 1:
            keys.append(column)  # keys that vary together are all named: a reader sees what else changed with it
    return keys


def summarize(runs: pd.DataFrame, keys: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and sd over seeds of every metric in ``METRICS``, per group of completed runs; ``n`` counts seeds."""
    keys = list(keys or group_keys(runs))
    done = completed(runs)
    metrics = [m for m in METRICS if m in done]
    grouped = done.groupby(keys, dropna=False, sort=False)
    table = grouped.size().rename("n").to_frame()
    for metric in metrics:
        values = grouped[metric].agg(["mean", "std"])
        table[f"{metric} mean"], table[f"{metric} sd"] = values["mean"], values["std"]
    return table.reset_index()


def _as_text(value: Any) -> str:
    """A config value as a command line writes it (``1`` for 1.0), to match a ``--baseline KEY=VALUE``."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


class UnknownBaseline(ValueError):
    """A ``--baseline`` that selects nothing these runs could be paired against."""


def baseline_runs(runs: pd.DataFrame, keys: Sequence[str], baseline: str) -> tuple[str, pd.Series]:
    """The column that ``baseline`` selects in and which of ``runs`` it selects: a method name (``diag``) picks that
    method's runs; ``KEY=VALUE`` picks, within each method, the runs with config key ``KEY`` at ``VALUE``
    (``trainer.precision=float32``), for a key the sweep varied. Raises ``UnknownBaseline`` for a key it did not
    vary."""
    if "=" not in baseline:
        return "method", runs["method"] == baseline
    key, value = (part.strip() for part in baseline.split("=", 1))
    column = CONFIG + key
    if column not in keys:
        varied = [k.removeprefix(CONFIG) for k in keys if k.startswith(CONFIG)]
        raise UnknownBaseline(f"--baseline {baseline}: {key} is not a config key these runs vary; varied: "
                              f"{', '.join(varied) or 'none'}")
    return column, runs[column].map(_as_text) == value


def require_baseline(runs: pd.DataFrame, keys: Sequence[str], baseline: str) -> None:
    """``UnknownBaseline`` when ``baseline`` (``baseline_runs``) selects none of the completed ``runs``: a baseline the
    user named must select something (the default, ``diag``, may be absent from a sweep)."""
    done = completed(runs)
    if done.empty:
        return
    column, chosen = baseline_runs(done, keys, baseline)
    if chosen.any():
        return
    if column == "method":
        raise UnknownBaseline(f"--baseline {baseline}: no completed run is that; methods here: "
                              f"{', '.join(done['method'].unique())}")
    values = ", ".join(dict.fromkeys(done[column].map(_as_text)))
    raise UnknownBaseline(f"--baseline {baseline}: no completed run has that value; "
                          f"{column.removeprefix(CONFIG)} here: {values}")


def paired_differences(runs: pd.DataFrame, keys: Sequence[str] | None = None, baseline: str = BASELINE,
                       metrics: Iterable[str] = PAIRED_METRICS, confidence: float = 0.95) -> pd.DataFrame:
    """Each group minus its ``baseline`` on the same dataset, other factors and seed: mean, sd and a t interval.

    ``baseline`` is a method (every other method against it) or ``KEY=VALUE`` (``baseline_runs``: each method's runs
    at another value of KEY against its own at VALUE, as a precision or an option is checked). Only seeds completed
    by both enter; ``n`` says how many (groups without any are left out). With one seed the interval is undefined
    (NaN).
    """
    keys = list(keys or group_keys(runs))
    done = completed(runs)
    column, is_base = baseline_runs(done, keys, baseline)
    context = [k for k in keys if k != column]
    base = done[is_base]
    rows = []
    for metric in [m for m in metrics if m in done and done[m].notna().any()]:
        for group, others in done[~is_base].groupby(keys, dropna=False, sort=False):
            where = dict(zip(keys, group))
            match = base
            for k in context:
                match = match[match[k].isna()] if pd.isna(where[k]) else match[match[k] == where[k]]
            diff = seed_differences(others, match, metric)
            if len(diff):  # else no baseline run on the same dataset, factors and seeds: nothing to compare
                rows.append({**where, "metric": metric, "baseline": baseline, **difference_stats(diff, confidence)})
    return pd.DataFrame(rows)


def seed_differences(runs: pd.DataFrame, reference: pd.DataFrame, metric: str) -> pd.Series:
    """``metric`` of ``runs`` minus that of ``reference`` on the same seed, for the seeds both have a value for."""
    pairs = runs[["seed", metric]].merge(reference[["seed", metric]], on="seed", suffixes=("", "_reference"))
    return (pairs[metric] - pairs[f"{metric}_reference"]).dropna()


def difference_stats(diff: pd.Series, confidence: float = 0.95) -> dict[str, float]:
    """n, mean, sd, the t interval of the mean and the seeds a 0.5-nat difference needs, for paired differences."""
    n = len(diff)
    mean = diff.mean()
    sd = diff.std() if n > 1 else math.nan
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "mean": mean, "sd": sd, "ci_low": mean - half, "ci_high": mean + half,
            "seeds_for_0_5": seeds_needed(sd)}


def interval_text(mean: float, low: float, high: float) -> str:
    """A difference as the tables show it: ``+0.12 [-0.30, +0.54]``, the mean alone where there is no interval."""
    return f"{mean:+.2f}" + ("" if pd.isna(low) else f" [{low:+.2f}, {high:+.2f}]")


def difference_text(diff: pd.Series) -> str:
    """Paired differences as a table shows them: ``mean [95% t interval] (n)``, no interval for one seed."""
    if len(diff) == 0:
        return "no common seed"
    d = difference_stats(diff)
    return f"{interval_text(d['mean'], d['ci_low'], d['ci_high'])} ({d['n']})"


class AmbiguousPairing(ValueError):
    """Two sweeps cannot be paired run for run: a method meets several candidates in the other sweep."""


def method_counterparts(runs: pd.DataFrame, reference: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(dataset, method) of ``runs`` -> the method of ``reference`` it pairs with: the same label, else the one
    method of the same posterior that no label matched (a tuned ``planar[flow_length=8]`` meets ``planar``)."""
    pairs = {}
    for dataset, ours in runs.groupby("dataset", sort=False):
        theirs = reference[reference["dataset"] == dataset]
        our_methods = dict(zip(ours["method"], ours["posterior"]))
        their_methods = dict(zip(theirs["method"], theirs["posterior"]))
        pairs.update({(dataset, m): m for m in our_methods if m in their_methods})
        left = {m: p for m, p in their_methods.items() if m not in our_methods}
        for method, posterior in our_methods.items():
            if method in their_methods:
                continue
            candidates = [m for m, p in left.items() if p == posterior]
            if len(candidates) > 1:
                raise AmbiguousPairing(f"{dataset} {method}: the other sweep has {', '.join(candidates)} of posterior "
                                       f"{posterior} and none labelled {method}; pair sweeps whose methods match")
            if candidates:
                pairs[(dataset, method)] = candidates[0]
    return pairs


def paired_between(runs: pd.DataFrame, reference: pd.DataFrame, reference_name: str,
                   metrics: Iterable[str] = PAIRED_METRICS, confidence: float = 0.95) -> pd.DataFrame:
    """Each (dataset, method) of ``runs`` minus its counterpart in another sweep, ``reference``, seed by seed: a sweep
    against its rerun with other settings (tuned against untuned, a new commit or machine against the old). Methods
    pair as ``method_counterparts`` says; the rows name both. Only seeds completed in both enter."""
    ours, theirs = completed(runs), completed(reference)
    for name, frame in (("this sweep", ours), (reference_name, theirs)):
        repeated = frame[frame.duplicated(["dataset", "method", "seed"], keep=False)]
        if not repeated.empty:
            first = repeated.iloc[0]
            raise AmbiguousPairing(f"{name} has several runs of {first['method']} on {first['dataset']}, seed "
                                   f"{first['seed']} (a sweep over another key): pair sweeps with one run per method, "
                                   "dataset and seed")
    rows = []
    for (dataset, method), counterpart in method_counterparts(ours, theirs).items():
        mine = ours[(ours["dataset"] == dataset) & (ours["method"] == method)]
        other = theirs[(theirs["dataset"] == dataset) & (theirs["method"] == counterpart)]
        for metric in [m for m in metrics if m in mine and m in other]:
            diff = seed_differences(mine, other, metric)
            if len(diff):
                rows.append({"dataset": dataset, "method": method, "reference method": counterpart,
                             "metric": metric, "baseline": reference_name, **difference_stats(diff, confidence)})
    return pd.DataFrame(rows)


def seeds_needed(sd: float, difference: float = 0.5, confidence: float = 0.95, power: float = 0.8,
                 most: int = 200) -> float:
    """How many seeds a paired comparison needs to find a true ``difference`` (nats) with probability ``power``, when
    per-seed differences spread with standard deviation ``sd``: the smallest n whose two-sided paired t-test at
    ``confidence`` has that power (noncentral t). NaN when ``sd`` is unknown (one seed), inf beyond ``most``."""
    if not sd > 0:
        return math.nan if pd.isna(sd) else 2.0
    for n in range(2, most + 1):
        critical = stats.t.ppf(0.5 + confidence / 2, n - 1)
        shift = difference / (sd / math.sqrt(n))
        reached = stats.nct.sf(critical, n - 1, shift) + stats.nct.cdf(-critical, n - 1, shift)
        if reached >= power:
            return float(n)
    return math.inf


def load_histories(runs: pd.DataFrame, keys: Sequence[str] | None = None) -> pd.DataFrame:
    """``metrics.jsonl`` of every completed run, one row per epoch, with the run's group keys and seed."""
    keys = list(keys or group_keys(runs))
    frames = []
    for _, run in completed(runs).iterrows():
        path = Path(run["run_dir"]) / "metrics.jsonl"
        if path.is_file():
            epochs = pd.read_json(path, lines=True)
            frames.append(epochs.assign(**{k: run[k] for k in keys}, seed=run["seed"], run=run["run"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*keys, "seed", "run", "epoch"])


def factors_text(run: pd.Series, keys: Sequence[str]) -> str:
    """The run's values of the group ``keys`` other than dataset and method (``trainer.kl_warmup_epochs=10``): what
    a run must share with its baseline to be paired with it."""
    return " ".join(f"{k.removeprefix(CONFIG)}={_as_text(run[k])}" for k in keys if k not in ("dataset", "method"))


def load_milestones(runs: pd.DataFrame, keys: Sequence[str] | None = None) -> pd.DataFrame:
    """``milestones.jsonl`` of every run that has one, finished or still training (a budget curve grows while its
    runs do), one row per milestone epoch, with the run's group keys (by default those that vary among all the runs,
    unfinished ones included), seed and status, ``group``: the method with the other keys' values
    (``diag objective.iw_samples=5``; ``factors``: those values alone), what a budget curve is drawn per, the
    training time up to that epoch
    (``train_hours``, ``epoch_s`` its mean per epoch; evaluations not counted) and what was measured on the
    milestone's model since (``milestone_rescorings``)."""
    keys = list(keys or group_keys(runs, include_unfinished=True))
    frames = []
    for _, run in runs.iterrows():
        path = Path(run["run_dir"]) / "milestones.jsonl" if run.get("run_dir") else None
        if path is not None and path.is_file() and path.stat().st_size:
            rows = pd.read_json(path, lines=True)
            factors = factors_text(run, keys)
            group = f"{run['method']} {factors}".strip()
            extra = pd.DataFrame([{**spent, **milestone_rescorings(path.parent, epoch)} for epoch, spent in
                                  zip(rows["epoch"], training_time(path.parent, rows["epoch"]))], index=rows.index)
            frames.append(pd.concat([rows, extra], axis=1).assign(
                **{k: run[k] for k in keys}, group=group, factors=factors, seed=run["seed"], run=run["run"],
                status=run["status"]))
    return (pd.concat(frames, ignore_index=True) if frames
            else pd.DataFrame(columns=[*keys, "group", "factors", "seed", "run", "epoch"]))


def training_time(run: Path, epochs: Iterable[int]) -> list[dict[str, float]]:
    """For each of ``epochs``, the hours of training up to its end (the ``epoch_s`` of ``metrics.jsonl``, read once;
    an epoch repeated after a resume counts once, as last written) and the mean seconds per epoch; {} for an epoch
    without metrics."""
    path = run / "metrics.jsonl"
    recorded = (pd.read_json(path, lines=True).drop_duplicates("epoch", keep="last")
                if path.is_file() and path.stat().st_size else pd.DataFrame(columns=["epoch", "epoch_s"]))
    times = []
    for epoch in epochs:
        spent = recorded.loc[recorded["epoch"] <= epoch, "epoch_s"]
        times.append({"train_hours": spent.sum() / 3600, "epoch_s": spent.mean()} if len(spent) else {})
    return times


def budget_table(milestones: pd.DataFrame, metric: str = "test/nll") -> pd.DataFrame:
    """``metric`` at each milestone epoch: one row per epoch, one column per (dataset, group), the mean over the
    seeds that reached it (runs still training included, so a curve can be read while it grows)."""
    columns = [k for k in ("dataset", "group" if "group" in milestones else "method") if k in milestones]
    table = milestones.pivot_table(index="epoch", columns=columns, values=metric, aggfunc="mean")
    table.columns = [" ".join(str(part) for part in column) if isinstance(column, tuple) else str(column)
                     for column in table.columns]
    return table.reset_index()


def milestone_differences(milestones: pd.DataFrame, baseline: str = BASELINE, metric: str = "test/nll") -> pd.DataFrame:
    """Each run's ``metric`` at each milestone minus that of the ``baseline`` run trained the same way (the same
    dataset, seed and values of every other key the runs vary: ``factors``) at the same epoch: one row per pair
    (dataset, group, method, factors, epoch, seed, difference). Milestones without a seed column pair nothing."""
    columns = ["dataset", "group", "method", "factors", "epoch", "seed", "difference"]
    if "seed" not in milestones or metric not in milestones:
        return pd.DataFrame(columns=columns)
    frame = milestones.assign(**{k: milestones.get(k, "") for k in ("dataset", "factors") if k not in milestones})
    frame = frame.assign(group=frame["group"] if "group" in frame else frame["method"])
    on = ["dataset", "factors", "epoch", "seed"]
    pairs = frame.loc[frame["method"] != baseline, [*on, "group", "method", metric]].merge(
        frame.loc[frame["method"] == baseline, [*on, metric]], on=on, suffixes=("", "_baseline"))
    pairs["difference"] = pairs[metric] - pairs[f"{metric}_baseline"]
    return pairs.dropna(subset=["difference"])[columns].reset_index(drop=True)


def milestone_table(milestones: pd.DataFrame, baseline: str = BASELINE, from_epoch: int = 0) -> pd.DataFrame:
    """One row per milestone epoch (from ``from_epoch`` on) and (dataset, group) of ``load_milestones``' output:
    seeds, the milestone NLL (mean ± sd over seeds) and its paired difference from ``baseline`` on the same dataset,
    epoch, seed and other factors (95% t interval where there are several seeds), the milestone's active units (where
    recorded), then, where measured on the milestone's model,
    the whole test set's NLL, AIS with the IW estimate's excess over it, and the inference gaps; training seconds
    per epoch and hours to that epoch. Columns nothing was measured for are left out."""
    rows = []
    scored = milestones[milestones["epoch"] >= from_epoch]
    columns = [k for k in ("dataset", "group") if k in scored]
    differences = dict(list(milestone_differences(scored, baseline).groupby(["epoch", *columns])["difference"]))
    for (epoch, *key), group in scored.groupby(["epoch", *columns], sort=True):
        where = dict(zip(columns, key))
        images, samples = group["n_images"].iloc[0], group["test/iw_samples"].iloc[0]
        row = {"epoch": epoch, **where, "seeds": len(group),
               f"NLL ({images:,} images, K = {samples})": _mean_sd(group["test/nll"].mean(), group["test/nll"].std(),
                                                                   2, "±")}
        # the baseline trained the same way: the same values of every other key the runs vary (factors)
        factors = group["factors"].iloc[0]
        reference = scored[(scored["epoch"] == epoch) & (scored["method"] == baseline)
                           & (scored["dataset"] == where.get("dataset")) & (scored["factors"] == factors)]
        if (group["method"] == baseline).all():
            row[f"vs {baseline}"] = "baseline"
        elif reference.empty:
            row[f"vs {baseline}"] = f"no {baseline} run{' with ' + factors if factors else ''} at this epoch"
        else:
            row[f"vs {baseline}"] = difference_text(differences.get((epoch, *key), pd.Series(dtype=float)))
        for metric, title in (("test/active_units", "active units"), ("whole/nll", "NLL (whole test set, K = {})"),
                              ("ais/nll", "AIS NLL ({} images)"), ("ais/iw_minus_ais", "IW - AIS"),
                              ("gaps/approximation_gap", "approximation gap"),
                              ("gaps/amortization_gap", "amortization gap")):
            if metric in group and group[metric].notna().any():
                size = {"whole/nll": "whole/iw_samples", "ais/nll": "ais/n_images"}.get(metric)
                label = title.format(int(group[size].dropna().iloc[0])) if size else title
                values = group[metric].dropna()
                row[label] = _mean_sd(values.mean(), values.std(), 0 if metric == "test/active_units" else 2, "±") + (
                    "" if len(values) == len(group) else f" ({len(values)} seed{'s' if len(values) > 1 else ''})")
        if "train_hours" in group:
            row["s/epoch"] = f"{group['epoch_s'].mean():.1f}"
            row["hours"] = f"{group['train_hours'].mean():.1f}"
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    timing = [c for c in ("s/epoch", "hours") if c in table]
    columns = [c for c in table if c not in timing and c != "active units"]
    if "active units" in table:  # beside the milestone's own NLL, which it was measured with
        columns.insert(columns.index(f"vs {baseline}") + 1, "active units")
    return table[columns + timing].fillna("not measured")


def furthest_paired_stage(milestones: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """The rows of ``load_milestones``' output at the furthest epoch (per dataset) at which some posterior is paired
    with ``baseline`` trained the same way (``milestone_differences``): the stage at which the posteriors can be set
    side by side furthest into training. Runs alone at a later epoch, or there only with other baseline runs, are
    left out, since nothing there compares with them."""
    pairs = milestone_differences(milestones, baseline)
    if pairs.empty:
        return milestones.iloc[0:0]
    furthest = pairs.groupby("dataset")["epoch"].max()
    dataset = milestones["dataset"] if "dataset" in milestones else pd.Series("", index=milestones.index)
    return milestones[milestones["epoch"] == dataset.map(furthest)]


def stage_gaps(milestones: pd.DataFrame) -> pd.DataFrame:
    """The inference gaps measured on milestone models (``scripts/gaps.py --checkpoint epoch_N``) as
    ``summarize`` shows a run's own: one row per dataset, epoch and group, ``method`` naming both (``fullcov,
    epoch 121``), mean and sd over seeds; what ``plots.gap_bars`` draws. Empty when none was measured."""
    gaps = ["gaps/approximation_gap", "gaps/amortization_gap"]
    if gaps[0] not in milestones:
        return pd.DataFrame()
    measured = milestones[milestones[gaps[0]].notna()]
    columns = [k for k in ("dataset", "epoch", "group") if k in measured]
    table = measured.groupby(columns, sort=True)[gaps].agg(["mean", "std"])
    table.columns = [f"{metric} {'sd' if stat == 'std' else stat}" for metric, stat in table.columns]
    table = table.reset_index()
    table["method"] = [f"{g}, epoch {e}" for g, e in zip(table["group"], table["epoch"])]
    table["n"] = measured.groupby(columns, sort=True).size().to_numpy()
    return table


PROVENANCE = "provenance."  # prefix of the provenance columns (rhovae/provenance.py)


def provenance_differences(runs: pd.DataFrame) -> dict[str, list[Any]]:
    """What the completed runs of a table ran on, where they differ: ``{"provenance.torch": ["2.13.0", "2.14.1"]}``.
    Thread counts and git state are included: each can move a number by as much as a change of seed."""
    done = completed(runs)
    columns = [c for c in done.columns if c.startswith(PROVENANCE)]
    return {c: sorted(done[c].dropna().astype(str).unique()) for c in columns if done[c].astype(str).nunique() > 1}


# The settings that make a table's budget, shown above it: how long runs trained and how the numbers were estimated.
BUDGET_KEYS = {"epochs": "epochs trained", "config.trainer.max_batches": "batches per epoch (null: all)",
               "config.trainer.batch_size": "batch size", "test/iw_samples": "K (test NLL)",
               "gaps/n_images": "gap images", "config.dataset.binarize": "binarization",
               "config.tuned": "tuned with (scripts/tune.py study database)", "ais/n_images": "AIS test images",
               "ais/steps": "AIS steps", "ais/chains": "AIS chains", "ais/start": "AIS start",
               "ais/iw_samples": "K of the IW NLL on the AIS images"}


def budget(runs: pd.DataFrame) -> tuple[dict[str, str], bool]:
    """The budget settings of the completed runs, each as one value or the distinct values when runs differ, and
    whether it is a smoke run (``trainer.max_batches`` set: a fraction of every epoch)."""
    done = completed(runs)
    shown = {}
    for column, title in BUDGET_KEYS.items():
        if column in done and done[column].notna().any():
            values = sorted({str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
                             for v in done[column].dropna()})
            shown[title] = values[0] if len(values) == 1 else "differs: " + ", ".join(values)
    smoke = "config.trainer.max_batches" in done and done["config.trainer.max_batches"].notna().any()
    return shown, bool(smoke)


def load_wandb_runs(project: str, entity: str | None = None, tags: Sequence[str] = (), api: Any = None) -> pd.DataFrame:
    """The run table of a W&B project (optionally only runs with all of ``tags``), in ``load_runs``' columns.

    Needs ``wandb login``; ``api`` replaces ``wandb.Api()`` (tests pass a stand-in).
    """
    if api is None:
        import wandb

        api = wandb.Api()
    path = f"{entity}/{project}" if entity else project
    filters = {"tags": {"$all": list(tags)}} if tags else None
    rows = []
    for run in api.runs(path, filters=filters):
        summary = {k: v for k, v in dict(run.summary).items() if not str(k).startswith("_")}
        summary.setdefault("status", "completed" if run.state == "finished" else run.state)
        rows.append(run_row(summary, dict(run.config), run=run.name, run_dir=None, wandb_id=run.id))
    if not rows:
        raise LookupError(f"no W&B runs in {path}" + (f" with tags {list(tags)}" if tags else ""))
    return sort_runs(pd.DataFrame(rows))


# ---- tables as text ------------------------------------------------------------------------------------------


def _mean_sd(mean: float, sd: float, digits: int, pm: str) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if pd.isna(sd) else f"{mean:.{digits}f} {pm} {sd:.{digits}f}"


def display_table(table: pd.DataFrame, pm: str = "±") -> pd.DataFrame:
    """``summarize``'s output as strings, ``mean ± sd`` per metric, for Markdown and LaTeX."""
    keys = [c for c in table.columns if not c.endswith((" mean", " sd"))]  # the group keys and n
    shown = table[keys].copy()
    for metric, (title, digits) in METRICS.items():
        if f"{metric} mean" in table:
            shown[title] = [_mean_sd(m, s, digits, pm) for m, s in zip(table[f"{metric} mean"], table[f"{metric} sd"])]
    return shown


def display_differences(diffs: pd.DataFrame) -> pd.DataFrame:
    """``paired_differences``' output as strings: ``mean [low, high]`` with n."""
    if diffs.empty:
        return diffs
    shown = diffs.drop(columns=["mean", "sd", "ci_low", "ci_high", "baseline", "seeds_for_0_5"]).copy()
    shown["metric"] = [METRICS[m][0] for m in diffs["metric"]]
    interval = " [95% CI]" if diffs["ci_low"].notna().any() else ""  # one seed: no interval to show
    shown[f"difference vs {diffs['baseline'].iloc[0]}{interval}"] = [
        interval_text(m, lo, hi) for m, lo, hi in zip(diffs["mean"], diffs["ci_low"], diffs["ci_high"])]
    shown["seeds for 0.5 nats"] = ["n/a" if pd.isna(n) else (">200" if math.isinf(n) else str(int(n)))
                                   for n in diffs["seeds_for_0_5"]]
    return shown


def ais_table(runs: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """AIS against the importance-weighted estimate on the same images, per dataset and method, over the completed
    runs that have an AIS re-scoring (``n``): each estimate's mean ± sd, their difference (the IW estimate's bias,
    up to AIS's own), the BDMC gap where measured, and each estimate's paired difference from ``baseline`` (95% t
    interval over the seeds both have). Empty when no run was re-scored by AIS."""
    done = completed(runs)
    if "ais/nll" not in done:
        return pd.DataFrame()
    scored = done[done["ais/nll"].notna()]
    rows = []
    for (dataset, method), group in scored.groupby(["dataset", "method"], sort=False):
        row = {"dataset": dataset, "method": method, "n": len(group)}
        for metric in ("ais/nll", "ais/iw_nll", "ais/iw_minus_ais"):
            row[METRICS[metric][0]] = _mean_sd(group[metric].mean(), group[metric].std(), 2, "±")
        gap = group["ais/bdmc_gap"].dropna() if "ais/bdmc_gap" in group else pd.Series(dtype=float)
        row[METRICS["ais/bdmc_gap"][0]] = (f"{gap.mean():.2f} ({len(gap)} run{'s' if len(gap) > 1 else ''})"
                                           if len(gap) else "not measured")
        reference = scored[(scored["dataset"] == dataset) & (scored["method"] == baseline)]
        for metric, title in (("ais/nll", "AIS"), ("ais/iw_nll", "IW")):
            column = f"{title} vs {baseline} [95% CI] (n)"
            if method == baseline:
                row[column] = "baseline"
                continue
            row[column] = difference_text(seed_differences(group, reference, metric))
        rows.append(row)
    return pd.DataFrame(rows)


def platform(run: pd.Series) -> str:
    """What a run trained on, in a few words: the GPU, or the CPU and its thread count, and torch's version."""
    device = run.get(f"{PROVENANCE}device")
    if device == "cuda":
        return f"{run.get(f'{PROVENANCE}device_name')}, torch {run.get(f'{PROVENANCE}torch')}"
    threads = run.get(f"{PROVENANCE}threads")
    threads = "" if pd.isna(threads) else f", {int(threads)} thread{'s' if int(threads) > 1 else ''}"
    return f"{run.get(f'{PROVENANCE}cpu')}{threads}, torch {run.get(f'{PROVENANCE}torch')}"


def welch_text(a: pd.Series, b: pd.Series, confidence: float = 0.95) -> str:
    """``mean(b) - mean(a) [Welch t interval]``: the shift between two independent groups of seeds."""
    if len(a) < 2 or len(b) < 2:
        return "needs 2 seeds on each"
    va, vb = a.var() / len(a), b.var() / len(b)
    shift = b.mean() - a.mean()
    if va + vb == 0:  # every seed of both groups gives one value: the shift alone, no interval
        return interval_text(shift, math.nan, math.nan)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + confidence / 2, df) * math.sqrt(va + vb)
    return interval_text(shift, shift - half, shift + half)


def seed_list(seeds: Iterable[Any]) -> str:
    """Seeds as a reader scans them: ``0-4, 7``."""
    spans: list[list[int]] = []
    for seed in sorted(int(s) for s in seeds):
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def platform_table(runs: pd.DataFrame, metric: str = "test/nll", baseline: str = BASELINE) -> pd.DataFrame:
    """Whether seeds trained on different platforms (``platform``) tell one story: one row per dataset, method and
    platform with ``metric``'s mean ± sd and its difference from ``baseline`` paired over that platform's seeds,
    and, from the second platform on, the shift of the method's mean from the first platform's (the seeds differ,
    so its Welch interval holds seed noise and platform together; a paired difference from ``baseline`` cancels
    what a platform does to both)."""
    done = completed(runs)
    done = done[done[metric].notna()].assign(platform=lambda d: [platform(r) for _, r in d.iterrows()])
    first = done["platform"].iloc[0] if len(done) else None
    rows = []
    for (dataset, method), group in done.groupby(["dataset", "method"], sort=False):
        for name, here in group.groupby("platform", sort=False):
            reference = done[(done["dataset"] == dataset) & (done["method"] == baseline) & (done["platform"] == name)]
            row = {"dataset": dataset, "method": method, "platform": name, "seeds": seed_list(here["seed"]),
                   METRICS[metric][0]: _mean_sd(here[metric].mean(), here[metric].std(), 2, "±"),
                   f"vs {baseline} [95% CI] (n)": "baseline" if method == baseline else
                   difference_text(seed_differences(here, reference, metric)),
                   "shift from the first platform [95% CI]": "" if name == first else
                   welch_text(group[group["platform"] == first][metric], here[metric])}
            rows.append(row)
    return pd.DataFrame(rows)


def _run_records(runs: pd.DataFrame, pattern: str) -> list[tuple[pd.Series, dict[str, Any]]]:
    """Each run's JSON files matching ``pattern`` (re-scorings, BDMC) beside the run's row, in run order."""
    return [(run, json.loads(path.read_text())) for _, run in runs.iterrows() if run.get("run_dir")
            for path in sorted(Path(run["run_dir"]).glob(pattern))]


def ais_rescorings_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Every AIS re-scoring of every run (``evaluation*_ais*.json``), one row each: the run, the checkpoint, the
    initial distribution and schedule, AIS NLL with its Monte Carlo standard error, the IW estimate on the same
    images where it was made, and the seconds per image; what a check of the estimator's settings reads."""
    rows = []
    for run, record in _run_records(runs, "evaluation*_ais*.json"):
        settings = record["settings"]
        iw = record.get("ais/iw_nll")
        rows.append({"dataset": run["dataset"], "method": run["method"], "seed": run["seed"],
                     "checkpoint": record.get("checkpoint", "best"), "start": settings["start"],
                     "T": settings["steps"], "chains": settings["chains"], "images": record["ais/n_images"],
                     "AIS NLL": f"{record['ais/nll']:.2f}", "MC s.e.": f"{record['ais/nll_mc_se']:.3f}",
                     "IW NLL (same images)": "not made" if iw is None else f"{iw:.2f}",
                     "s per image": f"{record['ais/s_per_image']:.1f}"})
    return pd.DataFrame(rows)


def _checkpoint_order(checkpoint: str) -> tuple[int, str]:
    """Milestones by epoch (``epoch_121`` before ``epoch_1093``), after the run's own and named checkpoints."""
    epoch = checkpoint.removeprefix("epoch_")
    return (int(epoch), "") if epoch.isdigit() else (-1, checkpoint)


def ais_image_pairs(runs: pd.DataFrame, baseline: str = BASELINE, confidence: float = 0.95) -> pd.DataFrame:
    """Each AIS re-scoring that kept its per-image values (``per_image`` of ``scripts/evaluate.py --estimator ais``)
    against the ``baseline`` run's re-scoring of the same checkpoint, on the same dataset, seed, other factors
    (``factors_text``), test images and AIS schedule (``same_schedule``): the NLL difference image for image, by
    AIS and by the IW estimate on the same images, each as mean, sd and t interval over the images, and the
    difference of the two (how much the IW estimate moves the comparison). One row per pair: ``dataset``, ``group``,
    ``checkpoint``, ``seed``, ``images``, then ``{ais,iw,iw_minus_ais}_{mean,sd,ci_low,ci_high}``. The interval is
    over images (which images were drawn, and each image's chain noise), one seed's models: it says whether that
    pair of models differs on the test distribution, not whether another seed would give the same."""
    keys = group_keys(runs, include_unfinished=True)
    scored = []
    for run, record in _run_records(runs, "evaluation*_ais*.json"):
        if "per_image" in record:
            scored.append({"dataset": run["dataset"], "method": run["method"], "factors": factors_text(run, keys),
                           "seed": run["seed"], "checkpoint": record.get("checkpoint", "best"), "record": record})
    rows = []
    for one in scored:
        if one["method"] == baseline:
            continue
        mine = one["record"]
        for other in scored:
            theirs = other["record"]
            if (other["method"] != baseline
                    or any(other[k] != one[k] for k in ("dataset", "factors", "seed", "checkpoint"))
                    or theirs["ais/n_images"] != mine["ais/n_images"]
                    or not same_schedule(theirs["settings"], mine["settings"])):
                continue
            row = {"dataset": one["dataset"], "group": f"{one['method']} {one['factors']}".strip(),
                   "checkpoint": one["checkpoint"], "seed": one["seed"], "images": mine["ais/n_images"]}
            # NLL = -log p(x): a positive difference is the run behind its baseline
            differences = {"ais": np.subtract(theirs["per_image"]["ais_log_px"], mine["per_image"]["ais_log_px"])}
            if "iw_log_px" in mine["per_image"] and "iw_log_px" in theirs["per_image"]:
                differences["iw"] = np.subtract(theirs["per_image"]["iw_log_px"], mine["per_image"]["iw_log_px"])
                differences["iw_minus_ais"] = differences["iw"] - differences["ais"]
            for name, diff in differences.items():
                found = difference_stats(pd.Series(diff), confidence)
                row.update({f"{name}_{k}": found[k] for k in ("mean", "sd", "ci_low", "ci_high")})
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    order = table["checkpoint"].map(_checkpoint_order)
    return (table.assign(_order=order).sort_values(["dataset", "_order", "group", "seed"], kind="stable")
            .drop(columns="_order").reset_index(drop=True))


def display_image_pairs(pairs: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """``ais_image_pairs`` as a table shows it: each difference as ``mean [95% interval]``."""
    if pairs.empty:
        return pairs
    shown = pairs[["dataset", "group", "checkpoint", "seed", "images"]].copy()
    for name, title in (("ais", f"AIS vs {baseline}"), ("iw", f"IW vs {baseline} (same images)"),
                        ("iw_minus_ais", "IW - AIS, of the difference")):
        if f"{name}_mean" in pairs:
            shown[title] = ["not made" if pd.isna(m) else interval_text(m, lo, hi) for m, lo, hi in
                            zip(pairs[f"{name}_mean"], pairs[f"{name}_ci_low"], pairs[f"{name}_ci_high"])]
    return shown


def bdmc_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Every BDMC measurement (``bdmc*.json`` of ``scripts/bdmc.py``), one row each, by run and number of steps T:
    the forward (stochastic lower) and reverse (upper) bounds of log p(x) on data simulated from the model, their
    gap (the bound on forward AIS's error with that schedule) and its standard error."""
    rows = [{"dataset": run["dataset"], "method": run["method"], "seed": run["seed"],
             "checkpoint": record["checkpoint"], "T": record["steps"], "images": record["n_images"],
             "forward (lower)": f"{record['log_px_lower']:.2f}", "reverse (upper)": f"{record['log_px_upper']:.2f}",
             "gap": f"{record['gap']:.2f}", "gap s.e.": f"{record['gap_se']:.2f}"}
            for run, record in _run_records(runs, "bdmc*.json")]
    table = pd.DataFrame(rows)
    return table.sort_values(["dataset", "method", "seed", "checkpoint", "T"], kind="stable") if rows else table


def _latex_escape(text: Any) -> str:
    escaped = str(text).replace("\\", r"\textbackslash{}")
    for char in "_%&#$":
        escaped = escaped.replace(char, "\\" + char)
    return escaped.replace("±", r"$\pm$")


def to_latex(frame: pd.DataFrame) -> str:
    escaped = frame.map(_latex_escape).rename(columns=_latex_escape)
    return escaped.to_latex(index=False, escape=False, column_format="l" * len(frame.columns))
