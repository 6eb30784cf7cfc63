"""``lowrank``: a diagonal Gaussian plus a rank-r correlation, the cheapest step from diag towards fullcov.

    q(z | x) = N(mu, diag(sigma^2) + V V^T),   V of shape d x r from a head of size d r per image

on ``torch.distributions.LowRankMultivariateNormal`` (Woodbury and the matrix determinant lemma: O(d r^2) per
density instead of fullcov's O(d^3) factorization). The V head starts at zero, so training starts mean-field, and,
as fullcov's off-diagonal head (docs/results.md, fullcov ablation), it reads the encoder's features without steering them
by default (``factor_gradient`` = 0: its reparameterization gradient g eps^T is mostly noise); 1 lets it train the
encoder at full weight. The KL to a diagonal Gaussian prior is torch's registered low-rank KL, with the prior
written as a low-rank normal whose factor is zero.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Independent, LowRankMultivariateNormal, kl_divergence, register_kl

from .base import (POSTERIORS, Posterior, check_gradient_scale, check_min_std, check_option, diagonal_normal,
                   positive_std, scale_gradient)


@register_kl(LowRankMultivariateNormal, Independent)
def _kl_lowrank_diagonal_normal(p: LowRankMultivariateNormal, q: Independent) -> torch.Tensor:
    """KL(N(mu, diag(sigma^2) + V V^T) || N(m, diag(v))), through torch's low-rank-to-low-rank KL."""
    prior = diagonal_normal(q, "LowRankMultivariateNormal")
    loc, var = torch.broadcast_tensors(prior.loc, prior.scale.pow(2))
    diagonal = LowRankMultivariateNormal(loc, torch.zeros_like(loc).unsqueeze(-1), var, validate_args=False)
    return kl_divergence(p, diagonal)


@POSTERIORS.register("lowrank")
class LowRankPosterior(Posterior):
    """q(z|x) = N(mu, diag(sigma^2) + V V^T): ``diag``'s heads plus a zero-initialised head for V (``rank`` columns)."""

    def __init__(self, in_features: int, latent_dim: int, rank: int = 2, min_std: float = 1e-4,
                 factor_gradient: float = 0.0):
        super().__init__(in_features, latent_dim)
        check_option(rank >= 1, "rank", rank, "an integer >= 1")
        check_min_std(min_std)
        check_gradient_scale("factor_gradient", factor_gradient)
        self.rank, self.min_std, self.factor_gradient = rank, min_std, factor_gradient
        self.loc = nn.Linear(in_features, latent_dim)
        self.raw_std = nn.Linear(in_features, latent_dim)
        self.factor = nn.Linear(in_features, latent_dim * rank)
        nn.init.zeros_(self.factor.weight)
        nn.init.zeros_(self.factor.bias)

    def heads(self, h: torch.Tensor) -> list[torch.Tensor]:
        """mu, the raw (pre-softplus) standard deviations and V, flattened row by row."""
        return [self.loc(h), self.raw_std(h), self.factor(scale_gradient(h, self.factor_gradient))]

    def parameter_sizes(self) -> list[int]:
        return [self.latent_dim, self.latent_dim, self.latent_dim * self.rank]

    def assemble(self, pieces: list[torch.Tensor]) -> LowRankMultivariateNormal:
        loc, raw_std, factor = pieces
        std = positive_std(raw_std, self.min_std)
        return LowRankMultivariateNormal(loc, factor.unflatten(-1, (self.latent_dim, self.rank)), std * std,
                                         validate_args=False)
