"""The published rho-VAE code's behaviour, reproduced exactly, with honest reported numbers."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from rhovae.errors import ConfigError
from rhovae.posteriors import PublishedCodeRhoPosterior, RhoPosterior, build_posterior
from rhovae.vae import VAE, standard_normal_prior

F_, D, B = 8, 5, 6


def published(seed=0):
    torch.manual_seed(seed)
    post = build_posterior("rho", F_, D, variant="published_code").double()
    h = torch.randn(B, F_, dtype=torch.float64)
    return post, h, post(h)


def test_variant_selects_the_class_and_rejects_unknown_ones():
    assert type(build_posterior("rho", F_, D)) is RhoPosterior
    assert type(build_posterior("rho", F_, D, variant="published_code")) is PublishedCodeRhoPosterior
    with pytest.raises(ConfigError, match="posterior.variant='typo' is not known; accepted: paper, published_code"):
        build_posterior("rho", F_, D, variant="typo")


def test_sampler_is_the_random_walk_without_rho():
    post, h, q = published()
    torch.manual_seed(3)
    z, log_q = post.rsample_with_log_prob(q)
    torch.manual_seed(3)
    e = torch.randn(B, D, dtype=torch.float64)
    sd = (0.5 * q.log_scale).exp()[:, None]
    torch.testing.assert_close(z, q.loc + torch.cumsum(sd * e, dim=-1))  # z_j = z_(j-1) + sqrt(s) e_j
    idx = torch.arange(D)
    cov = q.log_scale.exp()[:, None, None] * (torch.minimum(idx[:, None], idx[None]) + 1).double()
    torch.testing.assert_close(q.covariance_matrix, cov)
    torch.testing.assert_close(log_q, MultivariateNormal(q.loc, covariance_matrix=cov).log_prob(z))


def test_reported_kl_is_the_true_kl_of_the_random_walk():
    post, h, q = published()
    s, mu = q.log_scale.exp(), q.loc
    closed_form = 0.5 * (s * D * (D + 1) / 2 + mu.pow(2).sum(-1) - D - D * q.log_scale)
    kl = post.kl(q, None, None, standard_normal_prior(D, dtype=torch.float64))
    torch.testing.assert_close(kl, closed_form)
    eye = torch.eye(D, dtype=torch.float64)
    torch.testing.assert_close(kl, kl_divergence(MultivariateNormal(mu, q.covariance_matrix),
                                                 MultivariateNormal(torch.zeros(D, dtype=torch.float64), eye)))


def test_training_kl_sums_mu_over_the_batch_but_averages_s_and_rho():
    post, h, q = published()
    kl = post.kl(q, None, None, standard_normal_prior(D, dtype=torch.float64))
    rho, s = q.rho, q.log_scale.exp()
    # the published loss on one batch, written out as that code computes it
    batch_kl = 0.5 * (q.loc.pow(2).sum() + (D * s - D - D * s.log() - (D - 1) * torch.log(1 - rho ** 2)).mean())
    torch.testing.assert_close(post.objective_kl(q, kl).sum(), batch_kl)


def test_vae_trains_on_the_published_term_but_reports_the_true_one():
    torch.manual_seed(0)
    encoder = torch.nn.Identity()
    post = build_posterior("rho", 784, D, variant="published_code")
    model = VAE(encoder, post, torch.nn.Linear(D, 784), D)
    x = torch.bernoulli(torch.rand(B, 784))
    torch.manual_seed(1)
    loss, terms = model.loss(x)
    torch.manual_seed(1)
    true_terms = model.elbo_terms(x)
    torch.testing.assert_close(terms.kl, true_terms.kl.detach())
    torch.testing.assert_close(loss, -(true_terms.recon - true_terms.objective_kl).mean())
    assert not torch.allclose(true_terms.objective_kl, true_terms.kl)
    assert math.isfinite(loss.item())
