"""The rho-VAE paper's published code, defects included, so that their effect can be measured.

``posterior=rho posterior.variant=published_code`` keeps the rho posterior's heads (mu, rho, s) but

* samples the way that code does, z_j = z_(j-1) + sqrt(s) e_j with no rho at all: a Gaussian random walk
  with covariance s * min(i+1, j+1), not s * rho^|i-j|;
* trains on that code's KL term, 0.5 (||mu||^2 + (d s - d - d log s - (d-1) log(1 - rho^2)) / B) per image,
  which is what summing ||mu||^2 over the batch but averaging the s and rho terms amounts to: the AR(1)
  formula, for a distribution it does not sample from, with its s and rho terms under-weighted by the
  batch size B.

Every number the project reports stays honest: ``kl`` and log q are those of the random walk actually
sampled (it is Gaussian, so both are exact), and only the training loss uses the published term.
"""

from __future__ import annotations

import torch
from torch.distributions import MultivariateNormal

from ..errors import ConfigError
from .ar1_normal import log1m_tanh_sq
from .base import POSTERIORS, Posterior
from .gaussian import RhoPosterior, mvn_rsample_with_log_prob


class RandomWalkNormal(MultivariateNormal):
    """N(loc, s * min(i+1, j+1)), the law of z_j = z_(j-1) + sqrt(s) e_j; carries the unused rho along."""

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor, rho_atanh: torch.Tensor):
        d = loc.shape[-1]
        ones = torch.ones(d, d, dtype=loc.dtype, device=loc.device).tril()
        super().__init__(loc, scale_tril=(0.5 * log_scale).exp()[..., None, None] * ones, validate_args=False)
        self.log_scale, self.rho_atanh = log_scale, rho_atanh

    @property
    def rho(self) -> torch.Tensor:
        return torch.tanh(self.rho_atanh)


class PublishedCodeRhoPosterior(RhoPosterior):
    """The rho heads with the published code's sampler and training KL (see the module docstring)."""

    def assemble(self, pieces: list[torch.Tensor]) -> RandomWalkNormal:
        loc, rho_atanh, log_scale = self.decode(pieces)
        return RandomWalkNormal(loc, log_scale, rho_atanh)

    def rsample_with_log_prob(self, q: RandomWalkNormal, sample_shape=torch.Size()):
        return mvn_rsample_with_log_prob(q, sample_shape)

    def objective_kl(self, q: RandomWalkNormal, kl: torch.Tensor) -> torch.Tensor:
        d = q.loc.shape[-1]
        batch = q.loc.shape[:-1].numel()
        s_rho_terms = d * q.log_scale.exp() - d - d * q.log_scale - (d - 1) * log1m_tanh_sq(q.rho_atanh)
        return 0.5 * (q.loc.pow(2).sum(-1) + s_rho_terms / batch)

    def statistics(self, q: RandomWalkNormal) -> dict[str, torch.Tensor]:
        return {"rho": q.rho, "log_s": q.log_scale}


RHO_VARIANTS = {"paper": RhoPosterior, "published_code": PublishedCodeRhoPosterior}


@POSTERIORS.register("rho")
def rho_posterior(in_features: int, latent_dim: int, *, min_std: float = 1e-4, variant: str = "paper") -> Posterior:
    """``rho``: the distribution the paper describes (``paper``), or its published code's (``published_code``)."""
    if variant not in RHO_VARIANTS:
        raise ConfigError(f"posterior.variant={variant!r} is not known; accepted: {', '.join(RHO_VARIANTS)}")
    return RHO_VARIANTS[variant](in_features, latent_dim, min_std=min_std)


# selectable beside the others in a sweep (posterior=diag,rho,rho_published_code), and the method label of its runs
POSTERIORS.add_setting("rho_published_code", "rho", variant="published_code")
