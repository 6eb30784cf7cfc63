"""The importance-weighted estimator against an exactly computable log p(x), and the test-set diagnostics."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
import torch
from torch import nn

from helpers import (FLOW_NAMES, POSTERIOR_NAMES, REPO, TINY_OVERRIDES, compose, flows_in_slow_tier,
                     flushing_subnormals, folder_digest, subprocess_env)
from helpers.models import P, exact_log_px, fit_posterior, tiny_vae
from rhovae.checkpoint import load_checkpoint
from rhovae.errors import ConfigError
from rhovae.evaluation import (active_units, evaluate_elbo, importance_metrics, importance_weighted_estimates,
                               importance_weighted_log_likelihood, log_weight_summary, posterior_diagnostics)
from rhovae.pareto import tail_length
from rhovae.config import load_config
from rhovae.build import build_vae, load_data, load_trained_run
from rhovae.experiment import plan_run, run_experiment
from rhovae.posteriors import build_posterior
from rhovae.vae import VAE

@pytest.mark.parametrize("posterior", flows_in_slow_tier(POSTERIOR_NAMES))
def test_iwae_converges_to_exact_log_likelihood_while_elbo_stays_below(posterior):
    model = tiny_vae(posterior)
    images = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 0, 1]],
                          dtype=torch.uint8) * 255
    x = images.float() / 255
    fit_posterior(model, x)
    exact = exact_log_px(model, x)
    iwae = importance_weighted_log_likelihood(model, images, n_samples=20_000, chunk=5000, eval_seed=1)
    with torch.no_grad():
        log_w = model.log_importance_weights(x, 20_000).double()
    elbo, elbo_se = log_w.mean(0), log_w.std(0) / math.sqrt(len(log_w))
    assert torch.allclose(iwae, exact, atol=0.02), (iwae, exact)
    assert torch.all(elbo + 5 * elbo_se < exact), (elbo, exact)  # the ELBO is a strict lower bound
    assert torch.all(exact - elbo > 3 * (exact - iwae).abs().max())  # and much further off than the IWAE


def record_weights(model: VAE) -> list[torch.Tensor]:
    """The list that every later call of ``model.log_importance_weights`` appends its log-weights to (float64)."""
    drawn = []
    original = model.log_importance_weights

    def recording(*args, **kwargs):
        drawn.append(original(*args, **kwargs).double())
        return drawn[-1]

    model.log_importance_weights = recording
    return drawn


def test_iwae_is_logmeanexp_of_the_log_weights_with_or_without_chunks():
    model = tiny_vae("diag")
    images = torch.randint(0, 2, (5, P), dtype=torch.uint8) * 255
    whole = importance_weighted_log_likelihood(model, images, n_samples=64, chunk=64, batch_size=5, eval_seed=3)
    torch.manual_seed(3)  # the same 64 draws, reduced by hand
    log_w = model.log_importance_weights(images.float() / 255, 64).detach().double()
    torch.testing.assert_close(whole, torch.logsumexp(log_w, 0) - math.log(64))
    # in chunks, the running logsumexp equals the logsumexp of all the weights it drew
    drawn = record_weights(model)
    chunked = importance_weighted_log_likelihood(model, images, n_samples=64, chunk=10, batch_size=5, eval_seed=3)
    assert [len(w) for w in drawn] == [10] * 6 + [4]  # K = 64 in chunks of at most 10
    torch.testing.assert_close(chunked, torch.logsumexp(torch.cat(drawn), 0) - math.log(64))


def test_weight_summary_keeps_the_first_draws_and_the_largest_weights_across_chunks():
    """The K / 10 estimate is the log-mean of exactly the first K / 10 draws, and the tail the k-hat is fitted to is
    the largest weights of all K, however the chunks fall."""
    model = tiny_vae("diag")
    x = (torch.randint(0, 2, (5, P)) * 1.0)
    drawn = record_weights(model)
    with torch.no_grad():
        summary = log_weight_summary(model, x, model.posterior_of(x), 64, 10, n_prefix=25)
    log_w = torch.cat(drawn)  # [64, 5]
    torch.testing.assert_close(summary.log_mean, torch.logsumexp(log_w, 0) - math.log(64))
    torch.testing.assert_close(summary.log_mean_prefix, torch.logsumexp(log_w[:25], 0) - math.log(25))
    torch.testing.assert_close(summary.log_mean_sq, torch.logsumexp(2 * log_w, 0) - math.log(64))
    torch.testing.assert_close(summary.top.sort(dim=1).values,
                               log_w.T.topk(tail_length(64) + 1, dim=1).values.sort(dim=1).values)


def test_k_over_10_estimate_shows_the_bias_that_k_leaves(trained_run):
    """On a trained model the importance-weighted NLL falls with K in expectation: its K / 10 estimate is higher."""
    ckpt = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    data = load_data(load_config(ckpt["config"]), torch.device("cpu"))
    model = build_vae(load_config(ckpt["config"]), data.image_shape)
    model.load_state_dict(ckpt["model"])
    metrics = importance_metrics(importance_weighted_estimates(model, data.test, n_samples=200, chunk=64), 200)
    assert metrics["nll_tenth_k"] > metrics["nll"]
    assert 0 <= metrics["pareto_k_above_0_7"] <= 1 and math.isfinite(metrics["pareto_k_median"])


@pytest.fixture(scope="module")
def trained_run(data_root, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained")
    cfg = compose([f"dataset.root={data_root}", "logger=none", "trainer.device=cpu", *TINY_OVERRIDES,
                   "trainer.epochs=3", "trainer.max_batches=null", "trainer.lr=3e-3", "trainer.milestones=[2]",
                   "eval.milestone_iw_samples=20"])  # the milestone scores all 80 test images
    run_experiment(cfg, run_dir)
    return run_dir


def test_iwae_is_non_decreasing_in_k_on_a_trained_model(trained_run):
    ckpt = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    data = load_data(load_config(ckpt["config"]), torch.device("cpu"))
    model = build_vae(load_config(ckpt["config"]), data.image_shape)
    model.load_state_dict(ckpt["model"])
    means = {k: torch.stack([importance_weighted_log_likelihood(model, data.test, n_samples=k, chunk=100,
                                                                eval_seed=s).mean() for s in range(4)]).mean()
             for k in (1, 10, 100)}
    assert means[1] < means[10] < means[100]
    elbo = evaluate_elbo(model, data.test)["elbo"]
    assert abs(means[1].item() - elbo) < 2.0  # K = 1 is the ELBO itself, up to Monte Carlo noise


def test_a_trained_run_is_evaluated_in_the_floating_point_mode_it_trained_in(trained_run):
    torch.set_flush_denormal(False)
    config, *_ = load_trained_run(trained_run)
    assert config.trainer.flush_denormal and flushing_subnormals()


def test_a_trained_run_is_evaluated_with_the_threads_its_config_or_the_command_line_says(trained_run):
    for threads in (1, 3):  # trainer.threads is accepted by the re-scoring scripts: it must also be applied
        load_trained_run(trained_run, [f"trainer.threads={threads}"])
        assert torch.get_num_threads() == threads
    torch.set_num_threads(2)  # conftest restores the process's threads after each test
    config, *_ = load_trained_run(trained_run)  # the run's own setting: None leaves torch's as it is
    assert config.trainer.threads is None and torch.get_num_threads() == 2


def test_a_bfloat16_decoder_moves_the_nll_by_rounding_only(trained_run):
    """The same draws through a decoder under bfloat16 autocast: every image's estimate moves (the path is taken),
    by far less than the Monte Carlo noise of an NLL, and the reductions stay in float64."""
    _, data, model, _ = load_trained_run(trained_run)
    estimates = {precision: importance_weighted_estimates(model, data.test, n_samples=200, chunk=64, eval_seed=3,
                                                          precision=precision) for precision in ("float32", "bfloat16")}
    f32, bf16 = estimates["float32"].log_px, estimates["bfloat16"].log_px
    assert bf16.dtype == torch.float64 and (bf16 != f32).all()
    assert (bf16 - f32).abs().max() < 0.5 and abs((bf16 - f32).mean()) < 0.05
    assert abs((bf16 - f32).mean()) < estimates["float32"].mc_variance.sum().sqrt() / len(f32) + 0.01


@pytest.mark.parametrize("key", ["eval.iw_precision", "trainer.precision"])
def test_bfloat16_is_refused_where_it_would_be_emulated(key, data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    cfg = compose([f"dataset.root={data_root}", "logger=none", "trainer.device=cpu", *TINY_OVERRIDES, f"{key}=bfloat16"])
    with pytest.raises(ConfigError, match=rf"^{key}='bfloat16' needs native bfloat16 .*accepted here: float32$"):
        run_experiment(cfg, tmp_path)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_evaluate_script_reproduces_the_runs_test_numbers(trained_run, tmp_path):
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["test/iw_samples"] == 20 and 0 < summary["test/nll"] <= -summary["test/elbo"] + 1.0
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), str(trained_run), "--update-summary"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rescored = json.loads((trained_run / "evaluation.json").read_text())
    for key in ("test/nll", "test/elbo", "test/recon", "test/kl", "test/active_units"):
        assert rescored[key] == pytest.approx(summary[key], abs=1e-6), key
    assert "test/nll" in proc.stdout
    first = (trained_run / "evaluation.json").read_bytes()
    other = [sys.executable, str(REPO / "scripts" / "evaluate.py"), str(trained_run), "eval.iw_samples=40",
             "trainer.threads=1"]
    proc = subprocess.run(other, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # other settings go beside the first re-scoring, named by the estimating overrides (not by trainer.threads)
    assert json.loads((trained_run / "evaluation_eval.iw_samples=40.json").read_text())["test/iw_samples"] == 40
    assert (trained_run / "evaluation.json").read_bytes() == first
    again = subprocess.run(other, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and again.stderr.startswith(
        f"error: {trained_run / 'evaluation_eval.iw_samples=40.json'} already holds a re-scoring"), again.stderr
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), str(tmp_path)],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip() == f"error: no checkpoint at {tmp_path / 'checkpoints' / 'best.pt'}"


@pytest.mark.slow
def test_evaluate_script_scores_by_ais_beside_the_iw_numbers_and_bdmc_writes_one_file_per_schedule(trained_run,
                                                                                                    tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    summary = (run / "summary.json").read_bytes()
    ais = ["ais.n_images=8", "ais.steps=20", "ais.chains=4", "ais.iw_samples=50", "ais.batch_size=4"]
    done = _script("evaluate", str(run), "--estimator", "ais", *ais)
    assert done.returncode == 0, done.stderr
    written = run / f"evaluation_ais_{','.join(sorted(ais))}.json"
    record = json.loads(written.read_text())
    assert record["estimator"] == "ais" and record["settings"]["steps"] == 20 and record["ais/n_images"] == 8
    assert math.isfinite(record["ais/nll"]) and record["ais/nll"] > 0 and 0 < record["ais/accept"] <= 1
    assert record["ais/iw_minus_ais"] == pytest.approx(record["ais/iw_nll"] - record["ais/nll"])
    # the per-image values behind the means, in the test set's order, so that two models pair image for image
    per_image = record["per_image"]
    assert set(per_image) == {"ais_log_px", "ais_mc_variance", "accept", "iw_log_px", "iw_mc_variance"}
    assert all(len(v) == 8 for v in per_image.values())
    assert -np.mean(per_image["ais_log_px"]) == pytest.approx(record["ais/nll"], rel=1e-6)
    assert -np.mean(per_image["iw_log_px"]) == pytest.approx(record["ais/iw_nll"], rel=1e-6)
    assert np.sqrt(np.sum(per_image["ais_mc_variance"])) / 8 == pytest.approx(record["ais/nll_mc_se"], rel=1e-6)
    assert (run / "summary.json").read_bytes() == summary  # the run's own numbers are untouched
    refused = _script("evaluate", str(run), "--estimator", "ais", "eval.iw_samples=3")
    assert refused.returncode == 1 and refused.stderr.startswith("error: eval.iw_samples would change"), refused.stderr
    refused = _script("evaluate", str(run), "--estimator", "ais", "--update-summary")
    assert refused.returncode == 1 and "--update-summary merges the run's own test numbers" in refused.stderr

    done = _script("bdmc", str(run), "ais.n_images=8", "ais.chains=4", "ais.batch_size=8", "--steps", "2", "30")
    assert done.returncode == 0, done.stderr
    short, long = (json.loads((run / f"bdmc_ais.batch_size=8,ais.chains=4,ais.n_images=8,ais.steps={t}.json")
                              .read_text()) for t in (2, 30))
    assert short["steps"] == 2 and long["steps"] == 30 and long["settings"]["chains"] == 4
    assert short["log_px_lower"] < short["log_px_upper"]  # far apart at 2 steps
    again = _script("bdmc", str(run), "ais.n_images=8", "ais.chains=4", "ais.batch_size=8", "--steps", "30")
    assert again.returncode == 1 and "already holds a re-scoring" in again.stderr


@pytest.mark.slow
def test_evaluate_script_scores_a_milestones_checkpoint(trained_run):
    milestone = json.loads((trained_run / "milestones.jsonl").read_text().splitlines()[0])
    assert milestone["epoch"] == 2 and milestone["n_images"] == 80  # the whole tiny test set, K = 20
    evaluate = [sys.executable, str(REPO / "scripts" / "evaluate.py"), str(trained_run)]
    proc = subprocess.run([*evaluate, "--checkpoint", "epoch_2", "eval.iw_samples=20"], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)  # overrides after the options too
    assert proc.returncode == 0, proc.stderr
    rescored = json.loads((trained_run / "evaluation_epoch_2.json").read_text())
    assert rescored["epoch"] == 2 and rescored["checkpoint"] == "epoch_2"
    for key in ("test/nll", "test/elbo"):  # the epoch-2 model, not the best (epoch 3) one
        assert rescored[key] == pytest.approx(milestone[key], abs=1e-6), key
    assert rescored["test/nll"] != pytest.approx(json.loads((trained_run / "summary.json").read_text())["test/nll"])
    proc = subprocess.run([*evaluate, "--checkpoint", "epoch_7"], env=subprocess_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"error: --checkpoint 'epoch_7' is not saved in {trained_run}; saved: best, last, epoch_2")
    proc = subprocess.run([*evaluate, "--checkpoint", "last", "--update-summary"], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and proc.stderr.startswith("error: --update-summary takes the run's own checkpoint")


def test_active_units_count_dimensions_whose_posterior_mean_varies():
    torch.manual_seed(0)
    encoder = nn.Identity()
    post = build_posterior("diag", 3, 4)
    with torch.no_grad():
        post.loc.weight.zero_()
        post.loc.weight[0, 0], post.loc.weight[1, 1], post.loc.weight[2, 2] = 1.0, 0.5, 0.05
    model = VAE(encoder, post, nn.Linear(4, 3), 4)
    images = torch.randint(0, 256, (2000, 3), dtype=torch.uint8)
    result, means = posterior_diagnostics(model, images, batch_size=500)
    # Var(u) = 1/12 for u ~ U[0, 1]: dims 0 and 1 vary (0.083, 0.021), dim 2 barely (0.0002), dim 3 not at all
    assert result["active_units"] == 2
    assert active_units(model, images, batch_size=500) == 2  # the count a milestone records, on its own
    torch.testing.assert_close(means, post(images.float() / 255).mean.detach())


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_monte_carlo_noise_of_flow_means_does_not_count_as_activity(name):
    torch.manual_seed(0)
    post = build_posterior(name, 3, 4)
    with torch.no_grad():  # q(z|x) no longer depends on x: no dimension is active
        for module in post.modules():
            if isinstance(module, nn.Linear):
                module.weight.zero_()
        post.base.raw_std.bias.fill_(0.5)  # std ~ 1: with 10 samples each mean is off by ~0.3 (variance 0.1)
    model = VAE(nn.Identity(), post, nn.Linear(4, 3), 4)
    # 4000 images: a flow may spread z to Var ~ 1.5 (means scatter with variance ~ 0.15), whose estimate over N images
    # is noisy by 0.15 sqrt(2 / N) = 0.003 here, well below the 0.01 threshold
    images = torch.randint(0, 256, (4000, 3), dtype=torch.uint8)
    result, means = posterior_diagnostics(model, images, batch_size=1000, mean_samples=10)
    assert means.var(dim=0).min() > 0.01  # the raw Monte Carlo means do scatter above the 0.01 threshold ...
    assert result["active_units"] == 0  # ... which the estimator's variance accounts for
    assert active_units(model, images, batch_size=1000, mean_samples=10) == 0


def test_rho_statistics_are_reported_over_the_set():
    torch.manual_seed(0)
    post = build_posterior("rho", 3, 4)
    model = VAE(nn.Identity(), post, nn.Linear(4, 3), 4)
    images = torch.randint(0, 256, (300, 3), dtype=torch.uint8)
    result, _ = posterior_diagnostics(model, images, batch_size=128)
    rho = torch.tanh(post.rho_atanh(images.float() / 255)).squeeze(-1).double()
    assert result["rho_mean"] == pytest.approx(rho.mean().item(), abs=1e-6)
    assert result["rho_std"] == pytest.approx(rho.std().item(), abs=1e-6)
    assert {"log_s_mean", "log_s_std", "active_units"} <= set(result)


def test_two_dimensional_latents_get_a_latent_map_and_rho_runs_report_rho(data_root, tmp_path):
    cfg = compose([f"dataset.root={data_root}", "logger=none", "trainer.device=cpu", *TINY_OVERRIDES,
                   "posterior=rho", "latent_dim=2", "trainer.epochs=2"])
    summary = run_experiment(cfg, tmp_path)
    for name in ("latent_means.png", "learning_curves.png", "samples.png", "reconstructions.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert -1 < summary["test/rho_mean"] < 1 and summary["test/rho_std"] >= 0
    assert 0 <= summary["test/active_units"] <= 2


def test_a_run_whose_checkpoint_names_the_decoder_section_resumes_in_todays_keys(trained_run, data_root, tmp_path):
    run_dir = tmp_path / "old"
    shutil.copytree(trained_run, run_dir)
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    ckpt["config"]["decoder"] = ckpt["config"].pop("networks")
    torch.save(ckpt, run_dir / "checkpoints" / "last.pt")
    cfg = compose([f"dataset.root={data_root}", "logger=none", "trainer.device=cpu", *TINY_OVERRIDES,
                   "trainer.resume=true", "trainer.epochs=4"])
    plan = plan_run(cfg, run_dir, given={"trainer.resume", "trainer.epochs", "dataset.root", "logger.name"})
    assert plan.checkpoint is not None and asdict(plan.config.networks) == ckpt["config"]["decoder"]
    assert not hasattr(plan.config, "decoder") and plan.config.trainer.epochs == 4


def test_runs_trained_before_newer_keys_existed_load_with_their_defaults(trained_run, tmp_path):
    """A checkpoint whose config predates trainer.overwrite, objective.*, eval.gaps and gaps.*, and names the
    networks section decoder, still re-loads."""
    old_run = tmp_path / "old"
    (old_run / "checkpoints").mkdir(parents=True)
    ckpt = load_checkpoint(trained_run / "checkpoints" / "best.pt")
    for section, key in (("trainer", "overwrite"), ("eval", "gaps")):
        del ckpt["config"][section][key]
    for section in ("objective", "gaps"):
        del ckpt["config"][section]
    ckpt["config"]["decoder"] = ckpt["config"].pop("networks")
    torch.save(ckpt, old_run / "checkpoints" / "best.pt")
    config, _, model, _ = load_trained_run(old_run, ["eval.iw_samples=5"])
    assert config.trainer.overwrite is False
    assert asdict(config.objective) == {"beta": 1.0, "free_bits": 0.0, "iw_samples": 1}
    assert config.eval.gaps is False and config.gaps.n_images == 1000
    assert config.eval.iw_samples == 5
    assert config.networks.hidden == [32, 32] and not hasattr(config, "decoder")


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / f"{name}.py"), *args], cwd=REPO,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_rescoring_scripts_refuse_keys_that_change_the_model_and_record_what_they_overrode(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = folder_digest(run)
    for name, args in (("evaluate", ["posterior.min_std=0.5", "--update-summary"]), ("gaps", ["latent_dim=8"]),
                       ("gaps", ["eval.iw_samples=100"])):
        done = _script(name, str(run), *args)
        assert done.returncode == 1, done.stderr
        key = args[0].split("=")[0]
        assert done.stderr.startswith(f"error: {key} would change the model or data") and \
            done.stderr.count("\n") == 1, done.stderr
    assert folder_digest(run) == before  # nothing written: no summary change, no evaluation.json, no gaps.json

    done = _script("evaluate", str(run), "eval.iw_samples=7", "--update-summary")
    assert done.returncode == 0, done.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rescored_with"] == ["eval.iw_samples=7"] and summary["test/iw_samples"] == 7
    (run / "gaps.json").write_text("{}")  # an earlier analysis: a typo is still reported first, as a typo
    done = _script("gaps", str(run), "gaps.n_image=4")
    assert done.returncode == 1 and "did you mean gaps.n_images?" in done.stderr, done.stderr


@pytest.mark.slow
def test_precision_check_pairs_float32_and_bfloat16_without_touching_the_run(trained_run, tmp_path):
    before = folder_digest(trained_run)
    out = tmp_path / "check.json"
    proc = _script("precision_check", str(trained_run), "--images", "30", "--samples", "40", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(out.read_text())
    assert (row["images"], row["samples"]) == (30, 40) and "paired difference" in proc.stdout
    assert row["difference"] == pytest.approx(row["nll_bfloat16"] - row["nll_float32"], abs=1e-9)
    assert 0 < row["largest_change"] < 0.5 and row["difference_se"] > 0 and row["nll_mc_se"] > 0
    assert folder_digest(trained_run) == before
    bad = _script("precision_check", str(trained_run), "--images", "0")
    assert bad.returncode == 2 and "--images must be an integer >= 1, got 0" in bad.stderr


def test_the_test_nll_and_the_milestones_use_the_configured_precision(data_root, tmp_path, monkeypatch):
    from rhovae import evaluation, milestones

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # accepted on any CPU for this test
    used = []
    for module in (evaluation, milestones):
        original = module.importance_weighted_estimates

        def recording(*args, original=original, where=module.__name__, **kwargs):
            used.append((where, kwargs["precision"]))
            return original(*args, **kwargs)
        monkeypatch.setattr(module, "importance_weighted_estimates", recording)
    run_experiment(compose([f"dataset.root={data_root}", "logger=none", "trainer.device=cpu", *TINY_OVERRIDES,
                            "trainer.epochs=1", "trainer.milestones=[1]", "eval.milestone_images=10",
                            "eval.milestone_iw_samples=5", "eval.iw_precision=bfloat16"]), tmp_path)
    assert used == [("rhovae.milestones", "bfloat16"), ("rhovae.evaluation", "bfloat16")]


def test_rescoring_names_say_checkpoint_estimator_and_the_settings_that_differ_from_the_runs(tmp_path):
    from rhovae.rescoring import RescoringExists, rescoring_path, unclaimed

    saved = {"eval": {"iw_samples": 1000}, "trainer": {"threads": None}}
    name = lambda *args, **kw: rescoring_path(tmp_path, *args, saved=saved, **kw).name  # noqa: E731
    assert name("evaluation") == "evaluation.json"
    assert name("evaluation", "epoch_1093", overrides=["eval.iw_samples=5000", "trainer.threads=1"]) == \
        "evaluation_epoch_1093_eval.iw_samples=5000.json"
    assert name("evaluation", overrides=["eval.iw_samples=1000"]) == "evaluation.json"  # the run's own value
    assert name("evaluation", "best", "ais", ["ais.steps=300", "ais.chains=8"]) == \
        "evaluation_ais_ais.chains=8,ais.steps=300.json"
    long = name("bdmc", overrides=[f"ais.schedule={'x' * 200}"])
    assert len(long) < 120 and long != name("bdmc", overrides=[f"ais.schedule={'x' * 199}y"])
    taken = tmp_path / "evaluation.json"
    taken.write_text("{}")
    with pytest.raises(RescoringExists, match=r"evaluation.json already holds a re-scoring .* nothing was written"):
        unclaimed(taken)
    assert taken.read_text() == "{}"
