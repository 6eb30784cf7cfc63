"""``python train.py`` as a user runs it, in subprocesses on tiny IDX files: outputs, W&B, and clear errors."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from helpers import DATASET_NAMES, FLOW_NAMES, NETWORK_NAMES, POSTERIOR_NAMES, TINY_OVERRIDES, train
from rhovae.checkpoint import load_checkpoint
from rhovae.config import load_config
from rhovae.build import build_vae
from rhovae.vae import count_parameters
from rhovae.tracking import read_jsonl

POSTERIORS, DATASETS, DECODERS = POSTERIOR_NAMES, DATASET_NAMES, NETWORK_NAMES
COMBOS = list(itertools.product(POSTERIORS, DATASETS, DECODERS))
EPOCHS = 2
SUMMARY_KEYS = {"status", "dataset", "posterior", "networks", "seed", "latent_dim", "epochs", "best_epoch",
                "train_time_s", "epoch_s", "n_params", "val/elbo", "test/elbo", "test/recon", "test/kl",
                "test/nll", "test/iw_samples", "test/active_units"}
METRIC_KEYS = {"epoch", "train/elbo", "train/recon", "train/kl", "val/elbo", "val/recon", "val/kl", "lr",
               "epoch_s"}
SHARED = [o for o in TINY_OVERRIDES if not o.startswith("networks.")]


@pytest.fixture(scope="module")
def sweep(data_root, tmp_path_factory) -> Path:
    """One Hydra multirun over every posterior x dataset x decoder (one process, so imports happen once)."""
    out = tmp_path_factory.mktemp("sweep")
    proc = train(["-m", f"posterior={','.join(POSTERIORS)}", f"dataset={','.join(DATASETS)}",
                  f"networks={','.join(DECODERS)}", f"dataset.root={data_root}", "logger=none",
                  f"trainer.epochs={EPOCHS}", *SHARED, f"hydra.sweep.dir={out}"], cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def job_dir(sweep: Path, posterior: str, dataset: str, decoder: str) -> Path:
    matches = []
    for summary in sweep.glob("*/summary.json"):
        s = json.loads(summary.read_text())
        if (s["posterior"], s["dataset"], s["networks"]) == (posterior, dataset, decoder):
            matches.append(summary.parent)
    assert len(matches) == 1, (posterior, dataset, decoder, matches)
    return matches[0]


@pytest.mark.slow
@pytest.mark.parametrize("posterior,dataset,decoder", COMBOS)
def test_smoke_run_writes_every_output(sweep, posterior, dataset, decoder):
    run = job_dir(sweep, posterior, dataset, decoder)
    summary = json.loads((run / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["status"] == "completed" and summary["epochs"] == EPOCHS and summary["latent_dim"] == 4
    assert summary["test/elbo"] < 0 and summary["test/recon"] < 0 and summary["test/kl"] >= 0
    assert abs(summary["test/elbo"] - (summary["test/recon"] - summary["test/kl"])) < 1e-3
    assert summary["val/elbo"] < 0 and summary["train_time_s"] > 0 and summary["n_params"] > 0
    assert summary["test/iw_samples"] == 20 and 0 < summary["test/nll"] < -summary["test/elbo"] + 1.0
    assert 0 <= summary["test/active_units"] <= 4

    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))
    for row in rows:
        assert METRIC_KEYS <= set(row)
        assert abs(row["val/elbo"] - (row["val/recon"] - row["val/kl"])) < 1e-3
    assert summary["val/elbo"] == max(r["val/elbo"] for r in rows)

    best = load_checkpoint(run / "checkpoints" / "best.pt")
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert best["state"]["epoch"] == summary["best_epoch"] and last["state"]["epoch"] == EPOCHS
    assert best["config"]["posterior"]["name"] == posterior
    model = build_vae(load_config(best["config"]), (1, 28, 28))  # a checkpoint rebuilds its model from its own config
    model.load_state_dict(best["model"])
    assert count_parameters(model) == summary["n_params"]

    side = 8 * (2 * 28 + 4) + 4  # 8 x 8 tiles of 28 px drawn 2 x 2, with 4 px padding: 484 px, twice the old 242
    with Image.open(run / "samples.png") as img:
        assert img.size == (side, 24 + side)  # a 24 px title band on top
    with Image.open(run / "reconstructions.png") as img:
        assert img.size == (120 + side, 24 + side)  # a 120 px margin naming the rows: input, reconstruction, ...
    with Image.open(run / "learning_curves.png") as img:
        assert img.size[0] > 500
    assert not (run / "latent_means.png").exists()  # drawn only for 2-d latents
    # information diagnostics: ELBO surgery where q has a density everywhere, KL per dimension where it factorizes
    assert 0 < summary["test/ess_fraction"] <= 1 and summary["test/nll_mc_se"] > 0
    assert ("test/mutual_information" in summary) == (posterior not in FLOW_NAMES)
    if "test/mutual_information" in summary:
        # at most log N for 80 test images, and at least 0 up to Monte Carlo noise (one draw per image): a posterior
        # that carries almost no information after two tiny epochs can come out a little below 0
        assert -0.1 <= summary["test/mutual_information"] <= math.log(80) + 1e-6
        assert summary["test/mutual_information"] + summary["test/marginal_kl"] == pytest.approx(summary["test/kl"],
                                                                                                 abs=0.5)
    assert (run / "kl_per_dim.png").exists() == (posterior == "diag") == ("test/kl_per_dim" in summary)
    assert (run / ".hydra" / "config.yaml").is_file()
    assert not (run / "wandb").exists()


@pytest.mark.slow
def test_single_run_with_wandb_offline_writes_the_wandb_folder(data_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = train(["posterior=rho", "dataset=fmnist", f"dataset.root={data_root}", "trainer.epochs=1",
                  "logger.image_every=1", *TINY_OVERRIDES, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("run-*.wandb"))
    assert json.loads((run_dir / "summary.json").read_text())["posterior"] == "rho"
    output = proc.stdout + proc.stderr
    assert f"upload it with: wandb sync {offline_runs[0]}" in output  # where the offline run went, and what next
    lines = [line for line in output.splitlines() if "[rhovae." in line]
    assert lines and all("[fmnist_rho_s0][rhovae." in line for line in lines)  # each line names its job
    assert "next: the importance-weighted NLL" in output  # the test evaluation reports as it goes


@pytest.mark.slow
def test_missing_dataset_fails_with_one_clear_line(tmp_path):
    missing = tmp_path / "no-data"
    proc = train([f"dataset.root={missing}", "dataset.download=false", "logger=none",
                  f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no mnist data in ") and str(missing / "MNIST" / "raw") in last
    assert "train-images-idx3-ubyte" in last and "t10k-labels-idx1-ubyte" in last
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # a refused command creates nothing: no run folder


@pytest.mark.slow
@pytest.mark.parametrize("group,bad", [("posterior", "vamp"), ("dataset", "cifar10"), ("networks", "resnet")])
def test_unknown_group_option_lists_the_available_ones(tmp_path, group, bad):
    proc = train([f"{group}={bad}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"Could not find '{group}/{bad}'" in proc.stderr and f"Available options in '{group}'" in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_bad_config_value_fails_before_training(tmp_path):
    proc = train(["latent_dim=0", "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "error: latent_dim=0 is not valid; accepted: an integer >= 1"
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


@pytest.mark.slow
def test_the_old_decoder_group_name_is_read_as_networks_with_a_warning(tmp_path):
    proc = train(["decoder=conv", "decoder.hidden=64", "logger=none", "--cfg", "job"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    composed = OmegaConf.create(proc.stdout)
    assert composed.networks.name == "conv" and composed.networks.hidden == 64 and "decoder" not in composed
    assert "'decoder=conv' is read as 'networks=conv'" in proc.stderr and "until the next release" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("override,complaint", [
    ("trainer.epochs=many", "Value 'many' of type 'str' could not be converted to Integer"),
    ("posterior=iaf posterior.flow_length=2.5", "Value '2.5' of type 'float' could not be converted to Integer"),
    ("posterior.flow_length=4", "Key 'flow_length' not in 'DiagPosteriorConfig'"),
])
def test_hydra_refuses_wrong_types_and_keys_of_another_option(tmp_path, override, complaint):
    """The typed configs (rhovae/config/schema.py): Hydra's own message names the key, before any folder exists."""
    proc = train([*override.split(), "logger=none", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert complaint in proc.stderr and f"full_key: {override.split()[-1].split('=')[0]}" in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # W&B and jupytext start helper processes
def test_wandb_run_gets_group_tags_and_resolved_config(tmp_path, monkeypatch):
    from rhovae.config import load_config
    from rhovae.experiment import build_tracker

    monkeypatch.chdir(tmp_path)
    config = {"dataset": {"name": "fmnist", "root": "/data"}, "posterior": {"name": "rho"},
              "networks": {"name": "conv"}, "latent_dim": 8,
              "logger": {"name": "wandb", "project": "rhovae-test", "mode": "offline", "tags": ["extra"]}}
    tracker = build_tracker(load_config(config), tmp_path)
    try:
        assert tracker.run.group == "fmnist-rho"
        assert set(tracker.run.tags) == {"fmnist", "rho", "conv", "extra"}
        assert tracker.run.config["latent_dim"] == 8 and tracker.run.config["dataset"]["root"] == "/data"
        tracker.log({"val/elbo": -100.0}, step=1)
        tracker.log_images({"samples": torch.rand(1, 30, 30)}, step=1)
        tracker.summarize({"test/elbo": -99.0})
        assert tracker.run.summary["test/elbo"] == -99.0
    finally:
        tracker.finish()


@pytest.mark.slow  # W&B and jupytext start helper processes
def test_wandb_groups_tell_variants_apart_and_tag_the_sweep(tmp_path, monkeypatch):
    from rhovae.config import load_config
    from rhovae.experiment import build_tracker

    monkeypatch.chdir(tmp_path)
    config = {"dataset": {"name": "mnist"}, "networks": {"name": "mlp"}, "latent_dim": 4,
              "posterior": {"name": "rho", "min_std": 1e-4, "variant": "published_code"},
              "logger": {"name": "wandb", "project": "rhovae-test", "mode": "offline", "tags": []}}
    tracker = build_tracker(load_config(config), tmp_path, sweep="paper_2026-01-01_00-00-00")
    try:
        assert tracker.run.group == "mnist-rho_published_code"
        assert "paper_2026-01-01_00-00-00" in tracker.run.tags
    finally:
        tracker.finish()
