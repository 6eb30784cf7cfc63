"""AR1Normal against independent computations: MultivariateNormal, Monte Carlo, and the plain recursion."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from rhovae.posteriors import AR1Normal, ar1_scan, log1m_tanh_sq
from rhovae.vae import standard_normal_prior

D = 6


def make(batch=(3,), d=D, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(*batch, d, generator=g, dtype=dtype)
    rho_atanh = 1.5 * torch.randn(*batch, generator=g, dtype=dtype)
    log_scale = 0.5 * torch.randn(*batch, generator=g, dtype=dtype)
    return AR1Normal(loc, log_scale=log_scale, rho_atanh=rho_atanh)


def reference_covariance(q: AR1Normal) -> torch.Tensor:
    """s * rho^|i-j| built entry by entry, independent of the class's own matrix code."""
    cov = torch.empty(*q.batch_shape, q.dim, q.dim, dtype=q.loc.dtype)
    s = q.log_scale.exp()
    for i in range(q.dim):
        for j in range(q.dim):
            cov[..., i, j] = s * q.rho ** abs(i - j)
    return cov


def test_covariance_and_scale_tril_match_the_ar1_definition():
    q = make()
    torch.testing.assert_close(q.covariance_matrix, reference_covariance(q))
    torch.testing.assert_close(q.scale_tril @ q.scale_tril.mT, q.covariance_matrix)
    assert torch.all(torch.triu(q.scale_tril, diagonal=1) == 0)


def test_empirical_covariance_of_samples_matches_covariance_matrix():
    torch.manual_seed(1)
    q = make(batch=(2,))
    n = 200_000
    z = q.rsample((n,))
    centred = z - q.loc
    empirical = torch.einsum("nbi,nbj->bij", centred, centred) / n
    cov = q.covariance_matrix
    # standard error of a product-moment: sqrt(S_ii S_jj + S_ij^2) / sqrt(n); allow 5 of them
    se = torch.sqrt(cov.diagonal(dim1=-2, dim2=-1)[..., :, None] * cov.diagonal(dim1=-2, dim2=-1)[..., None, :]
                    + cov ** 2) / math.sqrt(n)
    assert torch.all((empirical - cov).abs() < 5 * se)
    torch.testing.assert_close(z.mean(0), q.loc, atol=5e-2, rtol=0)


def test_log_prob_equals_multivariate_normal():
    q = make(batch=(4,))
    mvn = MultivariateNormal(q.loc, covariance_matrix=reference_covariance(q))
    z, log_q = q.rsample_with_log_prob((7,))
    torch.testing.assert_close(q.log_prob(z), mvn.log_prob(z), rtol=1e-5, atol=0)
    torch.testing.assert_close(log_q, mvn.log_prob(z), rtol=1e-5, atol=0)
    torch.testing.assert_close(q.entropy(), mvn.entropy(), rtol=1e-5, atol=0)


def test_log_prob_float32_matches_within_1e5_relative():
    q64 = make(batch=(5,))
    q = AR1Normal(q64.loc.float(), rho=q64.rho.float(), log_scale=q64.log_scale.float())
    mvn = MultivariateNormal(q64.loc, covariance_matrix=reference_covariance(q64))
    z = q.rsample((3,))
    torch.testing.assert_close(q.log_prob(z).double(), mvn.log_prob(z.double()), rtol=1e-5, atol=0)


def test_analytic_kl_equals_multivariate_normal_kl():
    q = make(batch=(5,))
    mvn = MultivariateNormal(q.loc, covariance_matrix=reference_covariance(q))
    prior = MultivariateNormal(torch.zeros(D, dtype=torch.float64), torch.eye(D, dtype=torch.float64))
    expected = kl_divergence(mvn, prior)
    torch.testing.assert_close(kl_divergence(q, standard_normal_prior(D, dtype=torch.float64)), expected)
    # and the closed form written in DESIGN.md
    s = q.log_scale.exp()
    design = 0.5 * ((q.loc ** 2).sum(-1) + D * s - D - D * q.log_scale - (D - 1) * torch.log1p(-q.rho ** 2))
    torch.testing.assert_close(design, expected)


def test_kl_to_a_non_standard_diagonal_gaussian():
    q = make(batch=(3,))
    g = torch.Generator().manual_seed(5)
    m, sd = torch.randn(D, generator=g, dtype=torch.float64), torch.rand(D, generator=g, dtype=torch.float64) + 0.5
    p = torch.distributions.Independent(torch.distributions.Normal(m, sd), 1)
    expected = kl_divergence(MultivariateNormal(q.loc, covariance_matrix=reference_covariance(q)),
                             MultivariateNormal(m, covariance_matrix=torch.diag(sd ** 2)))
    torch.testing.assert_close(kl_divergence(q, p), expected)


def test_rho_zero_is_isotropic_gaussian():
    loc = torch.randn(3, D, dtype=torch.float64)
    log_scale = torch.tensor([0.0, 0.7, -1.2], dtype=torch.float64)
    q = AR1Normal(loc, log_scale=log_scale, rho_atanh=torch.zeros(3, dtype=torch.float64))
    iso = torch.distributions.Independent(torch.distributions.Normal(loc, (0.5 * log_scale).exp()[:, None]), 1)
    torch.testing.assert_close(q.covariance_matrix, torch.diag_embed(iso.variance))
    z = q.rsample((4,))
    torch.testing.assert_close(q.log_prob(z), iso.log_prob(z))
    torch.manual_seed(3)
    a = q.rsample()
    torch.manual_seed(3)
    b = loc + (0.5 * log_scale).exp()[:, None] * torch.randn(3, D, dtype=torch.float64)
    torch.testing.assert_close(a, b)


def test_sampler_follows_the_recursion_with_innovation_scale():
    """z_0 = mu_0 + sqrt(s) e_0, z_j - mu_j = rho (z_(j-1) - mu_(j-1)) + sqrt(s (1 - rho^2)) e_j, with the same e."""
    q = make(batch=(3,))
    torch.manual_seed(7)
    z = q.rsample((2,))
    torch.manual_seed(7)
    e = torch.randn(2, 3, D, dtype=torch.float64)
    s, rho = q.log_scale.exp(), q.rho
    x = [s.sqrt() * e[..., 0]]
    for j in range(1, D):
        x.append(rho * x[-1] + torch.sqrt(s * (1 - rho ** 2)) * e[..., j])
    torch.testing.assert_close(z, q.loc + torch.stack(x, -1))


@pytest.mark.parametrize("d", [1, 2, 5, 8, 33])
def test_ar1_scan_matches_a_python_loop(d):
    b = torch.randn(4, d, dtype=torch.float64)
    rho = torch.tensor([0.0, 0.5, -0.9, 0.999], dtype=torch.float64)
    expected = [b[:, 0]]
    for j in range(1, d):
        expected.append(rho * expected[-1] + b[:, j])
    torch.testing.assert_close(ar1_scan(b, rho), torch.stack(expected, -1))


def test_sample_shapes():
    q = make(batch=(5,))
    assert q.rsample().shape == (5, D)
    assert q.rsample((7,)).shape == (7, 5, D)
    assert q.rsample((2, 3)).shape == (2, 3, 5, D)
    assert q.log_prob(q.rsample((7,))).shape == (7, 5)
    assert q.expand((4, 5)).rsample().shape == (4, 5, D)


def test_rho_and_rho_atanh_parametrizations_agree():
    q = make()
    same = AR1Normal(q.loc, rho=q.rho, log_scale=q.log_scale)
    z = q.rsample((3,))
    torch.testing.assert_close(same.log_prob(z), q.log_prob(z))
    with pytest.raises(ValueError, match="exactly one"):
        AR1Normal(q.loc, rho=q.rho, log_scale=q.log_scale, rho_atanh=q.rho)


def test_log1m_tanh_sq_is_exact_and_finite():
    a = torch.linspace(-8, 8, 101, dtype=torch.float64)
    torch.testing.assert_close(log1m_tanh_sq(a), torch.log1p(-torch.tanh(a) ** 2))
    big = torch.tensor([50.0, -50.0, 1e4])
    assert torch.tanh(big[:1]).item() == 1.0  # float32 rounds rho to 1 here ...
    assert torch.isfinite(log1m_tanh_sq(big)).all()  # ... yet log(1 - rho^2) stays finite
    torch.testing.assert_close(log1m_tanh_sq(big[:2]), torch.full((2,), 2 * (math.log(2) - 50.0)))


@pytest.mark.parametrize("pre", [50.0, -50.0, 20.0, -20.0])
def test_no_nan_or_inf_for_extreme_pre_activations(pre):
    loc = torch.randn(4, D, requires_grad=True)
    rho_atanh = torch.full((4,), pre, requires_grad=True)
    log_scale = torch.tensor([-50.0, 0.0, 10.0, 50.0], requires_grad=True)
    q = AR1Normal(loc, log_scale=log_scale, rho_atanh=rho_atanh)
    z, log_q = q.rsample_with_log_prob((3,))
    kl = kl_divergence(q, standard_normal_prior(D))
    for t in (z, log_q, kl, q.entropy(), q.log_prob(z.detach())):
        assert torch.isfinite(t).all()
    (z.sum() + log_q.sum() + kl.sum()).backward()
    for p in (loc, rho_atanh, log_scale):
        assert torch.isfinite(p.grad).all()
