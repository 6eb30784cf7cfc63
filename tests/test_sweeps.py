"""Sweeps end to end: experiment and launcher configs, real joblib multiruns, the results table and the notebook."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from omegaconf import OmegaConf

from helpers import REPO, TINY_OVERRIDES, compose, load_script, subprocess_env, train
from rhovae import results
from rhovae.config import validate_config
from rhovae.config import load_config
from rhovae.build import build_vae

SWEEP_OVERRIDES = [*TINY_OVERRIDES, "logger=none", "trainer.epochs=2", "trainer.milestones=[1,2]",
                   "eval.milestone_images=30", "eval.milestone_iw_samples=10"]
T_975_ONE_DOF = 12.7062047  # Student t quantile 0.975 with 1 degree of freedom, from tables


def summaries(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]


def summarize(sweep: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "summarize.py"), str(sweep)], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_sweep(data_root, tmp_path_factory) -> Path:
    """A real 4-job sweep (2 seeds x diag, rho) with the joblib launcher, 2 jobs at a time."""
    out = tmp_path_factory.mktemp("sweeps") / "tiny"
    proc = train(["-m", "launcher=joblib", "seed=0,1", "posterior=diag,rho", f"dataset.root={data_root}",
                  *SWEEP_OVERRIDES, f"hydra.sweep.dir={out}"], cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_paper_experiment_fixes_the_setup_and_sweeps_fifty_runs():
    cfg = compose(["experiment=paper"], hydra=True)
    params = cfg.hydra.sweeper.params
    assert params.seed == "0,1,2,3,4" and params.dataset == "mnist,fmnist"
    assert params.posterior == "diag,rho,fullcov,planar,iaf"
    assert (cfg.latent_dim, cfg.networks.name, cfg.eval.iw_samples) == (32, "mlp", 5000)
    assert "paper_" in cfg.hydra.sweep.dir


def test_paper_cpu_experiment_is_the_issue_budget_with_gaps():
    cfg = compose(["experiment=paper_cpu"], hydra=True)
    params = cfg.hydra.sweeper.params
    assert (params.seed, params.dataset, params.posterior) == ("0,1,2,3,4", "mnist,fmnist",
                                                                "diag,rho,fullcov,planar,iaf")
    assert (cfg.latent_dim, cfg.networks.name, cfg.trainer.epochs, cfg.eval.iw_samples) == (32, "mlp", 20, 1000)
    assert cfg.eval.gaps is True and cfg.gaps.n_images == 500 and "paper_cpu_" in cfg.hydra.sweep.dir
    validate_config(load_config(compose(["experiment=paper_cpu"])))


def test_bf16_training_pairs_the_two_precisions_at_the_paper_cpu_protocol():
    cfg = compose(["experiment=bf16_training"], hydra=True)
    params = cfg.hydra.sweeper.params
    assert (params.seed, params.dataset, params.posterior) == ("0,1,2", "mnist", "diag")
    assert params["trainer.precision"] == "float32,bfloat16"
    assert (cfg.latent_dim, cfg.networks.name, cfg.trainer.epochs, cfg.eval.iw_samples) == (32, "mlp", 20, 1000)
    assert cfg.eval.gaps is False and "bf16_training_" in cfg.hydra.sweep.dir
    assert "_${trainer.precision}_s${seed}" in OmegaConf.to_container(cfg.hydra.sweep)["subdir"]


def test_step_gradient_ablation_is_the_fullcov_ablation_protocol_over_the_flows():
    ablation = compose(["experiment=step_gradient_ablation"], hydra=True)
    fullcov = compose(["experiment=fullcov_ablation"], hydra=True)
    assert (ablation.hydra.sweeper.params.seed, ablation.hydra.sweeper.params.posterior) == ("0,1,2", "diag,planar,iaf")
    assert "step_gradient_ablation_" in ablation.hydra.sweep.dir
    for key in ("latent_dim", "networks", "dataset", "trainer", "eval"):
        assert ablation[key] == fullcov[key], key
    stopped = load_config(compose(["experiment=step_gradient_ablation", "posterior=iaf", "posterior.step_gradient=0"]))
    validate_config(stopped)
    assert stopped.posterior.step_gradient == 0 and stopped.trainer.epochs == 20 and stopped.eval.iw_samples == 500


def test_rho_paper_experiment_is_the_papers_setup():
    overrides = ["experiment=rho_paper", "posterior=rho_published_code"]
    assert compose(overrides, hydra=True).hydra.sweeper.params.posterior == "diag,rho,rho_published_code"
    cfg = compose(overrides)
    validate_config(load_config(cfg))
    assert (cfg.latent_dim, cfg.trainer.batch_size, cfg.trainer.lr, cfg.trainer.epochs) == (10, 128, 1e-3, 15)
    assert cfg.dataset.binarize == "none" and cfg.trainer.patience is None
    assert cfg.posterior.name == "rho" and cfg.posterior.variant == "published_code"
    model = build_vae(load_config(cfg), (1, 28, 28))
    assert type(model.posterior).__name__ == "PublishedCodeRhoPosterior"
    assert [m.weight.shape for m in model.encoder if isinstance(m, torch.nn.Linear)] == [(400, 784)]  # 784-400-z
    assert [m.weight.shape for m in model.decoder if isinstance(m, torch.nn.Linear)] == [(400, 10), (784, 400)]


def test_iwae_paper_experiment_is_the_papers_protocol_and_its_short_version_the_same_cut_short():
    cfg = compose(["experiment=iwae_paper"], hydra=True)
    assert cfg.hydra.sweeper.params["objective.iw_samples"] == "1,5,50"
    assert "_k${objective.iw_samples}_s${seed}" in OmegaConf.to_container(cfg.hydra.sweep)["subdir"]
    cfg = compose(["experiment=iwae_paper", "objective.iw_samples=5"])
    config = load_config(cfg)
    validate_config(config)
    model = build_vae(config, (1, 28, 28))
    linear = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert [m.weight.shape for m in linear] == [(200, 784), (200, 200)]  # 784-200-200-50, tanh
    assert all(isinstance(m, torch.nn.Tanh) for m in model.encoder if not isinstance(m, torch.nn.Linear))
    assert (cfg.latent_dim, cfg.trainer.batch_size, cfg.trainer.adam_eps, cfg.eval.iw_samples) == (50, 20, 1e-4, 5000)
    assert cfg.trainer.compile is True  # 1.30x per step at batch 20 (scripts/bench.py)
    assert sum(cfg.trainer.lr_stage_epochs) == cfg.trainer.epochs == 3280
    assert cfg.trainer.lr_stage_decay == pytest.approx(10 ** (-1 / 7))
    short = compose(["experiment=iwae_paper_short"])
    validate_config(load_config(short))
    same = ("latent_dim", "networks", "trainer.batch_size", "trainer.adam_eps", "trainer.lr", "dataset")
    assert all(OmegaConf.select(short, k) == OmegaConf.select(cfg, k) for k in same)
    assert short.trainer.epochs == 2 and short.trainer.max_batches == 100


def test_slurm_launcher_config_composes_with_an_installed_plugin():
    from hydra.utils import get_class

    cfg = compose(["launcher=slurm", "experiment=paper", "hydra.launcher.partition=gpu"], hydra=True)
    launcher = cfg.hydra.launcher
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.max_num_timeout >= 1
    assert cfg.trainer.resume is True  # a requeued job continues from last.pt
    assert launcher.submitit_folder == f"{cfg.hydra.sweep.dir}/.submitit/%j"  # logs stay with the sweep


def test_joblib_launcher_config_runs_one_thread_per_job():
    from hydra.utils import get_class

    launcher = compose(["launcher=joblib"], hydra=True).hydra.launcher
    assert get_class(launcher._target_).__name__ == "JoblibLauncher" and launcher.n_jobs == 2
    cfg = compose(["launcher=joblib"])
    assert cfg.trainer.threads == 1
    validate_config(load_config(cfg))


@pytest.mark.slow
def test_joblib_sweep_runs_every_job_in_its_own_folder(tiny_sweep):
    folders = sorted(p.name for p in tiny_sweep.iterdir() if p.is_dir())
    assert folders == ["0_mnist_diag_s0", "1_mnist_rho_s0", "2_mnist_diag_s1", "3_mnist_rho_s1"]
    found = summaries(tiny_sweep)
    assert [s["status"] for s in found] == ["completed"] * 4
    assert {(s["method"], s["seed"]) for s in found} == {("diag", 0), ("diag", 1), ("rho", 0), ("rho", 1)}
    assert {s["sweep"] for s in found} == {"tiny"}  # the W&B tag every run of the sweep shares


@pytest.mark.slow
def test_a_failing_job_is_recorded_and_the_other_finishes(data_root, tmp_path):
    """A real 2-job joblib multirun: lr = 1e30 goes NaN, lr = 1e-3 completes; the table lists the failure."""
    out = tmp_path / "sweep"
    proc = train(["-m", "launcher=joblib", "trainer.lr=1e30,1e-3", f"dataset.root={data_root}", *SWEEP_OVERRIDES,
                  f"hydra.sweep.dir={out}"], cwd=tmp_path)
    assert proc.returncode != 0  # Hydra reports the failed job once every job has run
    failed, done = (json.loads((out / f"{i}_mnist_diag_s0" / "summary.json").read_text()) for i in (0, 1))
    assert failed["status"] == "failed" and "non-finite loss" in failed["error"]
    assert done["status"] == "completed" and "test/elbo" in done
    proc = summarize(out)
    assert proc.returncode == 0, proc.stderr
    md = (out / "results.md").read_text()
    assert "1 of 2 runs completed" in md and "| 0_mnist_diag_s0 |" in md and "failed" in md
    assert "| mnist     | diag     |   1 |" in md  # the failed run is listed, not averaged in


@pytest.mark.slow
def test_summarize_matches_a_hand_computation(tiny_sweep, tmp_path):
    sweep = tmp_path / "tiny"
    shutil.copytree(tiny_sweep, sweep)
    killed = sweep / "4_mnist_rho_s2"  # a job killed before it wrote its summary
    shutil.copytree(sweep / "3_mnist_rho_s1", killed)
    (killed / "summary.json").unlink()
    for run in (killed, sweep / "0_mnist_diag_s0"):  # .hydra/ is not the run's record: what it says is ignored
        hydra_config = OmegaConf.load(run / ".hydra" / "config.yaml")
        hydra_config.posterior.name, hydra_config.dataset.root = "iaf", "${oc.env:RHOVAE_DATA,./data}"
        OmegaConf.save(hydra_config, run / ".hydra" / "config.yaml")
    proc = summarize(sweep)
    assert proc.returncode == 0, proc.stderr
    for name in ("csv", "md", "tex", "png"):
        assert (sweep / f"results.{name}").stat().st_size > 200, name
    assert (sweep / "budget.png").stat().st_size > 200  # NLL against epochs, from the runs' milestones

    runs = pd.read_csv(sweep / "results.csv")
    assert len(runs) == 5 and sorted(runs["status"]) == ["completed"] * 4 + ["unfinished"]
    assert "${" not in (sweep / "results.csv").read_text()  # the values the runs used, not interpolations
    # configs come from summary.json, or from the checkpoint of a run killed before it wrote one
    assert sorted(runs["config.posterior.name"]) == ["diag", "diag", "rho", "rho", "rho"]
    assert runs["config.dataset.root"].nunique() == 1 and "oc.env" not in runs["config.dataset.root"].iloc[0]
    md = (sweep / "results.md").read_text()
    assert "4 of 5 runs completed" in md and "4_mnist_rho_s2" in md and "unfinished" in md
    assert "## Test NLL at each milestone (first 30 test images, K = 10;" in md and "mnist diag" in md

    by = {(s["method"], s["seed"]): s for s in summaries(tiny_sweep)}
    for method in ("diag", "rho"):
        elbo = [by[method, seed]["test/elbo"] for seed in (0, 1)]
        nll = [by[method, seed]["test/nll"] for seed in (0, 1)]
        row = (f"| mnist     | {method:<8} |   2 | {statistics.mean(elbo):.2f} ± {statistics.stdev(elbo):.2f} | "
               f"{statistics.mean(nll):.2f} ± {statistics.stdev(nll):.2f} |")
        assert row in md, (row, md)
    diffs = [by["rho", seed]["test/nll"] - by["diag", seed]["test/nll"] for seed in (0, 1)]
    mean, half = statistics.mean(diffs), T_975_ONE_DOF * statistics.stdev(diffs) / math.sqrt(2)
    assert f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]" in md
    for baseline, message in (("lowrank", "no completed run is that; methods here: diag, rho"),
                              ("trainer.lr=0.001", "trainer.lr is not a config key these runs vary; varied: none")):
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "summarize.py"), str(sweep), "--baseline",
                               baseline], env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and proc.stderr == f"error: --baseline {baseline}: {message}\n", proc.stderr
    rerun = tmp_path / "rerun"  # the same sweep rerun, rho 0.5 and 1.5 nats worse in NLL: paired with --against
    shutil.copytree(sweep, rerun)
    for seed, shift in ((0, 0.5), (1, 1.5)):
        path = next(rerun.glob(f"*_mnist_rho_s{seed}")) / "summary.json"
        summary = json.loads(path.read_text())
        path.write_text(json.dumps({**summary, "test/nll": summary["test/nll"] + shift}))
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "summarize.py"), str(sweep), "--against",
                           str(rerun)], env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    md = (sweep / "results.md").read_text()
    half = T_975_ONE_DOF * statistics.stdev([-0.5, -1.5]) / math.sqrt(2)
    assert "## Paired differences against the sweep rerun" in md
    row = "| mnist     | rho      | rho                | test NLL  |   2 | "
    assert f"{row}-1.00 [{-1 - half:+.2f}, {-1 + half:+.2f}]" in md
    tex = (sweep / "results.tex").read_text()
    assert r"\toprule" in tex and r"$\pm$" in tex and "rho" in tex
    assert "**Smoke run**" in md and "epochs trained 2" in md and "K (test NLL) 20" in md  # the budget, said
    assert "seeds for 0.5 nats" in md


def test_seeds_needed_has_the_power_a_simulation_finds():
    """The paired power calculation against Monte Carlo: at the n it returns, a paired t-test finds a true 0.5-nat
    difference at least 80% of the time, and at n - 1 less often."""
    from scipy import stats

    rng = np.random.default_rng(0)
    sd = 0.4
    n = int(results.seeds_needed(sd, difference=0.5))

    def power(seeds: int) -> float:
        diffs = rng.normal(0.5, sd, size=(20_000, seeds))
        return float((stats.ttest_1samp(diffs, 0.0, axis=1).pvalue < 0.05).mean())

    assert power(n) >= 0.8 - 0.01 and power(n - 1) < 0.8
    assert math.isnan(results.seeds_needed(math.nan)) and results.seeds_needed(50.0) == math.inf


def test_budget_milestones_and_provenance_of_a_table(tmp_path):
    runs = []
    for method, epochs, torch_version in (("diag", 20, "2.14.1"), ("iaf", 20, "2.13.0")):
        run = tmp_path / method
        run.mkdir()
        for epoch, nll in ((10, 100.0), (20, 95.0)):
            row = {"epoch": epoch, "n_images": 2000, "test/nll": nll + (method == "iaf"), "test/iw_samples": 1000}
            with (run / "milestones.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
        runs.append({"status": "completed", "dataset": "mnist", "method": method, "seed": 0, "run": method,
                     "run_dir": str(run), "epochs": epochs, "test/iw_samples": 1000, "config.trainer.max_batches": None,
                     "provenance.torch": torch_version, "provenance.cpu": "same"})
    table = pd.DataFrame(runs)
    settings, smoke = results.budget(table)
    assert settings == {"epochs trained": "20", "K (test NLL)": "1000"} and not smoke
    assert results.provenance_differences(table) == {"provenance.torch": ["2.13.0", "2.14.1"]}
    milestones = results.load_milestones(table, ["dataset", "method"])
    assert sorted(zip(milestones["method"], milestones["epoch"], milestones["test/nll"])) == [
        ("diag", 10, 100.0), ("diag", 20, 95.0), ("iaf", 10, 101.0), ("iaf", 20, 96.0)]
    assert results.budget_table(milestones).to_dict("list") == {"epoch": [10, 20], "mnist diag": [100.0, 95.0],
                                                                "mnist iaf": [101.0, 96.0]}
    from rhovae.plots import budget_curves
    fig = budget_curves(milestones)
    assert "2000 test images, K = 1000" in fig._suptitle.get_text() and len(fig.axes[0].lines) >= 2


def test_budget_curves_of_runs_still_training_keep_the_factor_they_differ_in(tmp_path):
    """Two runs of diag that differ only in objective.iw_samples, neither finished (the IWAE paper's sweep part-way):
    the milestone table shows each, never their average."""
    rows = []
    for k, nll in ((1, 90.0), (5, 89.0)):
        run = tmp_path / f"k{k}"
        run.mkdir()
        (run / "milestones.jsonl").write_text(json.dumps({"epoch": 40, "n_images": 2000, "test/nll": nll}) + "\n")
        config = {"seed": 0, "posterior": {"name": "diag"}, "dataset": {"name": "mnist"},
                  "objective": {"iw_samples": k}}
        rows.append(results.run_row({}, config, run=run.name, run_dir=str(run)))
    runs = pd.DataFrame(rows)
    assert list(runs["status"]) == ["unfinished"] * 2 and results.group_keys(runs) == ["dataset", "method"]
    milestones = results.load_milestones(runs)
    assert results.budget_table(milestones).to_dict("list") == {
        "epoch": [40], "mnist diag objective.iw_samples=1": [90.0], "mnist diag objective.iw_samples=5": [89.0]}
    from rhovae.plots import budget_curves
    legend = budget_curves(milestones).axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["diag objective.iw_samples=1", "diag objective.iw_samples=5"]


def test_runs_of_an_older_version_are_read_in_todays_keys():
    row = results.run_row({"status": "completed", "method": "rho[variant=published_code]"},
                          {"decoder": {"name": "conv"}, "posterior": {"name": "rho", "variant": "published_code"}})
    assert row["config.networks.name"] == "conv" and "config.decoder.name" not in row
    assert row["method"] == "rho_published_code"  # labelled from the config, as today


def test_a_key_added_after_a_run_was_trained_reads_as_its_default_and_is_no_factor():
    summary = {"status": "completed", "dataset": "mnist", "seed": 0}
    before = {"posterior": {"name": "diag"}, "objective": {"iw_samples": 5}}  # saved before trainer.adam_betas
    after = {"posterior": {"name": "diag"}, "objective": {"iw_samples": 1}, "trainer": {"adam_betas": [0.9, 0.999]}}
    runs = pd.DataFrame([results.run_row(summary, config, run=str(i)) for i, config in enumerate((before, after))])
    assert list(runs["config.trainer.adam_betas"]) == ["[0.9, 0.999]"] * 2
    assert results.group_keys(runs) == ["dataset", "method", "config.objective.iw_samples"]


def test_keys_that_vary_together_are_all_named():
    summary = {"status": "completed", "dataset": "mnist", "seed": 0}
    runs = pd.DataFrame([results.run_row(summary, {"posterior": {"name": "diag"}, "latent_dim": d, "trainer": {"lr": lr}},
                                         run=str(d)) for d, lr in ((8, 1e-3), (16, 3e-4))])
    assert results.group_keys(runs) == ["dataset", "method", "config.latent_dim", "config.trainer.lr"]


def test_group_keys_follow_what_the_sweep_varied():
    def row(method, seed, latent_dim, status="completed", **posterior):
        summary = {"status": status, "dataset": "mnist", "method": method, "seed": seed, "test/elbo": -100.0 - seed}
        config = {"seed": seed, "latent_dim": latent_dim, "posterior": {"name": method, **posterior},
                  "trainer": {"threads": seed + 1}, "dataset": {"name": "mnist", "root": f"/data{seed}"}}
        return results.run_row(summary, config, run=f"{method}{seed}{latent_dim}")

    runs = pd.DataFrame([row("diag", s, d) for s in (0, 1) for d in (8, 16)]
                        + [row("planar", s, 8, flow_length=10) for s in (0, 1)] + [row("diag", 2, 99, "failed")])
    assert results.group_keys(runs) == ["dataset", "method", "config.latent_dim"]  # not seed, threads or root
    table = results.summarize(runs)
    assert list(table["n"]) == [2, 2, 2] and list(table["test/elbo mean"]) == [-100.5] * 3
    diffs = results.paired_differences(runs, metrics=["test/elbo"])
    assert len(diffs) == 1 and diffs.iloc[0]["config.latent_dim"] == 8 and diffs.iloc[0]["mean"] == 0.0
    against_planar = results.paired_differences(runs, baseline="planar", metrics=["test/elbo"])
    assert list(against_planar["method"]) == ["diag"]  # diag at latent_dim 8 is the one pair planar has
    assert "difference vs planar [95% CI]" in results.display_differences(against_planar)


def test_a_key_value_baseline_pairs_each_method_with_itself_at_that_value():
    """``--baseline trainer.precision=float32``: diag in bfloat16 minus diag in float32, planar minus planar, seed by
    seed; a key the runs did not vary is refused in one line."""
    def row(method, seed, precision, elbo):
        summary = {"status": "completed", "dataset": "mnist", "method": method, "seed": seed, "test/elbo": elbo}
        config = {"seed": seed, "posterior": {"name": method}, "trainer": {"precision": precision},
                  "dataset": {"name": "mnist"}}
        return results.run_row(summary, config, run=f"{method}{seed}{precision}")

    elbos = {("diag", "float32"): [-100.0, -101.0, -99.0], ("diag", "bfloat16"): [-100.5, -101.0, -99.9],
             ("planar", "float32"): [-102.0, -103.0, -104.0], ("planar", "bfloat16"): [-102.0, -102.0, -103.0]}
    runs = pd.DataFrame([row(m, s, p, v[s]) for (m, p), v in elbos.items() for s in range(3)])
    diffs = results.paired_differences(runs, baseline="trainer.precision=float32", metrics=["test/elbo"])
    assert list(zip(diffs["method"], diffs["config.trainer.precision"])) == [("diag", "bfloat16"),
                                                                              ("planar", "bfloat16")]
    for method, expected in (("diag", [-0.5, 0.0, -0.9]), ("planar", [0.0, 1.0, 1.0])):
        got = diffs[diffs["method"] == method].iloc[0]
        assert got["n"] == 3 and got["mean"] == pytest.approx(statistics.mean(expected))
        assert got["sd"] == pytest.approx(statistics.stdev(expected))
    assert "difference vs trainer.precision=float32 [95% CI]" in results.display_differences(diffs)
    with pytest.raises(results.UnknownBaseline, match=r"^--baseline latent_dim=8: latent_dim is not a config key "
                                                      r"these runs vary; varied: trainer.precision$"):
        results.paired_differences(runs, baseline="latent_dim=8")
    with pytest.raises(results.UnknownBaseline, match=r"^--baseline trainer.precision=float16: no completed run has "
                                                      r"that value; trainer.precision here: float32, bfloat16$"):
        results.require_baseline(runs, results.group_keys(runs), "trainer.precision=float16")
    results.require_baseline(runs, results.group_keys(runs), "trainer.precision=bfloat16")  # selects runs: no error


def test_the_platform_table_pairs_within_each_platform_and_measures_the_shift_between_them():
    """Seeds 0-2 on a GPU, 3-6 on a CPU: each platform's rows pair fullcov with diag over its own seeds, and the
    second platform's rows carry the Welch interval of the shift in mean (checked against scipy's ttest_ind)."""
    gpu = {"device": "cuda", "device_name": "NVIDIA H200", "torch": "2.11.0"}
    cpu = {"device": "cpu", "cpu": "AMD EPYC", "threads": 1, "torch": "2.14.1"}
    nll = {"diag": [92.6, 92.9, 92.8, 93.3, 93.2, 93.5, 93.1], "fullcov": [92.9, 93.0, 93.2, 93.0, 93.9, 93.1, 92.7]}

    def row(method, seed):
        summary = {"status": "completed", "dataset": "mnist", "method": method, "seed": seed,
                   "test/nll": nll[method][seed], "provenance": gpu if seed < 3 else cpu}
        return results.run_row(summary, {"seed": seed, "posterior": {"name": method}, "dataset": {"name": "mnist"}})

    table = results.platform_table(pd.DataFrame([row(m, s) for m in nll for s in range(7)]))
    assert list(zip(table["method"], table["platform"], table["seeds"])) == [
        ("diag", "NVIDIA H200, torch 2.11.0", "0-2"), ("diag", "AMD EPYC, 1 thread, torch 2.14.1", "3-6"),
        ("fullcov", "NVIDIA H200, torch 2.11.0", "0-2"), ("fullcov", "AMD EPYC, 1 thread, torch 2.14.1", "3-6")]
    assert list(table["test NLL"]) == [f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f}" for v in (
        nll["diag"][:3], nll["diag"][3:], nll["fullcov"][:3], nll["fullcov"][3:])]
    gpu_diff = [a - b for a, b in zip(nll["fullcov"][:3], nll["diag"][:3])]
    half = stats.t.ppf(0.975, 2) * statistics.stdev(gpu_diff) / math.sqrt(3)
    mean = statistics.mean(gpu_diff)
    assert table.iloc[2]["vs diag [95% CI] (n)"] == f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] (3)"
    assert table.iloc[3]["vs diag [95% CI] (n)"].endswith("(4)") and table.iloc[0]["vs diag [95% CI] (n)"] == "baseline"
    shift = stats.ttest_ind(nll["diag"][3:], nll["diag"][:3], equal_var=False)
    low, high = shift.confidence_interval()
    diff = statistics.mean(nll["diag"][3:]) - statistics.mean(nll["diag"][:3])
    assert table.iloc[1]["shift from the first platform [95% CI]"] == f"{diff:+.2f} [{low:+.2f}, {high:+.2f}]"
    assert table.iloc[0]["shift from the first platform [95% CI]"] == ""
    # seeds that reproduce one value on each platform: the shift, with no interval to print
    assert results.welch_text(pd.Series([92.0, 92.0]), pd.Series([92.5, 92.5])) == "+0.50"
    assert results.seed_list([7, 0, 1, 2, 4, 5]) == "0-2, 4-5, 7"


def test_two_sweeps_pair_method_by_method_and_seed_by_seed():
    """``--against``: a tuned sweep minus the untuned one, diag with diag and the tuned planar[flow_length=8] with
    plain planar, only over the seeds both completed; a reference with two candidates, or a sweep over another key,
    is refused in one line."""
    def row(method, seed, elbo, status="completed", **options):
        name = "sylvester" if method.startswith("sylvester") else method
        summary = {"status": status, "dataset": "mnist", "posterior": name, "seed": seed, "test/elbo": elbo}
        config = {"seed": seed, "posterior": {"name": name, **options}, "dataset": {"name": "mnist"}}
        return results.run_row(summary, config, run=f"{method}{seed}")

    untuned = pd.DataFrame([row("diag", s, -100.0 - s) for s in range(3)]
                           + [row("planar", s, -103.0) for s in range(3)])
    tuned = pd.DataFrame([row("diag", s, e) for s, e in enumerate((-99.0, -100.5, -101.0))]
                         + [row("planar", s, -102.0 + s, flow_length=8) for s in range(2)]
                         + [row("planar", 2, -90.0, status="failed", flow_length=8)])
    diffs = results.paired_between(tuned, untuned, "untuned", metrics=["test/elbo"])
    assert list(zip(diffs["method"], diffs["reference method"], diffs["n"])) == [
        ("diag", "diag", 3), ("planar[flow_length=8]", "planar", 2)]
    for method, expected in (("diag", [1.0, 0.5, 1.0]), ("planar[flow_length=8]", [1.0, 2.0])):
        got = diffs[diffs["method"] == method].iloc[0]
        assert got["mean"] == pytest.approx(statistics.mean(expected))
        assert got["sd"] == pytest.approx(statistics.stdev(expected))
    assert "difference vs untuned [95% CI]" in results.display_differences(diffs)

    two = pd.DataFrame([row("sylvester", 0, -100.0, variant="householder"), row("sylvester", 0, -101.0,
                                                                                variant="triangular")])
    with pytest.raises(results.AmbiguousPairing, match=r"^mnist sylvester: the other sweep has sylvester_householder, "
                                                       r"sylvester_triangular of posterior sylvester"):
        results.paired_between(pd.DataFrame([row("sylvester", 0, -99.0)]), two, "other")
    repeated = pd.DataFrame([row("diag", 0, -100.0), row("diag", 0, -101.0)])
    with pytest.raises(results.AmbiguousPairing, match=r"^this sweep has several runs of diag on mnist, seed 0"):
        results.paired_between(repeated, untuned, "untuned")


def test_wandb_runs_load_into_the_same_table():
    class FakeApi:
        def runs(self, path, filters=None):
            self.asked = (path, filters)
            config = {"seed": 0, "posterior": {"name": "rho", "variant": "published_code"},
                      "dataset": {"name": "fmnist"}}
            return [SimpleNamespace(name="a", id="x1", state="finished", config=config,
                                    summary={"status": "completed", "test/elbo": -90.0, "_step": 3}),
                    SimpleNamespace(name="b", id="x2", state="crashed", config={**config, "seed": 1}, summary={})]

    api = FakeApi()
    runs = results.load_wandb_runs("rhovae", "me", tags=["paper_x"], api=api)
    assert api.asked == ("me/rhovae", {"tags": {"$all": ["paper_x"]}})
    assert list(runs["status"]) == ["completed", "crashed"] and list(runs["seed"]) == [0, 1]
    assert set(runs["method"]) == {"rho_published_code"} and "_step" not in runs
    assert results.summarize(runs)["n"].tolist() == [1]


def readme_command(marker: str) -> str:
    """The README line that holds ``marker`` (inside a code block)."""
    lines = [line.split("  #")[0].strip() for line in (REPO / "README.md").read_text().splitlines() if marker in line]
    assert lines, f"README has no command with {marker!r}"
    return lines[0]


@pytest.mark.slow
def test_readme_notebook_command_renders_the_tiny_sweep_from_the_repository_root(tiny_sweep, tmp_path):
    """The README's report command, run as written from the repository root with a relative RHOVAE_SWEEP."""
    command = readme_command("jupyter nbconvert")
    relative = os.path.relpath(tiny_sweep, REPO)
    words = shlex.split(command.replace("outputs/multirun/<sweep>", relative))
    env_assignment, jupyter, *args = words
    assert env_assignment == f"RHOVAE_SWEEP={relative}" and jupyter == "jupyter"
    env = {**subprocess_env(), "PWD": str(tmp_path)}  # a shell elsewhere would say so; the repository is found
    proc = subprocess.run([sys.executable, "-m", "jupyter", *args], cwd=REPO, capture_output=True, text=True,
                          env={**env, "RHOVAE_SWEEP": relative, "RHOVAE_AGAINST": relative}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = (tiny_sweep / "results.html").read_text()
    assert "rho" in html and "diag" in html and "test NLL" in html and "Traceback" not in html
    assert f"difference vs {tiny_sweep.name}" in html and "+0.00 [+0.00, +0.00]" in html  # the sweep against itself
    assert html.count("data:image/png") >= 4  # 2 learning curves, NLL plot, samples
    assert "No description has been provided" not in html and "TqdmWarning" not in html  # alt text, ipywidgets
    assert not (REPO / "notebooks" / "results.html").exists()


@pytest.mark.slow  # W&B and jupytext start helper processes
def test_notebook_is_paired_with_its_script_and_stored_without_outputs():
    import jupytext

    notebook = jupytext.read(REPO / "notebooks" / "results.ipynb")
    script = jupytext.read(REPO / "notebooks" / "results.py")
    assert [(c.cell_type, c.source) for c in notebook.cells] == [(c.cell_type, c.source) for c in script.cells]
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_ais_rescorings_join_the_table_beside_the_iw_numbers_and_pair_against_diag(tmp_path):
    """Runs re-scored by AIS: the most accurate re-scoring from the prior of each run (most steps) is read, with the
    BDMC gap of the same schedule; AIS NLL and the IW NLL of the same images are averaged and paired against diag seed by seed."""
    ais_nll = {"diag": [90.0, 91.0, 92.0], "fullcov": [89.5, 91.0, 91.0]}
    settings = {"steps": 1000, "chains": 16, "start": "prior", "schedule": "sigmoid", "sigmoid_delta": 4.0,
                "leapfrog_steps": 10, "target_accept": 0.65}
    for method, values in ais_nll.items():
        for seed, nll in enumerate(values):
            run = tmp_path / f"{method}_s{seed}"
            run.mkdir()
            config = {"seed": seed, "posterior": {"name": method}, "dataset": {"name": "mnist"}}
            (run / "summary.json").write_text(json.dumps({"status": "completed", "test/nll": nll + 1.0,
                                                          "config": config}))
            # the longer schedule from the prior is the one read; a longer one from q(z|x) is a check beside it
            for steps, start, shift in ((100, "prior", 5.0), (1000, "prior", 0.0), (3000, "posterior", 7.0)):
                record = {"checkpoint": "best", "settings": {**settings, "steps": steps, "start": start},
                          "ais/nll": nll + shift, "ais/iw_nll": nll + 0.5, "ais/iw_minus_ais": 0.5 - shift,
                          "ais/n_images": 500, "ais/nll_mc_se": 0.03, "ais/s_per_image": 0.16}
                (run / f"evaluation_ais_ais.steps={steps},ais.start={start}.json").write_text(json.dumps(record))
            (run / "bdmc.json").write_text(json.dumps(
                {"checkpoint": "best", "settings": settings, "gap": 0.08, "steps": 1000, "n_images": 100,
                 "log_px_lower": -nll - 0.08, "log_px_upper": -nll, "gap_se": 0.04}))
    runs = results.load_runs(tmp_path)
    assert list(runs["ais/steps"]) == [1000] * 6 and list(runs["ais/bdmc_gap"]) == [0.08] * 6
    assert list(runs["ais/nll"]) == [v for m in ("diag", "fullcov") for v in ais_nll[m]]
    diffs = results.paired_differences(runs)
    got = diffs[diffs["metric"] == "ais/nll"].iloc[0]
    assert got["method"] == "fullcov" and got["n"] == 3 and got["mean"] == pytest.approx(-0.5)  # -0.5, 0, -1
    assert set(diffs["metric"]) == {"test/nll", "ais/nll", "ais/iw_nll"}
    shown = results.display_table(results.summarize(runs))
    assert list(shown["AIS NLL"]) == ["91.00 ± 1.00", "90.50 ± 0.87"] and "BDMC gap" in shown
    assert results.budget(runs)[0]["AIS steps"] == "1000"
    every = results.ais_rescorings_table(runs)  # each re-scoring of each run, the checks beside the one read
    assert len(every) == 18 and list(every.loc[:2, "T"]) == [100, 1000, 3000]
    assert list(every.loc[:2, "AIS NLL"]) == ["95.00", "90.00", "97.00"] and set(every["start"]) == {"prior", "posterior"}
    bdmc = results.bdmc_table(runs)
    assert len(bdmc) == 6 and list(bdmc.iloc[0][["forward (lower)", "reverse (upper)", "gap"]]) == [
        "-90.08", "-90.00", "0.08"]


def test_ais_image_pairs_difference_two_models_image_for_image_only_against_diag_trained_the_same_way(tmp_path):
    """Per-image AIS values of a milestone's models: each non-diag re-scoring is paired with diag's of the same
    checkpoint, seed, recipe (the factors), images and schedule; the difference's mean and t interval are over the
    images (checked against scipy's paired t test), by AIS and by the IW estimate on the same images."""
    rng = np.random.default_rng(0)
    settings = {"steps": 1000, "chains": 16, "start": "prior", "schedule": "sigmoid", "sigmoid_delta": 4.0,
                "leapfrog_steps": 10, "target_accept": 0.65}
    base = -85.0 + rng.normal(0, 20, 30)  # per-image log p(x) of diag's model, spread as test images are
    values = {}

    def write(name, method, warmup, checkpoint, ais, iw, n=30, **change):
        run = tmp_path / name
        run.mkdir(exist_ok=True)
        config = {"seed": 0, "posterior": {"name": method}, "dataset": {"name": "mnist"},
                  "trainer": {"kl_warmup_epochs": warmup}}
        (run / "summary.json").write_text(json.dumps({"status": "interrupted", "config": config}))
        record = {"checkpoint": checkpoint, "settings": {**settings, **change}, "ais/n_images": n,
                  "ais/nll": float(-np.mean(ais[:n])), "per_image": {"ais_log_px": list(ais[:n]),
                                                                     "iw_log_px": list(iw[:n])}}
        suffix = ",".join(f"ais.{k}={v}" for k, v in change.items()) or "ais.n_images=30"
        (run / f"evaluation_{checkpoint}_ais_{suffix}.json").write_text(json.dumps(record))
        values[(name, checkpoint)] = (np.asarray(ais[:n]), np.asarray(iw[:n]))

    for warmup, shift in ((0, 0.0), (10, 0.3)):  # the two recipes' diag models differ
        diag_ais, diag_iw = base + shift, base + shift - 0.7 + rng.normal(0, 0.1, 30)
        write(f"diag_w{warmup}", "diag", warmup, "epoch_1093", diag_ais, diag_iw)
        write(f"diag_w{warmup}", "diag", warmup, "epoch_364", diag_ais - 1.0, diag_iw - 1.0)
    iaf_ais = base + 0.3 - 0.4 + rng.normal(0, 1.5, 30)  # 0.4 nats behind diag with the warm-up, image noise 1.5
    iaf_iw = iaf_ais - 0.3 + rng.normal(0, 0.1, 30)      # the IW estimate flatters IAF less than diag (0.3 < 0.7)
    write("iaf_w10", "iaf", 10, "epoch_1093", iaf_ais, iaf_iw)
    write("iaf_w10", "iaf", 10, "epoch_364", iaf_ais - 1.0, iaf_iw - 1.0, steps=300)  # another schedule: no pair
    write("rho_w0", "rho", 0, "epoch_364", base - 3.0, base - 4.0, n=20)  # fewer images than diag's: no pair
    runs = results.load_runs(tmp_path)

    pairs = results.ais_image_pairs(runs)
    assert list(zip(pairs["group"], pairs["checkpoint"])) == [("iaf trainer.kl_warmup_epochs=10", "epoch_1093")]
    got = pairs.iloc[0]
    diag_ais, diag_iw = values[("diag_w10", "epoch_1093")]  # diag with the warm-up, not diag without it
    nll_difference = diag_ais - iaf_ais  # NLL = -log p(x): positive means IAF behind
    expected = stats.ttest_rel(-iaf_ais, -diag_ais).confidence_interval(0.95)
    assert got["images"] == 30 and got["ais_mean"] == pytest.approx(nll_difference.mean())
    assert (got["ais_ci_low"], got["ais_ci_high"]) == pytest.approx((expected.low, expected.high))
    assert got["iw_mean"] == pytest.approx((diag_iw - iaf_iw).mean())
    assert got["iw_minus_ais_mean"] == pytest.approx(got["iw_mean"] - got["ais_mean"])
    assert got["iw_minus_ais_mean"] < 0  # IW flatters the better proposal: it shrinks IAF's deficit
    shown = results.display_image_pairs(pairs)
    interval = f"{got['ais_mean']:+.2f} [{got['ais_ci_low']:+.2f}, {got['ais_ci_high']:+.2f}]"
    assert shown["AIS vs diag"].iloc[0] == interval
    assert results.ais_image_pairs(runs[runs["method"] != "diag"]).empty  # nothing to pair with
    assert load_script("summarize").main([str(tmp_path)]) == 0  # the sweep's results.md has the same pairs
    report = (tmp_path / "results.md").read_text()
    assert "image for image" in report and interval in report


def test_the_protocol_table_pairs_each_stage_against_diag_and_shows_what_was_measured_on_its_models(tmp_path):
    """Runs still training at the IWAE protocol (no summary.json): each milestone from epoch 121 on is a row per
    posterior, paired against diag seed by seed (t interval computed here by scipy), with the whole-test-set, AIS and
    gap re-scorings of the milestone's model where they exist, and training hours counting a resumed epoch once."""
    from scipy import stats as scipy_stats

    nll = {("diag", 121): [89.9, 90.1, 90.4], ("fullcov", 121): [88.7, 89.0, 88.6], ("diag", 364): [88.4, 88.5, 88.3],
           ("fullcov", 364): [87.1, 87.4, 87.0]}
    ais = {"steps": 1000, "chains": 16, "start": "prior", "schedule": "sigmoid", "sigmoid_delta": 4.0,
           "leapfrog_steps": 10, "target_accept": 0.65}
    for method in ("diag", "fullcov"):
        for seed in range(3):
            run = tmp_path / f"{method}_s{seed}"
            (run / ".hydra").mkdir(parents=True)
            (run / ".hydra" / "config.yaml").write_text(json.dumps(
                {"seed": seed, "posterior": {"name": method}, "dataset": {"name": "mnist"}}))
            # active units recorded by fullcov's seeds 0 and 1 at epoch 364 only (milestones written before they were)
            units = {"test/active_units": 20 + 2 * seed} if (method, seed) in (("fullcov", 0), ("fullcov", 1)) else {}
            (run / "milestones.jsonl").write_text("".join(
                json.dumps({"epoch": e, "n_images": 2000, "test/iw_samples": 1000,
                            "test/nll": nll[(method, e)][seed] if e > 40 else 95.0, **(units if e == 364 else {})})
                + "\n" for e in (40, 121, 364)))
            # 10 s per epoch to 364, epoch 200 written twice (interrupted, then resumed): the resumed one counts
            epochs = [{"epoch": e, "epoch_s": 10.0} for e in range(1, 365)]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in
                                                       [*epochs[:200], {"epoch": 200, "epoch_s": 370.0}, *epochs[200:]]))
            if method == "fullcov":
                (run / "evaluation_epoch_364_ais.json").write_text(json.dumps(
                    {"checkpoint": "epoch_364", "settings": ais, "ais/nll": 86.0 + seed, "ais/iw_nll": 86.8 + seed,
                     "ais/iw_minus_ais": 0.8, "ais/n_images": 500}))
                if seed == 0:
                    (run / "evaluation_epoch_364.json").write_text(json.dumps({"test/nll": 86.9,
                                                                               "test/iw_samples": 5000}))
            (run / "gaps_epoch_364.json").write_text(json.dumps(
                {"approximation_gap": 1.0 + seed + (method == "diag"), "amortization_gap": 2.0, "n_images": 1000,
                 "settings": {"steps": 500}, "overrides": []}))
    runs = results.load_runs(tmp_path)
    assert set(runs["status"]) == {"unfinished"}
    milestones = results.load_milestones(runs)
    at_364 = milestones[milestones["epoch"] == 364]
    assert list(at_364["train_hours"]) == pytest.approx([(363 * 10 + 370) / 3600] * 6)
    table = results.milestone_table(milestones, from_epoch=121)
    assert list(zip(table["epoch"], table["group"])) == [(121, "diag"), (121, "fullcov"), (364, "diag"),
                                                         (364, "fullcov")]
    diff = np.subtract(nll[("fullcov", 121)], nll[("diag", 121)])
    low, high = scipy_stats.t.interval(0.95, 2, loc=diff.mean(), scale=scipy_stats.sem(diff))
    fullcov_121 = table.iloc[1]
    assert fullcov_121["vs diag"] == f"{diff.mean():+.2f} [{low:+.2f}, {high:+.2f}] (3)"
    assert table.iloc[0]["vs diag"] == "baseline" and fullcov_121["seeds"] == 3
    assert fullcov_121["NLL (2,000 images, K = 1000)"] == f"{np.mean(nll[('fullcov', 121)]):.2f} ± " \
                                                         f"{np.std(nll[('fullcov', 121)], ddof=1):.2f}"
    fullcov_364 = table.iloc[3]
    assert fullcov_364["NLL (whole test set, K = 5000)"] == "86.90 (1 seed)"
    assert fullcov_364["AIS NLL (500 images)"] == "87.00 ± 1.00" and fullcov_364["IW - AIS"] == "0.80 ± 0.00"
    assert fullcov_364["approximation gap"] == "2.00 ± 1.00" and table.iloc[2]["approximation gap"] == "3.00 ± 1.00"
    assert fullcov_364["active units"] == "21 ± 1 (2 seeds)" and fullcov_121["active units"] == "not measured"
    assert list(table.columns[4:7]) == ["NLL (2,000 images, K = 1000)", "vs diag", "active units"]
    assert fullcov_121["AIS NLL (500 images)"] == "not measured"
    assert table.iloc[3]["hours"] == f"{(363 * 10 + 370) / 3600:.1f}"
    without_diag_364 = results.milestone_table(milestones[(milestones["epoch"] < 364) | (milestones["method"] != "diag")],
                                               from_epoch=121)
    assert list(without_diag_364["vs diag"]) == [table.iloc[0]["vs diag"], fullcov_121["vs diag"],
                                                 "no diag run at this epoch"]

    gaps = results.stage_gaps(milestones)
    assert list(gaps["method"]) == ["diag, epoch 364", "fullcov, epoch 364"] and list(gaps["n"]) == [3, 3]
    assert list(gaps["gaps/approximation_gap mean"]) == [3.0, 2.0] and list(gaps["gaps/approximation_gap sd"]) == [1.0, 1.0]


def test_the_protocol_table_pairs_a_stage_only_with_diag_trained_the_same_way(tmp_path):
    """A key some runs change (a KL warm-up): each posterior is paired with the diag run at the same value of it,
    never with diag at another, and a stage without such a diag run says so instead of pairing across recipes.
    The README's short table is the furthest stage at which a posterior is paired with diag trained the same way,
    not a later one that a run reached alone or unpaired."""
    from rhovae.doc_tables import TABLES

    nll = {("diag", 0): 90.0, ("iaf", 0): 93.0, ("diag", 10): 90.2, ("iaf", 10): 90.7}
    for (method, warmup), value in nll.items():
        run = tmp_path / f"{method}_w{warmup}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(json.dumps(
            {"seed": 0, "posterior": {"name": method}, "dataset": {"name": "mnist"},
             "trainer": {"kl_warmup_epochs": warmup}}))
        epochs = {("diag", 10): (121,), ("iaf", 0): (121, 364, 1093)}.get((method, warmup), (121, 364))
        (run / "milestones.jsonl").write_text("".join(json.dumps(
            {"epoch": e, "n_images": 2000, "test/iw_samples": 1000, "test/nll": value - (e == 364)}) + "\n"
            for e in epochs))
    table = results.milestone_table(results.load_milestones(results.load_runs(tmp_path)), from_epoch=121)
    vs = dict(zip(zip(table["epoch"], table["group"]), table["vs diag"]))
    assert vs[(121, "iaf trainer.kl_warmup_epochs=0")] == "+3.00 (1)"
    assert vs[(121, "iaf trainer.kl_warmup_epochs=10")] == "+0.50 (1)"
    assert vs[(364, "iaf trainer.kl_warmup_epochs=0")] == "+3.00 (1)"
    assert vs[(364, "iaf trainer.kl_warmup_epochs=10")] == "no diag run with trainer.kl_warmup_epochs=10 at this epoch"
    assert vs[(1093, "iaf trainer.kl_warmup_epochs=0")] == "no diag run with trainer.kl_warmup_epochs=0 at this epoch"

    milestones = results.load_milestones(results.load_runs(tmp_path))
    furthest = results.furthest_paired_stage(milestones)
    assert sorted(zip(furthest["epoch"], furthest["group"])) == [
        (364, "diag trainer.kl_warmup_epochs=0"), (364, "iaf trainer.kl_warmup_epochs=0"),
        (364, "iaf trainer.kl_warmup_epochs=10")]
    shown = TABLES["protocol_furthest"](results.load_runs(tmp_path)).splitlines()
    assert len(shown) == 2 + 3 and all(row.startswith("| 364 ") for row in shown[2:])
    # at 364 only the unpaired iaf with the warm-up and diag without it: the furthest pairing is at 121
    at_121 = results.furthest_paired_stage(milestones[~((milestones["epoch"] == 364)
                                                        & (milestones["group"] == "iaf trainer.kl_warmup_epochs=0"))])
    assert set(at_121["epoch"]) == {121} and len(at_121) == 4
    assert results.furthest_paired_stage(milestones[milestones["epoch"] == 1093]).empty  # iaf alone: no pair


@pytest.mark.slow  # three real joblib sweeps of three tiny jobs
def test_ctrl_c_stops_a_joblib_sweep_cleanly_and_resume_continues_every_job_bit_for_bit(data_root, tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group: the sweep and its workers) while two of three jobs train:
    both save their position and end, the queued third never starts, the sweep exits 130 without a traceback, and
    the same command with trainer.resume=true gives every job the numbers of an uninterrupted sweep, bit for bit."""
    long_jobs = [o for o in TINY_OVERRIDES if not o.startswith(("trainer.max_batches", "trainer.batch_size"))]
    args = ["-m", "launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2", f"dataset.root={data_root}",
            *long_jobs, "trainer.batch_size=8", "trainer.epochs=40", "logger=none"]
    reference = train([*args, f"hydra.sweep.dir={tmp_path / 'reference'}"], cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]

    sweep = tmp_path / "sweep"
    command = [sys.executable, str(REPO / "train.py"), *args, f"hydra.sweep.dir={sweep}"]
    proc = subprocess.Popen(command, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while sum((sweep / f"{i}_mnist_diag_s{i}" / "checkpoints" / "last.pt").exists() for i in (0, 1)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: every process of the foreground group
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, stderr[:3000] + stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[:3000] + stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("interrupted: the sweep was stopped by SIGINT")
    for i in (0, 1):
        summary = json.loads((sweep / f"{i}_mnist_diag_s{i}" / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["epochs"] < 40
    assert not (sweep / "2_mnist_diag_s2" / "checkpoints").exists()  # queued, never started

    resumed = train([*args, f"hydra.sweep.dir={sweep}", "trainer.resume=true"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for i in range(3):
        got, want = (json.loads((root / f"{i}_mnist_diag_s{i}" / "summary.json").read_text())
                     for root in (sweep, tmp_path / "reference"))
        assert got["status"] == "completed"
        for key in ("epochs", "best_epoch", "val/elbo", "test/elbo", "test/nll", "test/kl"):
            assert got[key] == want[key], (i, key)


@pytest.mark.slow  # two sweeps of two tiny jobs through train.py
def test_a_sweep_with_stop_at_epoch_pauses_every_job_and_exits_0_and_resuming_it_finishes_them(data_root, tmp_path):
    """A planned stop is not Ctrl-C: each job stops after its epoch, saved, and the sweep goes on to the next job and
    ends with status 0; the same sweep resumed with trainer.stop_at_epoch=null trains every job to the end."""
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=0,1", f"dataset.root={data_root}", *TINY_OVERRIDES, "trainer.epochs=2", "logger=none",
            f"hydra.sweep.dir={sweep}"]
    paused = train([*args, "trainer.stop_at_epoch=1"], cwd=tmp_path)
    assert paused.returncode == 0, paused.stderr[-3000:]
    assert paused.stderr.count("paused: trainer.stop_at_epoch=1 reached") == 2 and "Traceback" not in paused.stderr
    for i in (0, 1):
        summary = json.loads((sweep / f"{i}_mnist_diag_s{i}" / "summary.json").read_text())
        assert summary["status"] == "interrupted" and summary["epochs"] == 1

    resumed = train([*args, "trainer.resume=true", "trainer.stop_at_epoch=null"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for i in (0, 1):
        summary = json.loads((sweep / f"{i}_mnist_diag_s{i}" / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["epochs"] == 2
