"""Every posterior module against independent computations, through the interface the VAE uses."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from rhovae.errors import ConfigError
from rhovae.posteriors import POSTERIORS, build_posterior
from rhovae.vae import standard_normal_prior

FEATURES, D, B = 16, 5, 3


def posterior_and_features(name: str, seed: int = 0, scale: float = 1.0):
    torch.manual_seed(seed)
    post = build_posterior(name, FEATURES, D).double()
    h = scale * torch.randn(B, FEATURES, dtype=torch.float64)
    return post, h


def as_mvn(q) -> MultivariateNormal:
    """The Gaussian q as a full-covariance MultivariateNormal, from its mean and covariance only."""
    cov = q.covariance_matrix if hasattr(q, "covariance_matrix") else torch.diag_embed(q.variance)
    return MultivariateNormal(q.mean, covariance_matrix=cov)


@pytest.mark.parametrize("name", sorted(POSTERIORS))
def test_sample_shapes_for_batch_and_sample_dimensions(name):
    post, h = posterior_and_features(name)
    q = post(h)
    z, log_q = post.rsample_with_log_prob(q)
    assert z.shape == (B, D) and log_q.shape == (B,)
    z, log_q = post.rsample_with_log_prob(q, (7,))
    assert z.shape == (7, B, D) and log_q.shape == (7, B)
    assert post.kl(q, z, log_q, standard_normal_prior(D, dtype=torch.float64)).shape == (B,)


@pytest.mark.parametrize("name", sorted(POSTERIORS))
def test_log_prob_of_own_samples_matches_multivariate_normal(name):
    post, h = posterior_and_features(name)
    q = post(h)
    z, log_q = post.rsample_with_log_prob(q, (11,))
    torch.testing.assert_close(log_q, as_mvn(q).log_prob(z), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", sorted(POSTERIORS))
def test_analytic_kl_agrees_with_monte_carlo(name):
    post, h = posterior_and_features(name, seed=3)
    q = post(h)
    prior = standard_normal_prior(D, dtype=torch.float64)
    with torch.no_grad():
        z, log_q = post.rsample_with_log_prob(q, (100_000,))
        terms = log_q - prior.log_prob(z)
        mc, se = terms.mean(0), terms.std(0) / math.sqrt(len(terms))
        analytic = post.kl(q, z, log_q, prior)
    assert torch.all((mc - analytic).abs() < 3 * se), (mc, analytic, se)


@pytest.mark.parametrize("name", sorted(POSTERIORS))
def test_gradients_reach_every_parameter(name):
    post, h = posterior_and_features(name)
    q = post(h)
    z, log_q = post.rsample_with_log_prob(q, (2,))
    kl = post.kl(q, z, log_q, standard_normal_prior(D, dtype=torch.float64))
    (z.pow(2).sum() + log_q.sum() + kl.sum()).backward()
    for pname, p in post.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", sorted(POSTERIORS))
@pytest.mark.parametrize("scale", [1e2, 1e3, -1e3])
def test_finite_for_large_encoder_features(name, scale):
    post, h = posterior_and_features(name, scale=scale)
    post = post.float()
    q = post(h.float())
    z, log_q = post.rsample_with_log_prob(q, (2,))
    kl = post.kl(q, z, log_q, standard_normal_prior(D))
    for t in (z, log_q, kl):
        assert torch.isfinite(t).all()
    (log_q.sum() + kl.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in post.parameters())


def test_unknown_posterior_and_option_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"posterior='nope' is not known; accepted: diag, rho"):
        build_posterior("nope", FEATURES, D)
    with pytest.raises(ConfigError, match=r"posterior='rho' has no option flow_length; accepted: min_std"):
        build_posterior("rho", FEATURES, D, flow_length=3)
