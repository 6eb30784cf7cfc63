"""Annealed importance sampling and bidirectional Monte Carlo (rhovae/ais.py) against exact log p(x).

Two models whose log p(x) is known: a linear-Gaussian one (x = W z + b + noise, p(x) Gaussian in closed form, and
every intermediate distribution Gaussian too, so HMC's invariance can be checked against the exact moments), and
the 6-pixel Bernoulli VAE with a 2-D latent of ``helpers.models``, integrated on a grid. Each check states its
tolerance in standard errors computed from the same draws.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from helpers.models import exact_log_px, fit_posterior, tiny_vae
from rhovae.ais import (AnnealingPath, HmcSettings, PathState, ais_metrics, anneal, beta_schedule, bdmc,
                        evaluate_path, hmc_transition, log_mean_exp, vae_path)
from rhovae.config.schema import AisSettings
from rhovae.errors import RhovaeError


class LinearGaussian:
    """p(z) = N(0, I_d), p(x|z) = N(W z + c, s^2 I_D) for B images x: p(x) = N(c, W W^T + s^2 I) exactly, and
    f_b = p(z) p(x|z)^b (the prior path) is Gaussian with precision I + b W^T W / s^2."""

    def __init__(self, n_images: int = 12, d: int = 3, D: int = 5, noise: float = 0.3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(D, d, generator=g, dtype=torch.float64)
        self.c = torch.randn(D, generator=g, dtype=torch.float64)
        self.noise, self.d = noise, d
        self.z = torch.randn(n_images, d, generator=g, dtype=torch.float64)  # exact posterior samples of x below
        self.x = self.z @ self.W.T + self.c + noise * torch.randn(n_images, D, generator=g, dtype=torch.float64)

    def exact_log_px(self) -> torch.Tensor:
        cov = self.W @ self.W.T + self.noise ** 2 * torch.eye(len(self.c), dtype=torch.float64)
        return MultivariateNormal(self.c, cov).log_prob(self.x)

    def path(self) -> AnnealingPath:
        prior = Normal(torch.zeros((), dtype=torch.float64), 1.0)

        def log_p0(z):
            return prior.log_prob(z).sum(-1)

        def log_joint(z):
            return Normal(z @ self.W.T + self.c, self.noise).log_prob(self.x).sum(-1) + log_p0(z)

        return AnnealingPath(log_p0, log_joint,
                             lambda chains: torch.randn(chains, len(self.x), self.d, dtype=torch.float64))

    def intermediate(self, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[B, d]`` and covariance ``[d, d]`` of f_beta."""
        precision = torch.eye(self.d, dtype=torch.float64) + beta * self.W.T @ self.W / self.noise ** 2
        cov = torch.linalg.inv(precision)
        return beta * (self.x - self.c) @ self.W @ cov / self.noise ** 2, cov


def forward_log_px(model: LinearGaussian, steps: int, chains: int = 16, schedule: str = "sigmoid") -> torch.Tensor:
    path = model.path()
    run = anneal(path, path.sample_p0(chains), beta_schedule(steps, schedule), 0.1, HmcSettings())
    return log_mean_exp(run.log_weights)[0]


def test_schedules_run_from_zero_to_one_and_sigmoid_is_denser_at_the_ends():
    for kind in ("linear", "sigmoid"):
        b = beta_schedule(100, kind)
        assert b[0] == 0 and b[-1] == 1 and torch.all(b.diff() > 0) and len(b) == 101
    linear, sigmoid = beta_schedule(100, "linear"), beta_schedule(100, "sigmoid")
    assert sigmoid.diff()[0] < linear.diff()[0] and sigmoid.diff()[50] > linear.diff()[50]
    with pytest.raises(ValueError, match="schedule 'cosine' is not known; accepted: linear, sigmoid"):
        beta_schedule(10, "cosine")


@pytest.mark.slow  # seconds of annealing: the full suite checks convergence, the quick tier the parts
def test_forward_ais_converges_to_the_exact_log_px_of_a_linear_gaussian_model():
    """The error shrinks as T grows, and at T = 300 the mean error over images is within 3 standard errors (of the
    per-image errors' spread) of zero; with T = 3 it is a clear underestimate (a lower bound)."""
    torch.manual_seed(0)
    model = LinearGaussian(n_images=24)
    exact = model.exact_log_px()
    errors = {steps: forward_log_px(model, steps) - exact for steps in (3, 30, 300)}
    mean = {steps: e.mean().item() for steps, e in errors.items()}
    se = {steps: e.std().item() / math.sqrt(len(e)) for steps, e in errors.items()}
    assert mean[3] < -5 * se[3]  # far from the truth, from below
    assert abs(mean[300]) < abs(mean[30]) < abs(mean[3])
    assert abs(mean[300]) < 3 * se[300] + 0.02, (mean, se)


def test_bdmc_sandwiches_the_exact_log_px_and_its_gap_shrinks_with_the_number_of_steps():
    """Forward AIS below log p(x), reverse AIS from exact posterior samples above it (on average over images, beyond
    3 standard errors at a short schedule), and the gap between them narrows as T grows."""
    torch.manual_seed(1)
    model = LinearGaussian(n_images=48)
    exact = model.exact_log_px()
    path = model.path()
    gaps = {}
    for steps in (10, 100):
        betas = beta_schedule(steps)
        lower = log_mean_exp(anneal(path, path.sample_p0(8), betas, 0.1, HmcSettings()).log_weights)[0]
        exact_posterior = model.z.expand(8, *model.z.shape).clone()
        upper = -log_mean_exp(anneal(path, exact_posterior, betas.flip(0), 0.1, HmcSettings()).log_weights)[0]
        for side, sign in ((lower - exact, -1), (upper - exact, 1)):
            if steps == 10:
                assert sign * side.mean() > 3 * side.std() / math.sqrt(len(side)), (steps, side)
        gaps[steps] = (upper - lower).mean().item()
    assert 0 < gaps[100] < gaps[10] / 3, gaps


@pytest.mark.parametrize("beta", [0.3, 1.0])
def test_hmc_leaves_each_intermediate_distribution_invariant(beta):
    """4,000 exact draws of f_beta through 5 transitions at a step size that rejects about a third of the moves
    keep f_beta's mean and covariance (5 standard errors each); a transition without the Metropolis correction,
    or with the kinetic energy's sign flipped, inflates the covariance well beyond that."""
    torch.manual_seed(2)
    model = LinearGaussian(n_images=1, noise=0.5)
    mean, cov = model.intermediate(beta)
    n = 4000
    z = MultivariateNormal(mean[0], cov).sample((n,)).unsqueeze(1)  # [n, 1, d]: n chains of one image
    path = model.path()
    state = evaluate_path(path, z)
    step = torch.tensor([1.8 * torch.linalg.eigvalsh(cov).min().sqrt().item()], dtype=torch.float64)
    rates = []
    for _ in range(5):
        state, accept = hmc_transition(path, state, beta, step, HmcSettings(leapfrog_steps=5, adapt=False))
        rates.append(accept.mean().item())
    assert 0.3 < sum(rates) / len(rates) < 0.9, rates  # the correction has moves to reject
    draws = state.z[:, 0]
    sd = cov.diagonal().sqrt()
    assert torch.all((draws.mean(0) - mean[0]).abs() < 5 * sd / math.sqrt(n))
    sample_cov = torch.cov(draws.T)
    # Var of a sample covariance entry: (S_ij^2 + S_ii S_jj) / n
    entry_se = ((cov ** 2 + torch.outer(cov.diagonal(), cov.diagonal())) / n).sqrt()
    assert torch.all((sample_cov - cov).abs() < 5 * entry_se), (sample_cov, cov)


@pytest.mark.slow  # seconds of annealing: the full suite checks convergence, the quick tier the parts
def test_ais_on_a_bernoulli_vae_matches_grid_integration_from_either_start():
    """The 6-pixel, 2-D latent VAE: AIS from the prior and from the fitted q(z|x) agree with log p(x) integrated on a
    grid to within 3 standard errors of the per-image errors (plus 0.02 nats)."""
    torch.manual_seed(3)
    model = tiny_vae("diag")
    x = torch.sigmoid(model.decoder(torch.randn(16, 2))).bernoulli().detach()
    fit_posterior(model, x, steps=100)
    exact = exact_log_px(model, x).float()
    for start in ("prior", "posterior"):
        torch.manual_seed(4)
        path = vae_path(model, x, start)
        run = anneal(path, path.sample_p0(16), beta_schedule(200), 0.1, HmcSettings())
        error = (log_mean_exp(run.log_weights)[0] - exact.double())
        se = error.std().item() / math.sqrt(len(error))
        assert abs(error.mean().item()) < 3 * se + 0.02, (start, error)
        assert run.accept.mean() > 0.3 and torch.all(run.step_size != 0.1)  # the step sizes were adapted


@pytest.mark.slow  # seconds of annealing: the full suite checks convergence, the quick tier the parts
def test_bdmc_on_data_simulated_from_a_vae_brackets_its_own_forward_estimate():
    """``bdmc``: at 3 steps the reverse bound lies above the forward one beyond 3 standard errors; at 100 steps the
    gap is under half of that (either sign: both bounds are then within noise of log p(x))."""
    torch.manual_seed(5)
    model = tiny_vae("diag")
    short = bdmc(model, AisSettings(chains=8, batch_size=64, steps=3), 64)
    long = bdmc(model, AisSettings(chains=8, batch_size=64, steps=100), 64)
    assert short["gap"] > 3 * short["gap_se"], short
    assert abs(long["gap"]) < short["gap"] / 2, (short, long)


def test_ais_metrics_keeps_each_images_values_in_the_order_of_the_images():
    """The per-image values behind ``ais_metrics``' means belong to the images in the order given: on every image of
    6 pixels (exact values 3 nats apart at the extremes), each image's IW and AIS log p(x) lie near its own exact value
    (grid integration), and their means are the reported NLLs."""
    torch.manual_seed(6)
    model = tiny_vae("diag")
    x = torch.tensor([[(i >> bit) & 1 for bit in range(6)] for i in range(64)], dtype=torch.float32)
    fit_posterior(model, x, steps=100)
    exact = exact_log_px(model, x).double()
    as_stored = (x * 255).to(torch.uint8)  # test images as the datasets hold them
    numbers, per_image = ais_metrics(model, as_stored, AisSettings(steps=100, chains=8, batch_size=64, iw_samples=1000))
    ais, iw = torch.tensor(per_image["ais_log_px"]), torch.tensor(per_image["iw_log_px"])
    assert len(ais) == len(iw) == len(per_image["accept"]) == len(per_image["ais_mc_variance"]) == 64
    assert exact.max() - exact.min() > 3  # images far enough apart that a misplaced value is seen
    assert torch.all((iw - exact).abs() < 0.2), iw - exact
    assert torch.all((ais - exact).abs() < 0.6), ais - exact  # 100 steps: within 0.45 here, seeded
    assert numbers["nll"] == pytest.approx(-ais.mean().item()) and numbers["iw_nll"] == pytest.approx(-iw.mean().item())


def test_posterior_start_is_refused_in_one_line_for_a_flow():
    model = tiny_vae("planar")
    with pytest.raises(RhovaeError, match="ais.start=posterior needs a q.*planar.*accepted for it: ais.start=prior"):
        vae_path(model, torch.ones(2, 6), "posterior", posterior_label="planar")


def test_path_state_where_keeps_new_values_only_where_accepted():
    old = PathState(*(torch.zeros(2, 3, 4) if i in (0, 3, 4) else torch.zeros(2, 3) for i in range(5)))
    new = PathState(*(torch.ones(2, 3, 4) if i in (0, 3, 4) else torch.ones(2, 3) for i in range(5)))
    keep = torch.tensor([[True, False, True], [False, False, True]])
    mixed = new.where(keep, old)
    assert torch.equal(mixed.log_joint, keep.double().float()) and torch.equal(mixed.z[..., 0], keep.float())
