"""Gaussian posteriors with closed-form KL: ``diag`` (mean-field) and ``rho`` (AR(1)-correlated, rho-VAE)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Independent, Normal

from .ar1_normal import AR1Normal
from .base import Posterior, positive_std


class DiagonalPosterior(Posterior):
    """q(z|x) = N(mu, diag(sigma^2)): two linear heads, sigma = softplus(.) + min_std."""

    def __init__(self, in_features: int, latent_dim: int, min_std: float = 1e-4):
        super().__init__(in_features, latent_dim)
        self.min_std = min_std
        self.loc = nn.Linear(in_features, latent_dim)
        self.raw_std = nn.Linear(in_features, latent_dim)

    def forward(self, h: torch.Tensor) -> Independent:
        std = positive_std(self.raw_std(h), self.min_std)
        return Independent(Normal(self.loc(h), std, validate_args=False), 1, validate_args=False)


class RhoPosterior(Posterior):
    """q(z|x) = N(mu, s * rho^|i-j|) (rho-VAE): a mean head, and one scalar each for rho and s per image.

    rho = tanh(linear(h)); the marginal standard deviation sqrt(s) = softplus(linear(h)) + min_std, so
    log s = 2 log(sqrt(s)) (the same parametrization as ``diag``'s sigma, shared by all dimensions).
    """

    def __init__(self, in_features: int, latent_dim: int, min_std: float = 1e-4):
        super().__init__(in_features, latent_dim)
        self.min_std = min_std
        self.loc = nn.Linear(in_features, latent_dim)
        self.rho_atanh = nn.Linear(in_features, 1)
        self.raw_std = nn.Linear(in_features, 1)

    def forward(self, h: torch.Tensor) -> AR1Normal:
        std = positive_std(self.raw_std(h).squeeze(-1), self.min_std)
        return AR1Normal(self.loc(h), log_scale=2.0 * std.log(), rho_atanh=self.rho_atanh(h).squeeze(-1),
                         validate_args=False)

    def rsample_with_log_prob(self, q: AR1Normal, sample_shape=torch.Size()):
        return q.rsample_with_log_prob(torch.Size(sample_shape))
