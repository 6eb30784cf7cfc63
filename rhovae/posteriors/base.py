"""The contract every approximate posterior q(z|x) fulfils, so that the VAE never needs to know which one it has.

A posterior is an ``nn.Module`` whose ``forward`` turns encoder features ``h`` of shape ``[B, F]`` into a
distribution over ``z`` with event shape ``[d]``, in two steps: ``local_parameters(h)`` gives the per-image vector
``[B, P]`` its heads produce and ``distribution(params)`` builds q from that vector alone. Its constructor takes
``(in_features, latent_dim)`` and typed keyword options with defaults, which are its config keys (the typed option
of its config group is made from them, ``rhovae.config.components``), and it is registered with
``@POSTERIORS.register("name")``. The VAE then only calls the two methods below:

* ``rsample_with_log_prob(q, sample_shape)``: reparametrized samples ``[*sample_shape, B, d]`` together with
  log q(z|x) of exactly those samples (flows know it from their forward pass; Gaussians evaluate it).
* ``kl(q, z, log_q, prior)``: the per-image KL(q || p) of shape ``[B]``. The default is the closed form
  from ``torch.distributions.kl_divergence``; posteriors without one override it with the Monte Carlo
  estimate mean_s[log q(z_s) - log p(z_s)].

and, for evaluation, ``mean(q)`` (E_q[z|x] with the variance of the estimate, Monte Carlo where there is
no closed form) and
``statistics(q)``: named per-image quantities worth reporting for this family (rho's rho and log s).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, Independent, Normal, kl_divergence

from ..registry import Registry, check_option as check_component_option

# Every posterior registers itself here (``@POSTERIORS.register("name")``) in its own module of this package;
# ``rhovae.posteriors`` imports all of them, so a new module is picked up with no other edit.
POSTERIORS = Registry("posterior")


class Posterior(nn.Module):
    """Base class: maps encoder features to q(z|x)."""

    def __init__(self, in_features: int, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self, h: torch.Tensor) -> Distribution:
        """q(z|x) for encoder features ``h``: the distribution of the heads' outputs."""
        return self.assemble(self.heads(h))

    def local_parameters(self, h: torch.Tensor) -> torch.Tensor:
        """Everything q(z|x) of one image depends on besides shared weights, as one vector per image ``[B, P]``:
        the heads' outputs side by side.

        The encoder amortizes these; optimizing them directly for one image finds the best member of the family
        for that image (``rhovae.gaps``).
        """
        return torch.cat(self.heads(h), dim=-1)

    def distribution(self, params: torch.Tensor) -> Distribution:
        """q(z|x) from local parameters ``[B, P]`` alone (shared weights, such as a flow's MADE, may enter)."""
        return self.assemble(split_parameters(params, self.parameter_sizes()))

    def heads(self, h: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - abstract
        """The per-image pieces of the local parameters, each ``[B, size]`` (sizes: ``parameter_sizes``).

        The order of evaluation is part of a posterior's numbers: backward adds the heads' gradients into ``h`` in
        reverse order of evaluation, and with three or more heads another order rounds differently. A posterior
        keeps its order, so that its runs reproduce, and resume, bit for bit.
        """
        raise NotImplementedError

    def parameter_sizes(self) -> list[int]:  # pragma: no cover - abstract
        raise NotImplementedError

    def assemble(self, pieces: list[torch.Tensor]) -> Distribution:  # pragma: no cover - abstract
        """q(z|x) from the pieces ``heads`` returns. ``forward`` passes the heads' outputs themselves, not slices of
        their concatenation, so training never pays for the concatenation ``local_parameters`` needs."""
        raise NotImplementedError

    def rsample_with_log_prob(self, q: Distribution, sample_shape=torch.Size()):
        z = q.rsample(torch.Size(sample_shape))
        return z, q.log_prob(z)

    def kl(self, q: Distribution, z: torch.Tensor, log_q: torch.Tensor, prior: Distribution) -> torch.Tensor:
        return kl_divergence(q, prior)

    def kl_groups(self, q: Distribution, z: torch.Tensor, log_q: torch.Tensor, prior: Distribution,
                  kl: torch.Tensor) -> torch.Tensor:
        """The KL split into the groups free bits act on, ``[B, G]``: by default one group, the whole latent vector
        (a KL that does not factorize over dimensions); posteriors whose KL does factorize split it further."""
        return self.objective_kl(q, kl).unsqueeze(-1)

    def objective_kl(self, q: Distribution, kl: torch.Tensor) -> torch.Tensor:
        """The KL term the training loss uses: the true ``kl``. Only a reproduction of published code differs."""
        return kl

    def mean(self, q: Distribution, n_samples: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
        """E_q[z|x] ``[B, d]`` and the variance of that estimate ``[B, d]`` (zero where it is in closed form).

        ``n_samples`` is used only by posteriors whose mean must be estimated by Monte Carlo.
        """
        return q.mean, torch.zeros_like(q.mean)

    def statistics(self, q: Distribution) -> dict[str, torch.Tensor]:
        """Per-image quantities of shape ``[B]`` that describe this posterior family (none by default)."""
        return {}


def split_parameters(params: torch.Tensor, sizes: list[int] | int) -> list[torch.Tensor]:
    """Local parameters ``[B, P]`` cut along the last dimension into contiguous pieces.

    Contiguous, so that reductions over a piece run in the same order as over the head output it came from: a
    posterior built from its local parameters gives bit for bit the numbers ``forward`` gives.
    """
    return [piece.contiguous() for piece in params.split(sizes, dim=-1)]


def positive_std(raw: torch.Tensor, min_std: float) -> torch.Tensor:
    """A standard deviation from an unconstrained head: softplus(raw) + min_std.

    Softplus grows linearly instead of exponentially, so features scaled up by orders of magnitude give
    large but finite scales, and the floor keeps log-densities finite as raw goes to -inf.
    """
    return F.softplus(raw) + min_std


def check_option(ok: bool, key: str, value: Any, accepted: str) -> None:
    """A posterior's own range check of one of its options: a one-line ``ConfigError`` naming the key
    (``posterior.<key>``), the bad value and what is accepted. Constructors check their options, so a new posterior
    needs no edit anywhere else."""
    check_component_option(ok, f"posterior.{key}", value, accepted)


def check_min_std(min_std: float) -> None:
    check_option(isinstance(min_std, (int, float)) and min_std > 0, "min_std", min_std, "a number > 0")


def check_gradient_scale(key: str, scale: float) -> None:
    check_option(isinstance(scale, (int, float)) and 0.0 <= scale <= 1.0, key, scale, "a number from 0 to 1")


def diagonal_normal(q: Distribution, family: str) -> Normal:
    """The ``Normal`` inside ``Independent(Normal(loc, scale), 1)``, the form of the prior (and of any diagonal
    Gaussian) that the registered closed-form KLs of ``family`` accept; ``NotImplementedError`` for anything else."""
    if not isinstance(q, Independent) or not isinstance(q.base_dist, Normal) or q.reinterpreted_batch_ndims != 1:
        raise NotImplementedError(f"KL({family} || Independent) needs Independent(Normal(loc, scale), 1)")
    return q.base_dist


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` in the forward pass; in the backward pass the gradient reaching ``x`` is multiplied by ``scale``
    (0: stop-gradient, 1: ``x`` itself). Lets a head read shared features without steering them at full weight."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return x.detach() + scale * (x - x.detach())


def log_density_of_standard_draws(eps: torch.Tensor, log_det_scale: torch.Tensor) -> torch.Tensor:
    """log q(z) for z = loc + L eps with eps ~ N(0, I): log N(eps; 0, I) - log|det L|, summed over the last dim.

    For a sample's own draws this equals ``log_prob(z)`` exactly, without solving L x = z - loc, whose
    round-off explodes when L is badly conditioned (a tiny diagonal under a large off-diagonal part).
    """
    return -0.5 * (eps * eps).sum(-1) - 0.5 * eps.shape[-1] * math.log(2 * math.pi) - log_det_scale
