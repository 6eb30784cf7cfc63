"""The training objectives the VAE report describes: beta-VAE and free bits, beside the true ELBO that is reported."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import POSTERIOR_NAMES, TINY_OVERRIDES, compose
from rhovae.experiment import run_experiment
from rhovae.posteriors import build_posterior
from rhovae.tracking import read_jsonl
from rhovae.trainer import kl_weight
from rhovae.vae import VAE

P, D = 12, 4


def small_vae(posterior: str, decoder_weight: float = 1.0) -> VAE:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(P, 16), nn.Tanh())
    encoder.out_features = 16
    decoder = nn.Linear(D, P)
    with torch.no_grad():
        decoder.weight.mul_(decoder_weight)
    return VAE(encoder, build_posterior(posterior, 16, D), decoder, D)


@pytest.mark.parametrize("posterior", POSTERIOR_NAMES)
def test_beta_one_without_free_bits_is_exactly_the_negative_elbo(posterior):
    model, x = small_vae(posterior), torch.rand(32, P).bernoulli()
    torch.manual_seed(1)
    loss, _ = model.loss(x)
    torch.manual_seed(1)
    terms = model.elbo_terms(x)
    assert torch.equal(loss, -(terms.recon - 1.0 * terms.objective_kl).mean())
    torch.manual_seed(1)
    beta_loss, _ = model.loss(x, beta=4.0)
    assert torch.equal(beta_loss, -(terms.recon - 4.0 * terms.objective_kl).mean())


@pytest.mark.parametrize("posterior", POSTERIOR_NAMES)
def test_kl_groups_add_up_to_the_kl(posterior):
    model, x = small_vae(posterior), torch.rand(32, P).bernoulli()
    terms = model.elbo_terms(x, kl_groups=True)
    torch.testing.assert_close(terms.kl_groups.sum(-1), terms.objective_kl)
    assert terms.kl_groups.shape == (32, D if posterior == "diag" else 1)  # only diag's KL factorizes


def test_free_bits_give_no_gradient_to_a_group_below_its_threshold():
    model = small_vae("diag", decoder_weight=0.0)  # p(x|z) ignores z: every gradient on the heads is the KL's
    x = torch.rand(64, P).bernoulli()
    with torch.no_grad():
        per_dim = model.elbo_terms(x, kl_groups=True).kl_groups.mean(0)
    ordered = per_dim.sort().values
    threshold = (ordered[1] + ordered[2]).item() / 2  # strictly between two groups' KLs
    below = per_dim < threshold
    assert below.any() and (~below).any()
    loss, _ = model.loss(x, free_bits=threshold)
    loss.backward()
    for head in (model.posterior.loc, model.posterior.raw_std):
        grad = head.weight.grad.abs().sum(-1)  # one row per latent dimension
        assert torch.all(grad[below] == 0) and torch.all(grad[~below] > 0)


def test_warm_up_rises_to_beta():
    assert kl_weight(0, 10, 0, beta=4.0) == 4.0
    assert kl_weight(10, 10, 2, beta=4.0) == 2.0
    assert kl_weight(25, 10, 2, beta=4.0) == 4.0


def test_a_beta_vae_trains_on_its_objective_and_reports_the_true_elbo(data_root, tmp_path):
    cfg = compose([f"dataset.root={data_root}", "logger=none", "trainer.device=cpu", *TINY_OVERRIDES,
                   "trainer.epochs=1", "objective.beta=4", "objective.free_bits=0.5"])
    summary = run_experiment(cfg, tmp_path)
    row = read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert row["beta"] == 4.0
    assert row["train/loss"] > -(row["train/recon"] - row["train/kl"])  # the objective is not the ELBO ...
    assert abs(summary["test/elbo"] - (summary["test/recon"] - summary["test/kl"])) < 1e-3  # ... the report is
    assert summary["config"]["objective"] == {"beta": 4.0, "free_bits": 0.5}
