"""Every posterior module against independent computations, through the interface the VAE uses."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, LowRankMultivariateNormal, MultivariateNormal, Normal

from helpers import (FLOW_CHOICES as FLOWS, GAUSSIAN_CHOICES as GAUSSIANS, POSTERIOR_CHOICES, POSTERIOR_NAMES,
                     build_choice, compose, config_options)
from rhovae.errors import ConfigError
from rhovae.posteriors import AR1Normal, POSTERIORS, FlowDistribution, build_posterior, planar_step
from rhovae.posteriors.rho_scaled import ScaledAR1Normal
from rhovae.posteriors.sylvester import householder_product, orthonormal_columns, sylvester_step
from rhovae.vae import standard_normal_prior

FEATURES, D, B = 16, 5, 3
# rho_published_code samples a random walk that ignores rho (rhovae/posteriors/published_rho.py), so its rho head
# gets gradients only through the training loss's published KL term (tests/test_published_rho.py)
SAMPLED_BY_EVERY_HEAD = [c for c in POSTERIOR_CHOICES if c != "rho_published_code"]


def posterior_and_features(name: str, seed: int = 0, scale: float = 1.0, **options):
    torch.manual_seed(seed)
    post = build_choice(name, FEATURES, D, **options).double()
    with torch.no_grad():  # heads initialised to zero (fullcov's off-diagonal) get random values, so they count
        for p in post.parameters():
            if not p.any():
                p.normal_(0.0, 0.2)
    h = scale * torch.randn(B, FEATURES, dtype=torch.float64)
    return post, h


def as_mvn(q) -> MultivariateNormal:
    """The Gaussian q as a full-covariance MultivariateNormal, from its mean and covariance only."""
    cov = q.covariance_matrix if hasattr(q, "covariance_matrix") else torch.diag_embed(q.variance)
    return MultivariateNormal(q.mean, covariance_matrix=cov)


@pytest.mark.parametrize("name", POSTERIOR_CHOICES)
def test_sample_shapes_for_batch_and_sample_dimensions(name):
    post, h = posterior_and_features(name)
    q = post(h)
    z, log_q = post.rsample_with_log_prob(q)
    assert z.shape == (B, D) and log_q.shape == (B,)
    z, log_q = post.rsample_with_log_prob(q, (7,))
    assert z.shape == (7, B, D) and log_q.shape == (7, B)
    assert post.kl(q, z, log_q, standard_normal_prior(D, dtype=torch.float64)).shape == (B,)


def test_every_registered_posterior_has_a_config_and_every_config_a_posterior():
    assert {"diag", "rho", "fullcov", "planar", "iaf"} <= set(POSTERIORS)  # the five the project compares
    named = {compose([f"posterior={option}"]).posterior.name for option in config_options("posterior")}
    assert named == set(POSTERIOR_NAMES)
    assert set(GAUSSIANS) >= {"diag", "rho", "fullcov"} and set(FLOWS) >= {"planar", "iaf"}


@pytest.mark.parametrize("name", GAUSSIANS)
def test_log_prob_of_own_samples_matches_multivariate_normal(name):
    post, h = posterior_and_features(name)
    q = post(h)
    z, log_q = post.rsample_with_log_prob(q, (11,))
    torch.testing.assert_close(log_q, as_mvn(q).log_prob(z), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name,options", [(n, {}) for n in FLOWS] + [("sylvester", {"ortho_vectors": 2})],
                         ids=[*FLOWS, "sylvester-ortho_vectors=2"])
def test_flow_log_prob_is_base_density_minus_log_det_of_autograd_jacobian(name, options):
    post, h = posterior_and_features(name, seed=2, **options)
    with torch.no_grad():  # make the flow far from the identity, so the test has something to see
        for p in post.parameters():
            p.mul_(3.0)
    q = post(h)
    assert isinstance(q, FlowDistribution)
    torch.manual_seed(11)
    z, log_q = post.rsample_with_log_prob(q)
    torch.manual_seed(11)
    z0 = q.base.rsample()

    def flow(x):
        for step in q.steps:
            x, _ = step(x)
        return x

    torch.testing.assert_close(flow(z0), z)
    jac = torch.autograd.functional.jacobian(flow, z0)  # [B, d, B, d]; samples do not interact
    for b in range(B):
        block = jac[b, :, b, :]
        expected = q.base.log_prob(z0)[b] - torch.linalg.slogdet(block).logabsdet
        torch.testing.assert_close(log_q[b], expected, rtol=1e-4, atol=1e-4)
        others = torch.cat([jac[b, :, :b], jac[b, :, b + 1:]], dim=1)
        assert torch.all(others == 0)


@pytest.mark.parametrize("name", GAUSSIANS)
def test_analytic_kl_agrees_with_monte_carlo(name):
    """|MC - exact| < 5 standard errors for each of B images: a correct KL fails with probability about 1.7e-6 (two-
    sided normal tail at 5 sigma, times B = 3), so a new posterior never fails it by bad luck, while a KL off by
    more than 5 standard errors (here about 0.1 nats) still fails."""
    post, h = posterior_and_features(name, seed=3)
    q = post(h)
    prior = standard_normal_prior(D, dtype=torch.float64)
    with torch.no_grad():
        z, log_q = post.rsample_with_log_prob(q, (100_000,))
        terms = log_q - prior.log_prob(z)
        mc, se = terms.mean(0), terms.std(0) / math.sqrt(len(terms))
        analytic = post.kl(q, z, log_q, prior)
    assert torch.all((mc - analytic).abs() < 5 * se), (mc, analytic, se)


@pytest.mark.parametrize("name", SAMPLED_BY_EVERY_HEAD)
def test_gradients_reach_every_parameter(name):
    post, h = posterior_and_features(name)
    q = post(h)
    z, log_q = post.rsample_with_log_prob(q, (2,))
    kl = post.kl(q, z, log_q, standard_normal_prior(D, dtype=torch.float64))
    (z.pow(2).sum() + log_q.sum() + kl.sum()).backward()
    for pname, p in post.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", SAMPLED_BY_EVERY_HEAD)
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


@pytest.mark.parametrize("name", FLOWS)
def test_flow_kl_is_the_monte_carlo_estimate(name):
    post, h = posterior_and_features(name, seed=4)
    q = post(h)
    prior = standard_normal_prior(D, dtype=torch.float64)
    z, log_q = post.rsample_with_log_prob(q)
    torch.testing.assert_close(post.kl(q, z, log_q, prior), log_q - prior.log_prob(z))
    post.kl_samples = 20_000
    with torch.no_grad():
        many = post.kl(q, z, log_q, prior)
        z_ref, log_q_ref = post.rsample_with_log_prob(q, (20_000,))
        terms = log_q_ref - prior.log_prob(z_ref)
    se = terms.std(0) / math.sqrt(len(terms))
    assert torch.all((many - terms.mean(0)).abs() < 6 * se) and torch.all(many > 0)


def test_made_is_autoregressive_in_the_order_of_each_step():
    post, h = posterior_and_features("iaf")
    context = post.context(h[:1])
    orders = []
    for step in post.steps:
        arn = step.nn
        order = arn.permutation
        orders.append(order)
        x = torch.randn(1, D, dtype=torch.float64)
        for output in range(2):  # (m, s)
            jac = torch.autograd.functional.jacobian(lambda v: arn(v, context=context)[output], x)[0, :, 0, :]
            in_order = jac[order][:, order]
            assert torch.all(torch.triu(in_order) == 0)  # strictly lower-triangular in the step's order
            assert torch.tril(in_order, diagonal=-1).abs().sum() > 0
    assert torch.equal(orders[0], torch.arange(D)) and torch.equal(orders[1], torch.arange(D).flip(0))


def _u_hat(u, w):
    """The invertibility re-parametrization as written in the planar-flow paper: u + (m(w.u) - w.u) w / |w|^2."""
    alpha = (u * w).sum(-1, keepdim=True)
    return u + (-1 + torch.nn.functional.softplus(alpha) - alpha) * w / (w * w).sum(-1, keepdim=True)


def _heads(case: str, dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, D, generator=g, dtype=dtype)
    u = torch.randn(64, D, generator=g, dtype=dtype)
    if case == "large":
        u, w = 1e3 * u, 1e3 * w
    elif case == "anti_aligned":  # w.u hugely negative: without the re-parametrization the map folds space
        u, w = -1e3 * w, 1e2 * w
    elif case == "aligned":
        u, w = 1e3 * w, 1e2 * w
    b = torch.randn(64, 1, generator=g, dtype=dtype)
    z = torch.randn(16, 64, D, generator=g, dtype=dtype)
    return u, w, b, z


def _applied_u_hat(u, w):
    """The u_hat that planar_step really applies, read off the map: f(z) - z = u_hat tanh(w.z + b) at b = atanh(0.5)."""
    z = torch.zeros_like(u)
    b = torch.full(u.shape[:-1] + (1,), math.atanh(0.5), dtype=u.dtype)
    return (planar_step(z, u, w, b)[0] - z) / 0.5


@pytest.mark.parametrize("case", ["random", "large", "anti_aligned", "aligned"])
def test_planar_steps_stay_invertible(case):
    u, w, b, z = _heads(case, torch.float64)
    u_hat = _applied_u_hat(u, w)
    torch.testing.assert_close(u_hat, _u_hat(u, w), rtol=1e-6, atol=1e-6 * u.abs().max().item())
    assert torch.all((w * u_hat).sum(-1) >= -1 - 1e-9)
    y, log_det = planar_step(z, u, w, b)
    act = torch.tanh((w * z).sum(-1, keepdim=True) + b)
    psi = (1 - act ** 2) * w
    assert torch.all(1 + (u_hat * psi).sum(-1) > 0)  # the condition for invertibility, written out
    assert torch.isfinite(y).all() and torch.isfinite(log_det).all()
    for i in range(4):  # and log|det| is that of the map's own Jacobian
        jac = torch.autograd.functional.jacobian(lambda v: planar_step(v, u[i], w[i], b[i])[0], z[0, i])
        torch.testing.assert_close(log_det[0, i], torch.linalg.slogdet(jac).logabsdet, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ["random", "large", "anti_aligned", "aligned"])
def test_planar_steps_in_float32_stay_finite_and_anti_aligned_heads_stay_invertible(case):
    u, w, b, z = _heads(case, torch.float32)
    y, log_det = planar_step(z, u, w, b)
    assert torch.isfinite(y).all() and torch.isfinite(log_det).all()
    if case in ("random", "anti_aligned", "aligned"):  # exactly representable constraint, checked in float64
        u_hat = _applied_u_hat(u, w).double()
        assert torch.all((w.double() * u_hat).sum(-1) >= -1 - 1e-4)


def test_iaf_steps_are_pyros_conditioned_stable_transforms_bit_for_bit():
    """IAF calls each MADE directly instead of through pyro's ``condition`` (which breaks compilation): the samples
    and log-determinants must be exactly those of pyro's conditioned stable transform."""
    torch.manual_seed(0)
    posterior = build_posterior("iaf", 8, 4)
    with torch.no_grad():  # a trained-looking MADE, so that every output matters
        for p in posterior.steps.parameters():
            p.normal_(0, 0.3)
    context, z = torch.randn(5, posterior.context.out_features), torch.randn(3, 5, 4)
    for transform, step in zip(posterior.steps, posterior.steps_from(context)):
        conditioned = transform.condition(context)
        expected = conditioned(z)
        y, log_det = step(z)
        assert torch.equal(y, expected) and torch.equal(log_det, conditioned.log_abs_det_jacobian(z, expected))
        z = y


def test_flow_length_is_honoured_and_zero_means_the_base_alone():
    for name in FLOWS:
        assert len(build_choice(name, FEATURES, D, flow_length=3)(torch.randn(2, FEATURES)).steps) == 3
        q = build_choice(name, FEATURES, D, flow_length=0)(torch.randn(2, FEATURES))
        torch.manual_seed(0)
        z, log_q = q.rsample_with_log_prob()
        torch.testing.assert_close(log_q, q.base.log_prob(z))


def test_fullcov_starts_as_the_mean_field_posterior():
    post = build_posterior("fullcov", FEATURES, D)
    scale_tril = post(torch.randn(B, FEATURES)).scale_tril
    torch.testing.assert_close(scale_tril, torch.diag_embed(scale_tril.diagonal(dim1=-2, dim2=-1)))


def test_unknown_posterior_and_option_are_one_line_errors():
    with pytest.raises(ConfigError, match=rf"posterior='nope' is not known; accepted: {', '.join(POSTERIOR_NAMES)}$"):
        build_posterior("nope", FEATURES, D)
    with pytest.raises(ConfigError, match=r"posterior=.rho. has no option flow_length; accepted: min_std, variant"):
        build_posterior("rho", FEATURES, D, flow_length=3)


@pytest.mark.parametrize("name", POSTERIOR_CHOICES)
def test_local_parameters_reproduce_the_posterior_exactly(name):
    """forward(h) = distribution(local_parameters(h)), and each image's q depends on its own vector alone."""
    torch.manual_seed(0)
    post = build_choice(name, FEATURES, D).double()
    h = torch.randn(B, FEATURES, dtype=torch.float64)
    params = post.local_parameters(h)
    assert params.shape[:-1] == (B,) and params.dim() == 2
    draws = []
    for q in (post(h), post.distribution(params)):
        torch.manual_seed(5)
        draws.append(post.rsample_with_log_prob(q, (4,)))
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])

    moved = params.clone()
    moved[0] += 0.5
    torch.manual_seed(5)
    z, log_q = post.rsample_with_log_prob(post.distribution(moved), (4,))
    assert not torch.allclose(z[:, 0], draws[0][0][:, 0])  # image 0 moved with its own parameters ...
    torch.testing.assert_close(z[:, 1:], draws[0][0][:, 1:], rtol=0, atol=0)  # ... and the others did not
    torch.testing.assert_close(log_q[:, 1:], draws[0][1][:, 1:], rtol=0, atol=0)


def _random_off_diagonal(post) -> None:
    with torch.no_grad():  # the off-diagonal head starts at zero; give it values so that its factor shows
        post.off_diagonal.weight.normal_(0.0, 0.3)
        post.off_diagonal.bias.normal_(0.0, 0.3)


@pytest.mark.parametrize("factor", ["ldl", "rows", "free"])
def test_fullcov_factors_build_the_documented_cholesky_factor_and_density(factor):
    torch.manual_seed(0)
    post = build_posterior("fullcov", FEATURES, D, factor=factor).double()
    _random_off_diagonal(post)
    h = torch.randn(B, FEATURES, dtype=torch.float64)
    loc, raw_std, off_diagonal = post.heads(h)
    sigma = torch.diag_embed(torch.nn.functional.softplus(raw_std) + post.min_std)
    m = torch.zeros(B, D, D, dtype=torch.float64)
    rows, cols = torch.tril_indices(D, D, offset=-1)
    m[:, rows, cols] = off_diagonal
    eye = torch.eye(D, dtype=torch.float64)
    expected = {"ldl": (eye + m) @ sigma, "rows": sigma @ (eye + m), "free": sigma + m}[factor]
    q = post(h)
    torch.testing.assert_close(q.scale_tril, expected)
    z, log_q = post.rsample_with_log_prob(q, (7,))
    reference = MultivariateNormal(loc, covariance_matrix=expected @ expected.mT)
    torch.testing.assert_close(log_q, reference.log_prob(z))
    torch.testing.assert_close(post.kl(q, z, log_q, standard_normal_prior(D, dtype=torch.float64)),
                               torch.distributions.kl_divergence(reference, MultivariateNormal(
                                   torch.zeros(D, dtype=torch.float64), torch.eye(D, dtype=torch.float64))))


def test_fullcov_free_is_the_first_parameterization_and_labels_its_runs():
    options = {"name": "fullcov", **POSTERIORS.defaults("fullcov"), "factor": "free", "off_diagonal_gradient": 1.0}
    assert POSTERIORS.label(options) == "fullcov_free"
    assert POSTERIORS.label({**options, "off_diagonal_gradient": 0.0}) == "fullcov[factor=free]"
    with pytest.raises(ConfigError, match=r"posterior.factor=.ldlt. is not valid; accepted: ldl, rows, free$"):
        build_posterior("fullcov", FEATURES, D, factor="ldlt")
    with pytest.raises(ConfigError, match=r"posterior.off_diagonal_gradient=2.0 is not valid"):
        build_posterior("fullcov", FEATURES, D, off_diagonal_gradient=2.0)


def _gradient_into_features(post, piece: int, seed: int = 0):
    """d/dh of a random linear function of one head's output, and d/d(that head's input weights)."""
    torch.manual_seed(seed)
    h = torch.randn(B, FEATURES, dtype=torch.float64, requires_grad=True)
    out = post.heads(h)[piece]
    probe = torch.randn_like(out)
    weights = [p for p in post.parameters() if p.requires_grad]
    grads = torch.autograd.grad((out * probe).sum(), [h, *weights], allow_unused=True, materialize_grads=True)
    return out, grads[0], [g for g in grads[1:] if g.any()]


@pytest.mark.parametrize("name,option,piece", [("fullcov", "off_diagonal_gradient", 2),
                                               ("lowrank", "factor_gradient", 2)]
                         + [(name, "step_gradient", -1) for name in FLOWS])
@pytest.mark.parametrize("scale", [0.0, 0.25])
def test_a_heads_gradient_into_the_shared_features_is_scaled_and_nothing_else_changes(name, option, piece, scale):
    """The head's output and the gradient of its own weights are those of the unscaled head; only the gradient
    that reaches the encoder's features is multiplied by ``scale`` (0: stop-gradient)."""
    torch.manual_seed(0)
    full = build_choice(name, FEATURES, D, **{option: 1.0}).double()
    scaled = build_choice(name, FEATURES, D, **{option: scale}).double()
    scaled.load_state_dict(full.state_dict())
    with torch.no_grad():  # zero-initialised heads get values, so that their gradient into h is not zero
        for p in full.parameters():
            if not p.any():
                p.normal_(0.0, 0.3)
    scaled.load_state_dict(full.state_dict())
    out_full, into_h_full, own_full = _gradient_into_features(full, piece)
    out_scaled, into_h_scaled, own_scaled = _gradient_into_features(scaled, piece)
    assert torch.equal(out_full, out_scaled)
    assert into_h_full.abs().sum() > 0
    torch.testing.assert_close(into_h_scaled, scale * into_h_full, rtol=1e-12, atol=0)
    assert len(own_full) == len(own_scaled) > 0
    for a, b in zip(own_full, own_scaled):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_rho_scaled_contains_diag_and_rho_and_its_kl_is_the_closed_form():
    torch.manual_seed(0)
    loc, log_std = torch.randn(B, D, dtype=torch.float64), 0.3 * torch.randn(B, D, dtype=torch.float64)
    z = torch.randn(4, B, D, dtype=torch.float64)
    uncorrelated = ScaledAR1Normal(loc, log_std, torch.zeros(B, dtype=torch.float64))  # rho = 0: diag
    torch.testing.assert_close(uncorrelated.log_prob(z), Normal(loc, log_std.exp()).log_prob(z).sum(-1))
    rho_atanh, log_s = torch.randn(B, dtype=torch.float64), torch.randn(B, dtype=torch.float64)
    equal = ScaledAR1Normal(loc, (0.5 * log_s)[:, None].expand(B, D), rho_atanh)  # equal sigmas: rho
    torch.testing.assert_close(equal.log_prob(z), AR1Normal(loc, log_scale=log_s, rho_atanh=rho_atanh).log_prob(z))
    q = ScaledAR1Normal(loc, log_std, rho_atanh)
    rho = torch.tanh(rho_atanh)
    closed = 0.5 * ((2 * log_std).exp().sum(-1) + loc.pow(2).sum(-1) - D - 2 * log_std.sum(-1)
                    - (D - 1) * torch.log1p(-rho * rho))
    torch.testing.assert_close(torch.distributions.kl_divergence(q, standard_normal_prior(D, dtype=torch.float64)),
                               closed)
    reference = MultivariateNormal(loc, covariance_matrix=q.covariance_matrix)
    torch.testing.assert_close(closed, torch.distributions.kl_divergence(reference, MultivariateNormal(
        torch.zeros(D, dtype=torch.float64), torch.eye(D, dtype=torch.float64))))


def test_full_covariance_kl_to_a_diagonal_gaussian_is_torchs_multivariate_kl():
    torch.manual_seed(1)
    diagonal = torch.rand(B, D, dtype=torch.float64) + 0.1
    tril = torch.randn(B, D, D, dtype=torch.float64).tril(-1) + torch.diag_embed(diagonal)
    q = MultivariateNormal(torch.randn(B, D, dtype=torch.float64), scale_tril=tril)
    prior = Independent(Normal(torch.randn(D, dtype=torch.float64), torch.rand(D, dtype=torch.float64) + 0.5), 1)
    as_full = MultivariateNormal(prior.mean, covariance_matrix=torch.diag_embed(prior.variance))
    torch.testing.assert_close(torch.distributions.kl_divergence(q, prior),
                               torch.distributions.kl._kl_multivariatenormal_multivariatenormal(q, as_full))


def test_lowrank_kl_to_any_diagonal_gaussian_is_the_full_covariance_kl():
    torch.manual_seed(0)
    q = LowRankMultivariateNormal(torch.randn(B, D, dtype=torch.float64), torch.randn(B, D, 2, dtype=torch.float64),
                                  torch.rand(B, D, dtype=torch.float64) + 0.1)
    prior = Independent(Normal(torch.randn(D, dtype=torch.float64), torch.rand(D, dtype=torch.float64) + 0.5), 1)
    as_full = MultivariateNormal(prior.mean, covariance_matrix=torch.diag_embed(prior.variance))
    torch.testing.assert_close(torch.distributions.kl_divergence(q, prior), torch.distributions.kl_divergence(
        MultivariateNormal(q.loc, covariance_matrix=q.covariance_matrix), as_full))
    with pytest.raises(ConfigError, match=r"posterior.rank=0 is not valid"):
        build_posterior("lowrank", FEATURES, D, rank=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sylvester_orthogonalization_gives_the_polar_factor(dtype):
    """The iteration converges to the orthonormal matrix closest to its input, U V^T of the SVD A = U S V^T."""
    torch.manual_seed(0)
    a = torch.randn(4, 7, 3, dtype=dtype)
    q = orthonormal_columns(a)
    u, _, vh = torch.linalg.svd(a, full_matrices=False)
    tol = 3e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(q, u @ vh, rtol=0, atol=tol)
    torch.testing.assert_close(q.mT @ q, torch.eye(3, dtype=dtype).expand(4, 3, 3), rtol=0, atol=tol)


def bjorck_iteration(a: torch.Tensor, steps: int = 60) -> torch.Tensor:
    """The Sylvester-flow paper's orthogonalization, Q <- Q (I + (I - Q^T Q) / 2) from A / |A|_F, run a fixed number
    of steps (riannevdberg/sylvester-flows, batch_construct_orthogonal)."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype)
    q = a / torch.linalg.matrix_norm(a)[..., None, None]
    for _ in range(steps):
        q = q @ (eye + 0.5 * (eye - q.mT @ q))
    return q


def test_sylvester_orthogonalization_and_its_gradient_are_the_papers_iteration_in_the_limit():
    """The closed-form polar factor against autograd through 60 steps of the paper's iteration: the same Q and the
    same vector-Jacobian product, also where A's columns are orthogonal and of one length (all eigenvalues of A^T A
    equal, where eigh's own backward divides by zero), and the gradient against finite differences there."""
    torch.manual_seed(3)
    random = torch.randn(5, 6, 3, dtype=torch.float64)
    degenerate = 2.0 * torch.linalg.qr(torch.randn(5, 6, 3, dtype=torch.float64)).Q
    cotangent = torch.randn(5, 6, 3, dtype=torch.float64)
    for a in (random, degenerate):
        a = a.clone().requires_grad_()
        q = orthonormal_columns(a)
        (grad,) = torch.autograd.grad((q * cotangent).sum(), a)
        reference = bjorck_iteration(a)
        (expected,) = torch.autograd.grad((reference * cotangent).sum(), a)
        torch.testing.assert_close(q, reference, rtol=0, atol=1e-12)
        torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-9)
        assert grad.isfinite().all()
    assert torch.autograd.gradcheck(orthonormal_columns, (degenerate.clone().requires_grad_(),))


def test_sylvester_householder_q_is_the_product_of_the_reflection_matrices():
    torch.manual_seed(1)
    v = torch.randn(2, 3, 5, dtype=torch.float64)
    expected = torch.eye(5, dtype=torch.float64).expand(2, 5, 5)
    for k in range(3):
        unit = v[:, k] / v[:, k].norm(dim=-1, keepdim=True)
        expected = (torch.eye(5, dtype=torch.float64) - 2 * unit.unsqueeze(-1) * unit.unsqueeze(-2)) @ expected
    torch.testing.assert_close(householder_product(v), expected)


def test_sylvester_triangular_steps_alternate_identity_and_reversal():
    post = build_choice("sylvester_triangular", FEATURES, D).double()
    qs = post.q_matrices(torch.zeros(B, post.flow_length, 0, dtype=torch.float64))
    torch.testing.assert_close(qs[0], torch.eye(D, dtype=torch.float64))
    ramp = torch.arange(D, dtype=torch.float64)
    torch.testing.assert_close(qs[1] @ ramp, ramp.flip(0))


def test_sylvester_step_is_the_formula_and_saturated_diagonals_stay_invertible():
    """z' = z + Q R1 tanh(R2 Q^T z + b) against a plain evaluation, and log|det| stays finite where tanh of the two
    diagonals rounds to +1 and -1 (1 + h' R1_mm R2_mm would be 1 - 1 = 0 at pre = 0)."""
    torch.manual_seed(2)
    d, m = 4, 2
    z = torch.randn(3, d, dtype=torch.float64)
    q = orthonormal_columns(torch.randn(3, d, m, dtype=torch.float64))
    full = torch.randn(3, m, m, dtype=torch.float64)
    a, c, b = (torch.randn(3, m, dtype=torch.float64) for _ in range(3))
    r1 = full.triu(1) + torch.diag_embed(a.tanh())
    r2 = full.mT.triu(1) + torch.diag_embed(c.tanh())
    out, log_det = sylvester_step(z, q, r1, r2, b, a, c)
    pre = (r2 @ q.mT @ z.unsqueeze(-1)).squeeze(-1) + b
    torch.testing.assert_close(out, z + (q @ r1 @ pre.tanh().unsqueeze(-1)).squeeze(-1))
    jac = torch.eye(d, dtype=torch.float64) + q @ r1 @ torch.diag_embed(1 - pre.tanh() ** 2) @ r2 @ q.mT
    torch.testing.assert_close(log_det, torch.linalg.slogdet(jac).logabsdet)

    big = torch.full((1, m), 30.0)
    r1, r2 = torch.diag_embed(big.tanh()), torch.diag_embed((-big).tanh())
    assert torch.all(r1.diagonal(dim1=-2, dim2=-1) * r2.diagonal(dim1=-2, dim2=-1) == -1.0)  # float32 rounds
    q = torch.eye(m).unsqueeze(0)
    _, log_det = sylvester_step(torch.zeros(1, m), q, r1, r2, torch.zeros(1, m), big, -big)
    exact = m * math.log(4.0 / (2 + 2 * math.cosh(60.0)))  # 1 - tanh^2(30) = cosh(0) / cosh^2(30), in closed form
    assert torch.isfinite(log_det).all()
    torch.testing.assert_close(log_det.double(), torch.tensor([exact], dtype=torch.float64), rtol=1e-4, atol=0)


def test_sylvester_options_are_checked_and_the_bottleneck_is_at_most_d():
    assert build_choice("sylvester", FEATURES, D, ortho_vectors=2).width == 2
    assert build_choice("sylvester", FEATURES, D, ortho_vectors=64).width == D  # R^d holds at most d of them
    assert build_choice("sylvester_householder", FEATURES, D).width == D
    with pytest.raises(ConfigError, match=r"posterior.variant='qr' is not valid; accepted: orthogonal, householder"):
        build_posterior("sylvester", FEATURES, D, variant="qr")
    with pytest.raises(ConfigError, match=r"posterior.reflections=0 is not valid"):
        build_posterior("sylvester", FEATURES, D, variant="householder", reflections=0)


def test_orthonormal_columns_stay_finite_for_an_ill_conditioned_float32_head():
    """A float32 head output A of condition number 3 x 10^4: a Gram matrix A^T A formed in float32 has lost its
    smallest eigenvalue to rounding (negative for 40% of such matrices, so its inverse square root is NaN); formed in
    float64 it stays positive, and Q's columns are orthonormal to about cond(A) times float32's precision."""
    torch.manual_seed(0)
    for _ in range(50):
        u, _ = torch.linalg.qr(torch.randn(4, 4))
        v, _ = torch.linalg.qr(torch.randn(4, 4))
        a = (u @ torch.diag(torch.tensor([1.0, 0.7, 0.3, 3e-5])) @ v.T).float()
        q = orthonormal_columns(a)
        assert torch.isfinite(q).all()
        assert (q.mT @ q - torch.eye(4)).abs().max() < 5e-3
