"""The inference-gap estimator against exact answers: a decoder that ignores z, and d = 2 grid integration."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from helpers import POSTERIOR_NAMES, flows_in_slow_tier, REPO, TINY_OVERRIDES, folder_digest, subprocess_env, train
from helpers.models import D, P, exact_log_px, fit_posterior, tiny_vae
from rhovae.gaps import GapSettings, inference_gaps
from rhovae.posteriors import build_posterior
from rhovae.vae import VAE, bernoulli_log_likelihood

IMAGES = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 0, 1]],
                      dtype=torch.uint8) * 255


def test_a_decoder_that_ignores_z_has_no_approximation_gap_and_an_exact_log_px():
    """p(x|z) = p(x): the true posterior is the prior, which diag contains, and log p(x) is the decoder's bias alone."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(P, 8), nn.Tanh())
    encoder.out_features = 8
    decoder = nn.Linear(D, P)
    with torch.no_grad():
        decoder.weight.zero_()
    model = VAE(encoder, build_posterior("diag", 8, D), decoder, D)
    settings = GapSettings(n_images=4, elbo_samples=500, steps=400, lr=0.05, iw_samples=2000, batch_size=4)
    summary, arrays = inference_gaps(model, IMAGES, settings)

    exact = bernoulli_log_likelihood(decoder.bias.detach(), IMAGES.float() / 255).double()
    torch.testing.assert_close(arrays["log_px"], exact, atol=2e-3, rtol=0)
    assert arrays["approximation_gap"].abs().max() < 0.01  # the optimum q* is the prior: ELBO(q*) = log p(x)
    assert torch.all(arrays["amortization_gap"] > 0.05)  # the untrained encoder's q is not the prior
    assert summary["improved_fraction"] == 1.0 and summary["n_images"] == 4
    assert summary["approximation_gap"] == pytest.approx(arrays["approximation_gap"].mean().item())


@pytest.mark.parametrize("posterior", flows_in_slow_tier(POSTERIOR_NAMES))
def test_gaps_order_and_log_px_match_grid_integration_in_two_dimensions(posterior):
    """elbo_amortized <= elbo_local <= log p(x) per image within Monte Carlo error, and log_px is the grid's value."""
    model = tiny_vae(posterior)
    x = IMAGES.float() / 255
    fit_posterior(model, x, steps=100)  # a sensible but imperfect encoder: something left to amortize
    exact = exact_log_px(model, x)
    settings = GapSettings(n_images=4, elbo_samples=4000, steps=300, lr=0.02, iw_samples=20_000, iw_chunk=5000,
                           batch_size=4)
    _, arrays = inference_gaps(model, IMAGES, settings)

    torch.testing.assert_close(arrays["log_px"], exact, atol=0.02, rtol=0)
    assert torch.all(arrays["elbo_amortized"] <= arrays["elbo_local"])
    assert torch.all(arrays["elbo_local"] <= exact + 4 * arrays["elbo_local_se"])  # a lower bound on log p(x)
    assert torch.all(arrays["amortization_gap"] >= 0) and arrays["improved"].any()
    assert torch.all(arrays["approximation_gap"] > -0.02 - 4 * arrays["elbo_local_se"])


@pytest.mark.slow
def test_gaps_script_and_eval_gaps_write_the_analysis_and_summarize_shows_it(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    gap_overrides = ["gaps.n_images=8", "gaps.steps=20", "gaps.elbo_samples=20", "gaps.iw_samples=50",
                     "gaps.batch_size=4"]
    proc = train(["-m", "posterior=diag,iaf", f"dataset.root={data_root}", *TINY_OVERRIDES, "logger=none",
                  "trainer.epochs=1", "trainer.milestones=[1]", "eval.milestone_images=8", "eval.gaps=true",
                  *gap_overrides, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for run in sorted(sweep.glob("*_mnist_*")):
        summary = json.loads((run / "summary.json").read_text())
        gaps = json.loads((run / "gaps.json").read_text())
        assert gaps["n_images"] == 8 and gaps["settings"]["steps"] == 20
        assert summary["gaps/approximation_gap"] == gaps["approximation_gap"]
        arrays = np.load(run / "gaps.npz")
        assert arrays["log_px"].shape == (8,)
        assert np.allclose(arrays["approximation_gap"] + arrays["amortization_gap"],
                           arrays["log_px"] - arrays["elbo_amortized"])

    # afterwards, on a finished run: refused over an existing analysis, replaced when asked
    run = next(sweep.glob("0_*"))
    before = folder_digest(run)
    script = [sys.executable, str(REPO / "scripts" / "gaps.py"), str(run), "gaps.n_images=4", *gap_overrides[1:]]
    refused = subprocess.run(script, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and refused.stderr.strip() == (
        f"error: {run / 'gaps.json'} exists; nothing was changed. Pass --overwrite to replace it")
    assert folder_digest(run) == before
    done = subprocess.run([*script, "--overwrite"], env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((run / "gaps.json").read_text())["n_images"] == 4
    changed = {k for k in folder_digest(run) if folder_digest(run)[k] != before.get(k)}
    assert changed == {"gaps.json", "gaps.npz"}  # the summary and everything else stay as they were

    # a milestone's model: its own files, with its epoch, beside the run's; an unsaved checkpoint is refused
    milestone = subprocess.run([*script, "--checkpoint", "epoch_1"], env=subprocess_env(), capture_output=True,
                               text=True, timeout=300)
    assert milestone.returncode == 0, milestone.stderr[-2000:]
    at_milestone = json.loads((run / "gaps_epoch_1.json").read_text())
    assert at_milestone["checkpoint"] == "epoch_1" and at_milestone["epoch"] == 1 and at_milestone["n_images"] == 4
    assert np.load(run / "gaps_epoch_1.npz")["log_px"].shape == (4,)
    assert json.loads((run / "gaps.json").read_text())["n_images"] == 4  # the run's own analysis is untouched
    before = folder_digest(run)
    unsaved = subprocess.run([*script, "--checkpoint", "epoch_7"], env=subprocess_env(), capture_output=True,
                             text=True, timeout=300)
    assert unsaved.returncode == 1 and unsaved.stderr.strip() == (
        f"error: --checkpoint 'epoch_7' is not saved in {run}; saved: best, last, epoch_1")
    again = subprocess.run([*script, "--checkpoint", "epoch_1"], env=subprocess_env(), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 1 and again.stderr.strip() == (
        f"error: {run / 'gaps_epoch_1.json'} exists; nothing was changed. Pass --overwrite to replace it")
    assert folder_digest(run) == before

    summarized = subprocess.run([sys.executable, str(REPO / "scripts" / "summarize.py"), str(sweep)],
                                env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert summarized.returncode == 0, summarized.stderr
    md = (sweep / "results.md").read_text()
    assert "approximation gap" in md and "amortization gap" in md and (sweep / "gaps.png").stat().st_size > 1000


def test_without_optimization_the_amortization_gap_is_zero_up_to_its_standard_error():
    """steps=0: the local optimum is the encoder's own vector, so the true amortization gap is exactly 0. Scoring
    the better of two noisy estimates with the estimates that chose it would put it at about 0.56 standard deviations
    of one estimate per image, many standard errors of the mean over 256 images."""
    model = tiny_vae("diag")
    images = torch.randint(0, 2, (256, P), generator=torch.Generator().manual_seed(0), dtype=torch.uint8) * 255
    fit_posterior(model, images.float() / 255, steps=50)
    settings = GapSettings(n_images=256, elbo_samples=25, steps=0, iw_samples=200, iw_chunk=200, batch_size=64)
    summary, arrays = inference_gaps(model, images, settings)
    assert abs(summary["amortization_gap"]) < 3 * summary["amortization_gap_se"], summary
    assert arrays["elbo_local_se"].mean() > 0.02  # noisy enough per image for a selection bias to show
    assert summary["log_px"] >= summary["log_px_tenth_k"] - 0.05  # K = 200 is no worse than K = 20 on average
    assert 0 <= summary["pareto_k_above_0_7"] <= 1 and arrays["k_hat"].shape == (256,)
