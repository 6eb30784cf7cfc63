"""ELBO surgery and the importance-sampling diagnostics against cases whose answer is known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from helpers import GAUSSIAN_NAMES, FLOW_NAMES
from helpers.models import fit_posterior, tiny_vae
from rhovae.evaluation import importance_weighted_estimates
from rhovae.information import information
from rhovae.posteriors import build_posterior
from rhovae.vae import VAE

D = 3


def vae_with_posterior(posterior: str) -> VAE:
    torch.manual_seed(0)
    encoder = nn.Identity()
    encoder.out_features = 4
    return VAE(encoder, build_posterior(posterior, 4, D), nn.Linear(D, 6), D)


@pytest.mark.parametrize("posterior", GAUSSIAN_NAMES)
def test_a_posterior_that_ignores_the_image_carries_no_information(posterior):
    model = vae_with_posterior(posterior)
    params = model.posterior.local_parameters(torch.randn(1, 4)).detach().expand(200, -1)  # one q for all images
    torch.manual_seed(1)
    info = information(model, params, chunk=64)
    assert abs(info["mutual_information"]) < 1e-6  # q(z|x_n) is the mixture itself (float32 log-densities)
    assert info["marginal_kl"] == pytest.approx(info["kl"], abs=1e-6)


def test_well_separated_posteriors_carry_log_n_nats():
    """Tiny, far-apart Gaussians: each z_n is explained by its own image alone, so I = log N."""
    model = vae_with_posterior("diag")
    n = 50
    loc = 10.0 * torch.randn(n, D)
    raw_std = torch.full((n, D), -8.0)  # softplus(-8) ~ 3e-4
    torch.manual_seed(2)
    info = information(model, torch.cat([loc, raw_std], dim=-1), chunk=16)
    assert info["mutual_information"] == pytest.approx(math.log(n), abs=1e-6)
    assert info["mutual_information_fraction"] == pytest.approx(1.0, abs=1e-6)  # saturated: at its cap
    assert info["kl"] - info["mutual_information"] == pytest.approx(info["marginal_kl"])
    assert sum(info["kl_per_dim"]) == pytest.approx(info["kl"])  # diag's KL is the sum over dimensions


@pytest.mark.parametrize("posterior", FLOW_NAMES)
def test_flows_report_the_kl_but_no_mutual_information(posterior):
    model = vae_with_posterior(posterior)
    info = information(model, model.posterior.local_parameters(torch.randn(20, 4)).detach())
    assert "mutual_information" not in info and info["kl"] > 0


def test_exact_posterior_gives_full_effective_sample_size_and_no_monte_carlo_error():
    """A decoder that ignores z and q = p(z) for every image: every importance weight equals p(x)."""
    torch.manual_seed(0)
    encoder = nn.Linear(6, 4)
    encoder.out_features = 4
    posterior, decoder = build_posterior("diag", 4, D), nn.Linear(D, 6)
    with torch.no_grad():
        for layer in (decoder, posterior.loc, posterior.raw_std):
            layer.weight.zero_()
        posterior.loc.bias.zero_()
        posterior.raw_std.bias.fill_(math.log(math.expm1(1.0 - posterior.min_std)))  # softplus(.) + min_std = 1
    model = VAE(encoder, posterior, decoder, D)
    images = torch.randint(0, 2, (5, 6), dtype=torch.uint8) * 255
    estimates = importance_weighted_estimates(model, images, n_samples=300, chunk=100, batch_size=5)
    torch.testing.assert_close(estimates.ess_fraction, torch.ones(5, dtype=torch.float64))
    assert torch.all(estimates.mc_variance.abs() < 1e-9)


def test_monte_carlo_variance_matches_the_spread_of_repeated_estimates():
    model = tiny_vae("diag")
    images = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.uint8) * 255
    fit_posterior(model, images.float() / 255, steps=100)
    repeats = torch.stack([importance_weighted_estimates(model, images, n_samples=200, chunk=200, eval_seed=seed).log_px
                           for seed in range(200)])
    predicted = importance_weighted_estimates(model, images, n_samples=200, chunk=200, eval_seed=999)
    ratio = repeats.var(0) / predicted.mc_variance
    assert torch.all((ratio > 0.6) & (ratio < 1.6)), ratio  # the delta method, within the noise of 200 repeats
    assert torch.all((predicted.ess_fraction > 0) & (predicted.ess_fraction < 1))


def test_mutual_information_over_a_subset_of_draws_is_the_same_estimate_from_fewer_terms():
    """I over the first M draws against the mixture of all N images: the mean of the first M per-image terms of the
    full estimate, each computed here with torch.distributions."""
    model = vae_with_posterior("diag")
    params = model.posterior.local_parameters(torch.randn(40, 4)).detach()
    torch.manual_seed(3)
    subset = information(model, params, chunk=16, outer=7)
    torch.manual_seed(3)
    q = model.posterior.distribution(params)
    z = q.rsample()
    components = torch.distributions.Independent(torch.distributions.Normal(q.mean, q.stddev), 1)
    terms = [q.log_prob(z)[n].double() - (torch.logsumexp(components.log_prob(z[n]).double(), 0) - math.log(40))
             for n in range(7)]
    assert subset["mutual_information"] == pytest.approx(torch.stack(terms).mean().item(), abs=1e-5)
    assert subset["mutual_information_fraction"] == pytest.approx(subset["mutual_information"] / math.log(40))
    torch.manual_seed(3)
    assert information(model, params, chunk=16)["kl"] == subset["kl"]  # the KL still averages over every image
