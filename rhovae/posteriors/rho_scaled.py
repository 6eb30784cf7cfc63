"""``rho_scaled``: the AR(1)-correlated Gaussian with a scale of its own for every latent dimension.

    q(z | x) = N(mu, D T(rho) D),   D = diag(sigma_1, ..., sigma_d),   T_ij = rho^|i - j|

``rho`` (one shared variance s) pays for fitting dimensions of different scales with one number: its approximation
gap in the comparison of docs/results.md is 4 nats above diag's. This family keeps the AR(1) correlation and gives each
dimension its own scale, so it contains both diag (rho = 0) and rho (equal sigmas). A draw is
z = mu + sigma * u with u a standardized AR(1) draw (``AR1Normal`` with s = 1), so sampling and the density stay
O(d): log q(z) = log N_AR1(u; 0, T(rho)) - sum_i log sigma_i. The KL to a diagonal Gaussian N(m, diag(v)) is
registered with torch.distributions; for the standard normal prior it is

    0.5 (sum sigma_i^2 + |mu|^2 - d - 2 sum log sigma_i - (d - 1) log(1 - rho^2)).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, Independent, constraints, register_kl

from .ar1_normal import AR1Normal
from .base import POSTERIORS, Posterior, check_min_std, diagonal_normal, positive_std


class ScaledAR1Normal(Distribution):
    """N(loc, D T(rho) D) with D = diag(exp(log_std)); ``rho_atanh`` is rho's tanh pre-activation (shape ``[...]``),
    ``loc`` and ``log_std`` have shape ``[..., d]``."""

    arg_constraints = {"loc": constraints.real_vector, "log_std": constraints.real_vector}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: torch.Tensor, log_std: torch.Tensor, rho_atanh: torch.Tensor, validate_args=None):
        self.loc, self.log_std = torch.broadcast_tensors(loc, log_std)
        batch_shape = torch.broadcast_shapes(self.loc.shape[:-1], rho_atanh.shape)
        self.loc, self.log_std = (t.expand(batch_shape + loc.shape[-1:]) for t in (self.loc, self.log_std))
        # the standardized AR(1) part: unit marginal variances, correlation rho
        self.standard = AR1Normal(torch.zeros_like(self.loc), log_scale=torch.zeros(batch_shape, dtype=loc.dtype,
                                                                                      device=loc.device),
                                  rho_atanh=rho_atanh.expand(batch_shape), validate_args=False)
        super().__init__(batch_shape, self.loc.shape[-1:], validate_args=validate_args)

    @property
    def rho(self) -> torch.Tensor:
        return self.standard.rho

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    @property
    def variance(self) -> torch.Tensor:
        return (2 * self.log_std).exp()

    @property
    def covariance_matrix(self) -> torch.Tensor:
        std = self.log_std.exp()
        return std.unsqueeze(-1) * self.standard.covariance_matrix * std.unsqueeze(-2)

    def rsample_with_log_prob(self, sample_shape=torch.Size()) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and their exact log-density, from the standardized draws themselves."""
        u, log_q = self.standard.rsample_with_log_prob(torch.Size(sample_shape))
        return self.loc + self.log_std.exp() * u, log_q - self.log_std.sum(-1)

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self.rsample_with_log_prob(sample_shape)[0]

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        u = (value - self.loc) * (-self.log_std).exp()
        return self.standard.log_prob(u) - self.log_std.sum(-1)

    def entropy(self) -> torch.Tensor:
        return self.standard.entropy() + self.log_std.sum(-1)


@register_kl(ScaledAR1Normal, Independent)
def _kl_scaled_ar1_diagonal_normal(p: ScaledAR1Normal, q: Independent) -> torch.Tensor:
    """KL(N(mu, D T(rho) D) || N(m, diag(v))) = 0.5 (sum sigma^2 / v + sum (m - mu)^2 / v - d + sum log v
    - 2 sum log sigma - (d - 1) log(1 - rho^2))."""
    prior = diagonal_normal(q, "ScaledAR1Normal")
    var = prior.scale.pow(2)
    d = p.loc.shape[-1]
    trace = ((2 * p.log_std).exp() / var).sum(-1)
    mahalanobis = ((prior.loc - p.loc).pow(2) / var).sum(-1)
    log_det_p = 2 * p.log_std.sum(-1) + (d - 1) * p.standard._log1m_rho_sq
    return 0.5 * (trace + mahalanobis - d + var.log().sum(-1) - log_det_p)


@POSTERIORS.register("rho_scaled")
class ScaledRhoPosterior(Posterior):
    """q(z|x) = N(mu, D T(rho) D): mean and per-dimension scale heads as ``diag``'s (sigma = softplus(.) + min_std),
    and one rho = tanh(.) per image as ``rho``'s."""

    def __init__(self, in_features: int, latent_dim: int, min_std: float = 1e-4):
        super().__init__(in_features, latent_dim)
        check_min_std(min_std)
        self.min_std = min_std
        self.loc = nn.Linear(in_features, latent_dim)
        self.raw_std = nn.Linear(in_features, latent_dim)
        self.rho_atanh = nn.Linear(in_features, 1)

    def heads(self, h: torch.Tensor) -> list[torch.Tensor]:
        """mu, the raw (pre-softplus) standard deviations and rho's pre-activation."""
        return [self.loc(h), self.raw_std(h), self.rho_atanh(h)]

    def parameter_sizes(self) -> list[int]:
        return [self.latent_dim, self.latent_dim, 1]

    def assemble(self, pieces: list[torch.Tensor]) -> ScaledAR1Normal:
        loc, raw_std, rho_atanh = pieces
        return ScaledAR1Normal(loc, positive_std(raw_std, self.min_std).log(), rho_atanh.squeeze(-1))

    def rsample_with_log_prob(self, q: ScaledAR1Normal, sample_shape=torch.Size()):
        return q.rsample_with_log_prob(sample_shape)

    def statistics(self, q: ScaledAR1Normal) -> dict[str, torch.Tensor]:
        return {"rho": q.rho, "log_sigma": q.log_std.mean(-1)}
