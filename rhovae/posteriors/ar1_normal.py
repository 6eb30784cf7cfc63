"""The rho-VAE posterior: a Gaussian whose covariance is a scaled stationary AR(1) (Toeplitz) matrix.

    q(z | x) = N(loc, s * T(rho)),   T_ij = rho^|i - j|,   -1 < rho < 1,   s > 0

one rho and one s per sample (batch element), shared by all d latent dimensions. The Cholesky factor is
L = sqrt(s) * A with A_i0 = rho^i and A_ij = sqrt(1 - rho^2) rho^(i-j) for 1 <= j <= i, which is the
AR(1) recursion

    z_0 = loc_0 + sqrt(s) e_0,   x_j = rho x_(j-1) + sqrt(s (1 - rho^2)) e_j   (x = z - loc)

Its inverse is a first difference, so ``log_prob`` costs O(d); ``rsample`` runs the linear recursion as
a parallel prefix scan: ceil(log2 d) vectorized steps over the whole tensor, never a Python loop over the
latent dimensions. ``log(1 - rho^2)`` is computed from the tanh pre-activation when one is given, so it
stays finite even where ``tanh`` has rounded rho to exactly +-1.

The KL divergence is registered against ``Independent(Normal(m, v), 1)``, the diagonal Gaussian prior
the project builds (``rhovae.vae.standard_normal_prior``); for m = 0, v = 1 it is

    0.5 (|loc|^2 + d s - d - d log s - (d - 1) log(1 - rho^2)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, Independent, constraints, register_kl
from torch.distributions.utils import broadcast_all

from .base import diagonal_normal, log_density_of_standard_draws

_LOG_2PI = math.log(2 * math.pi)
_LOG_2 = math.log(2.0)


def log1m_tanh_sq(a: torch.Tensor) -> torch.Tensor:
    """log(1 - tanh(a)^2), exact and finite for every finite a (never -inf where tanh rounds to 1)."""
    a = a.abs()
    return 2.0 * (_LOG_2 - a - F.softplus(-2.0 * a))


def ar1_scan(innovations: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
    """Solve x_0 = b_0, x_j = rho x_(j-1) + b_j along the last dimension, vectorized.

    Hillis-Steele prefix scan for a constant-coefficient linear recursion: after the step with offset
    2^k every x_j holds sum_(m < 2^(k+1)) rho^m b_(j-m), so ceil(log2 d) tensor operations suffice.
    ``rho`` has the shape of ``innovations`` without its last dimension (it broadcasts).
    """
    x = innovations
    coeff = rho.unsqueeze(-1)
    d = x.shape[-1]
    offset = 1
    while offset < d:
        x = x + coeff * F.pad(x[..., :-offset], (offset, 0))
        coeff = coeff * coeff
        offset *= 2
    return x


class AR1Normal(Distribution):
    """N(loc, s * rho^|i-j|): the rho-VAE paper's correlated Gaussian posterior.

    Args:
        loc: mean, shape ``[..., d]``.
        rho: the correlation in (-1, 1), shape ``[...]`` (broadcast to the batch shape). Give either
            ``rho`` or ``rho_atanh`` (its tanh pre-activation, preferred: it keeps log(1 - rho^2) exact).
        log_scale: log s, the log of the marginal variance, shape ``[...]``.
    """

    arg_constraints = {
        "loc": constraints.real_vector,
        "rho": constraints.interval(-1.0, 1.0),
        "log_scale": constraints.real,
    }
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc, rho=None, log_scale=None, *, rho_atanh=None, validate_args=None):
        if (rho is None) == (rho_atanh is None):
            raise ValueError("AR1Normal takes exactly one of rho and rho_atanh")
        if log_scale is None:
            raise ValueError("AR1Normal needs log_scale (the log of the marginal variance s)")
        if loc.dim() < 1:
            raise ValueError(f"AR1Normal loc must have an event dimension, got shape {tuple(loc.shape)}")
        batch_shape = torch.broadcast_shapes(loc.shape[:-1], torch.as_tensor(log_scale).shape,
                                             torch.as_tensor(rho if rho is not None else rho_atanh).shape)
        event_shape = loc.shape[-1:]
        self.loc = loc.expand(batch_shape + event_shape)
        if rho_atanh is not None:
            rho_atanh, log_scale = broadcast_all(rho_atanh, log_scale)
            self.rho = torch.tanh(rho_atanh).expand(batch_shape)
            self._log1m_rho_sq = log1m_tanh_sq(rho_atanh).expand(batch_shape)
        else:
            rho, log_scale = broadcast_all(rho, log_scale)
            self.rho = rho.expand(batch_shape)
            self._log1m_rho_sq = torch.log1p(-self.rho * self.rho)
        self.log_scale = log_scale.expand(batch_shape)
        super().__init__(batch_shape, event_shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(AR1Normal, _instance)
        batch_shape = torch.Size(batch_shape)
        new.loc = self.loc.expand(batch_shape + self.event_shape)
        new.rho = self.rho.expand(batch_shape)
        new.log_scale = self.log_scale.expand(batch_shape)
        new._log1m_rho_sq = self._log1m_rho_sq.expand(batch_shape)
        super(AR1Normal, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def dim(self) -> int:
        return self.event_shape[0]

    @property
    def mean(self):
        return self.loc

    @property
    def mode(self):
        return self.loc

    @property
    def variance(self):
        return self.log_scale.exp().unsqueeze(-1).expand(self.loc.shape)

    def _innovation_scales(self) -> torch.Tensor:
        """sqrt(s) for e_0 and sqrt(s (1 - rho^2)) for e_1..e_(d-1), shape ``batch + [d]``."""
        log_sd = 0.5 * self.log_scale
        log_sd_rest = 0.5 * (self.log_scale + self._log1m_rho_sq)
        first = log_sd.unsqueeze(-1)
        rest = log_sd_rest.unsqueeze(-1).expand(self.batch_shape + (self.dim - 1,))
        return torch.cat([first, rest], dim=-1).exp()

    def _draw(self, sample_shape) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples z = loc + L e and the standard-normal draws e behind them."""
        eps = torch.randn(self._extended_shape(sample_shape), dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + ar1_scan(eps * self._innovation_scales(), self.rho), eps

    def rsample(self, sample_shape=torch.Size()):
        return self._draw(sample_shape)[0]

    def rsample_with_log_prob(self, sample_shape=torch.Size()) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples and their log-density, the latter from the standard-normal draws e themselves.

        Equal to ``log_prob(z)`` in exact arithmetic (e = L^-1 (z - loc)), but it never divides by the
        innovation scale, so it stays exact when rho is within rounding of +-1.
        """
        z, eps = self._draw(sample_shape)
        return z, log_density_of_standard_draws(eps, self.log_det_scale_tril())

    def log_det_scale_tril(self) -> torch.Tensor:
        """log det L = (d/2) log s + ((d-1)/2) log(1 - rho^2)."""
        return 0.5 * self.dim * self.log_scale + 0.5 * (self.dim - 1) * self._log1m_rho_sq

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        x = value - self.loc
        innovations = x - self.rho.unsqueeze(-1) * F.pad(x[..., :-1], (1, 0))
        return log_density_of_standard_draws(innovations / self._innovation_scales(), self.log_det_scale_tril())

    def entropy(self):
        return 0.5 * self.dim * (1.0 + _LOG_2PI) + self.log_det_scale_tril()

    def _lags(self) -> torch.Tensor:
        """The lag matrix i - j, shape ``[d, d]``."""
        idx = torch.arange(self.dim, device=self.loc.device)
        return idx.unsqueeze(-1) - idx

    @property
    def covariance_matrix(self):
        toeplitz = self.rho[..., None, None] ** self._lags().abs().to(self.loc.dtype)
        return self.log_scale.exp()[..., None, None] * toeplitz

    @property
    def scale_tril(self):
        lag = self._lags()
        powers = self.rho[..., None, None] ** lag.clamp(min=0).to(self.loc.dtype) * (lag >= 0)
        return powers * self._innovation_scales().unsqueeze(-2)

    @property
    def precision_matrix(self):
        return torch.cholesky_inverse(self.scale_tril)


@register_kl(AR1Normal, Independent)
def _kl_ar1normal_diagonal_normal(p: AR1Normal, q: Independent) -> torch.Tensor:
    """KL(N(mu, s T(rho)) || N(m, diag(v))) for a diagonal Gaussian q such as the standard normal prior.

    0.5 * (s sum 1/v + sum (m - mu)^2 / v - d + sum log v - d log s - (d - 1) log(1 - rho^2)).
    """
    prior = diagonal_normal(q, "AR1Normal")
    var = prior.scale.pow(2)
    d = p.dim
    trace = p.log_scale.exp() * var.reciprocal().sum(-1)
    mahalanobis = ((prior.loc - p.loc).pow(2) / var).sum(-1)
    log_det_q = var.log().sum(-1)
    log_det_p = d * p.log_scale + (d - 1) * p._log1m_rho_sq
    return 0.5 * (trace + mahalanobis - d + log_det_q - log_det_p)
