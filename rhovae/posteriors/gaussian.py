"""Gaussian posteriors with closed-form KL: ``diag`` (mean-field), ``rho`` (AR(1)-correlated, rho-VAE) and
``fullcov`` (any covariance, through its Cholesky factor)."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, register_kl

from .ar1_normal import AR1Normal
from .base import (POSTERIORS, Posterior, check_gradient_scale, check_min_std, check_option,
                   diagonal_normal, log_density_of_standard_draws, positive_std, scale_gradient)


def normal_kl_terms(q: Normal, p: Normal) -> torch.Tensor:
    """KL(N(mu, s^2) || N(m, v)) per dimension: torch's expression for two ``Normal``s, the same operations (so the
    same bits), written out because reaching it through ``kl_divergence``'s dispatch breaks a ``torch.compile``
    graph (``trainer.compile``)."""
    var_ratio = (q.scale / p.scale).pow(2)
    t1 = ((q.loc - p.loc) / p.scale).pow(2)
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())


@POSTERIORS.register("diag")
class DiagonalPosterior(Posterior):
    """q(z|x) = N(mu, diag(sigma^2)): two linear heads, sigma = softplus(.) + min_std."""

    def __init__(self, in_features: int, latent_dim: int, min_std: float = 1e-4):
        super().__init__(in_features, latent_dim)
        check_min_std(min_std)
        self.min_std = min_std
        self.loc = nn.Linear(in_features, latent_dim)
        self.raw_std = nn.Linear(in_features, latent_dim)

    def kl(self, q: Independent, z, log_q, prior: Distribution) -> torch.Tensor:
        """KL(q || p) in closed form against a diagonal Gaussian prior: the sum of ``kl_groups``."""
        return normal_kl_terms(q.base_dist, diagonal_normal(prior, "diag")).sum(-1)

    def kl_groups(self, q: Independent, z, log_q, prior: Distribution, kl: torch.Tensor) -> torch.Tensor:
        """One free-bits group per latent dimension: KL(N(mu_j, sigma_j^2) || p(z_j)), ``[B, d]``."""
        return normal_kl_terms(q.base_dist, diagonal_normal(prior, "diag"))

    def heads(self, h: torch.Tensor) -> list[torch.Tensor]:
        """mu and the raw (pre-softplus) standard deviations."""
        raw_std = self.raw_std(h)  # evaluation order: see Posterior.heads
        return [self.loc(h), raw_std]

    def parameter_sizes(self) -> list[int]:
        return [self.latent_dim, self.latent_dim]

    def assemble(self, pieces: list[torch.Tensor]) -> Independent:
        loc, raw_std = pieces
        std = positive_std(raw_std, self.min_std)
        return Independent(Normal(loc, std, validate_args=False), 1, validate_args=False)


class RhoPosterior(Posterior):
    """q(z|x) = N(mu, s * rho^|i-j|) (rho-VAE): a mean head, and one scalar each for rho and s per image.

    rho = tanh(linear(h)); the marginal standard deviation sqrt(s) = softplus(linear(h)) + min_std, so
    log s = 2 log(sqrt(s)) (the same parametrization as ``diag``'s sigma, shared by all dimensions).
    """

    def __init__(self, in_features: int, latent_dim: int, min_std: float = 1e-4):
        super().__init__(in_features, latent_dim)
        check_min_std(min_std)
        self.min_std = min_std
        self.loc = nn.Linear(in_features, latent_dim)
        self.rho_atanh = nn.Linear(in_features, 1)
        self.raw_std = nn.Linear(in_features, 1)

    def heads(self, h: torch.Tensor) -> list[torch.Tensor]:
        """mu, the rho pre-activation and the raw scale."""
        raw_std, loc = self.raw_std(h), self.loc(h)  # evaluation order: see Posterior.heads
        return [loc, self.rho_atanh(h), raw_std]

    def parameter_sizes(self) -> list[int]:
        return [self.latent_dim, 1, 1]

    def decode(self, pieces: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu ``[B, d]``, rho pre-activation ``[B]``, log s ``[B]``) from the pieces."""
        loc, rho_atanh, raw_std = pieces
        std = positive_std(raw_std.squeeze(-1), self.min_std)
        return loc, rho_atanh.squeeze(-1), 2.0 * std.log()

    def assemble(self, pieces: list[torch.Tensor]) -> AR1Normal:
        loc, rho_atanh, log_scale = self.decode(pieces)
        return AR1Normal(loc, log_scale=log_scale, rho_atanh=rho_atanh, validate_args=False)

    def rsample_with_log_prob(self, q: AR1Normal, sample_shape=torch.Size()):
        return q.rsample_with_log_prob(torch.Size(sample_shape))

    def statistics(self, q: AR1Normal) -> dict[str, torch.Tensor]:
        return {"rho": q.rho, "log_s": q.log_scale}


FACTORS = ("ldl", "rows", "free")


@POSTERIORS.register("fullcov")
class FullCovPosterior(Posterior):
    """q(z|x) = N(mu, L L^T) with L lower-triangular, from a mean head, a scale head sigma = softplus(.) + min_std
    and a head M of size d(d-1)/2 for the strictly-lower part, initialised to zero (training starts mean-field).

    ``factor`` says how M enters L:

    * ``ldl`` (default): L = (I + M) diag(sigma), i.e. Sigma = U D U^T with U unit-lower and D = diag(sigma^2),
      the LDL^T form. An off-diagonal entry is relative to the scale of the dimension it mixes in, so M stays O(1)
      whatever the scales and a dimension that is switched off (sigma_j = 1) is not mixed in more cheaply;
    * ``rows``: L = diag(sigma) (I + M);
    * ``free``: L = diag(sigma) + M, the free strictly-lower part in absolute units.

    ``off_diagonal_gradient`` scales the gradient that M's head sends back into the shared encoder (its own weights
    always get the full gradient). The reparameterization gradient of L_ij is g_i eps_j, nearly pure noise at the
    start of training, summed over d(d-1)/2 outputs: at 1 it swamps the trunk's gradient and the encoder trains
    worse (docs/results.md, fullcov ablation); 0 (default) lets the head read the features without steering them.
    ``fullcov_free`` (free factor, full gradient) is the parameterization this project shipped first.
    """

    def __init__(self, in_features: int, latent_dim: int, min_std: float = 1e-4, factor: str = "ldl",
                 off_diagonal_gradient: float = 0.0):
        super().__init__(in_features, latent_dim)
        check_min_std(min_std)
        check_option(factor in FACTORS, "factor", factor, ", ".join(FACTORS))
        check_gradient_scale("off_diagonal_gradient", off_diagonal_gradient)
        self.min_std = min_std
        self.factor = factor
        self.off_diagonal_gradient = off_diagonal_gradient
        self.loc = nn.Linear(in_features, latent_dim)
        self.raw_std = nn.Linear(in_features, latent_dim)
        self.off_diagonal = nn.Linear(in_features, latent_dim * (latent_dim - 1) // 2)
        # Start as the mean-field posterior: with the default init the d(d-1)/2 off-diagonal entries are O(1)
        # each, the initial covariance is huge, and training answers by switching latent dimensions off.
        nn.init.zeros_(self.off_diagonal.weight)
        nn.init.zeros_(self.off_diagonal.bias)
        self.register_buffer("_rows_cols", torch.tril_indices(latent_dim, latent_dim, offset=-1), persistent=False)

    def heads(self, h: torch.Tensor) -> list[torch.Tensor]:
        """mu, the raw diagonal of L and its strictly-lower part M."""
        raw_std = self.raw_std(h)  # evaluation order: see Posterior.heads
        off_diagonal = self.off_diagonal(scale_gradient(h, self.off_diagonal_gradient))
        return [self.loc(h), raw_std, off_diagonal]

    def parameter_sizes(self) -> list[int]:
        d = self.latent_dim
        return [d, d, d * (d - 1) // 2]

    def assemble(self, pieces: list[torch.Tensor]) -> MultivariateNormal:
        loc, raw_std, off_diagonal = pieces
        std = positive_std(raw_std, self.min_std)
        rows, cols = self._rows_cols
        lower = off_diagonal.new_zeros(*off_diagonal.shape[:-1], self.latent_dim, self.latent_dim)
        lower[..., rows, cols] = off_diagonal
        if self.factor == "ldl":
            lower = lower * std.unsqueeze(-2)  # column j scaled by sigma_j
        elif self.factor == "rows":
            lower = lower * std.unsqueeze(-1)  # row i scaled by sigma_i
        scale_tril = lower + torch.diag_embed(std)
        return MultivariateNormal(loc, scale_tril=scale_tril, validate_args=False)

    def rsample_with_log_prob(self, q: MultivariateNormal, sample_shape=torch.Size()):
        return mvn_rsample_with_log_prob(q, sample_shape)


# the parameterization first shipped: free strictly-lower part, whose head trains the encoder at full gradient
POSTERIORS.add_setting("fullcov_free", "fullcov", factor="free", off_diagonal_gradient=1.0)


def mvn_rsample_with_log_prob(q: MultivariateNormal, sample_shape=torch.Size()):
    """z = loc + L eps, with log q(z) from eps (exact even where L is too ill-conditioned to invert)."""
    eps = torch.randn(q._extended_shape(torch.Size(sample_shape)), dtype=q.loc.dtype, device=q.loc.device)
    scale_tril = q.scale_tril
    z = q.loc + (scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
    log_det = scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return z, log_density_of_standard_draws(eps, log_det)


@register_kl(MultivariateNormal, Independent)
def _kl_mvn_diagonal_normal(q: MultivariateNormal, prior: Independent) -> torch.Tensor:
    """KL(N(mu, L L^T) || N(m, diag(v))) in closed form: (sum_i (L L^T)_ii / v_i + sum_i (mu_i - m_i)^2 / v_i - d
    + sum_i log v_i - 2 sum_i log L_ii) / 2, where (L L^T)_ii is the squared norm of row i of L. Registered, so every
    Gaussian posterior reaches it through ``kl_divergence``. Written out rather than taken from torch's
    MultivariateNormal KL, which needs no triangular solve against a diagonal but does one, and which
    ``torch.compile`` cannot trace (``trainer.compile``)."""
    diagonal = diagonal_normal(prior, "MultivariateNormal")
    var = diagonal.scale.pow(2)
    scale_tril = q.scale_tril
    trace = (scale_tril.pow(2).sum(-1) / var).sum(-1)
    mahalanobis = ((q.loc - diagonal.loc).pow(2) / var).sum(-1)
    log_det_ratio = var.log().sum(-1) - 2 * scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + mahalanobis - q.loc.shape[-1] + log_det_ratio)
