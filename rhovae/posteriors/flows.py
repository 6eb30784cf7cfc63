"""Normalizing-flow posteriors: a diagonal Gaussian base pushed through amortized invertible steps.

``planar``: K planar maps f(z) = z + u_hat tanh(w^T z + b) (Rezende & Mohamed 2015) whose u, w, b come per
image from one linear head on the encoder features; u_hat = u + (m(w^T u) - w^T u) w / |w|^2 with
m(a) = -1 + softplus(a) keeps w^T u_hat >= -1, so every map is invertible.

``iaf``: K inverse autoregressive steps (Kingma et al. 2016) from ``pyro.distributions.transforms``: a MADE
(``ConditionalAutoRegressiveNN``) sees z and a context vector from the encoder and outputs (m, s); the
"stable" update z = sigma z + (1 - sigma) m with sigma = sigmoid(s + forget_bias) has log|det| = sum log
sigma. The variable order is reversed between steps.

A flow knows the exact density of its own samples (base density minus the accumulated log|det J|) but
cannot score arbitrary points cheaply, so these posteriors estimate KL(q || p) by Monte Carlo,
mean over ``kl_samples`` draws of log q(z) - log p(z) (1 = reuse the reconstruction's sample).

``step_gradient`` scales the gradient that the head producing the steps' per-image parameters sends back into the
shared encoder (1: the full gradient, 0: the head reads the features without steering them), the lever that
repairs ``fullcov`` (its ``off_diagonal_gradient``). planar and IAF default to 0: at the paper_cpu budget the full
gradient cost them 1 to 2 nats of test NLL, 3 seeds each (docs/results.md, "Do the flows suffer from it too?";
``posterior.step_gradient=1`` reproduces the earlier numbers). The best value depends on the budget: at the IWAE
paper's protocol (batch 20, tanh, d = 50) planar needs the full gradient (1 puts it level with diag at epoch 121 over
three seeds, 0 leaves it 3 nats behind; results/iwae_paper_posteriors), while IAF lags by 2.4 to 3.6 with either
unless the KL weight is warmed up over the first epochs (``trainer.kl_warmup_epochs``), which makes it level.
The other flows keep 1, as nobody has measured them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn
from torch.distributions import Distribution, constraints

from .ar1_normal import log1m_tanh_sq
from .base import POSTERIORS, Posterior, check_gradient_scale, check_option, scale_gradient
from .gaussian import DiagonalPosterior

# A flow step maps samples to (transformed samples, log|det J| per sample).
Step = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class FlowDistribution(Distribution):
    """``base`` pushed through ``steps``; samples come with their exact log-density."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, base: Distribution, steps: Sequence[Step]):
        self.base = base
        self.steps = list(steps)
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    def rsample_with_log_prob(self, sample_shape=torch.Size()) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.base.rsample(torch.Size(sample_shape))
        log_q = self.base.log_prob(z)
        for step in self.steps:
            z, log_det = step(z)
            log_q = log_q - log_det
        return z, log_q

    def rsample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self.rsample_with_log_prob(sample_shape)[0]

    def log_prob(self, value):
        raise NotImplementedError("a flow scores only its own samples: use rsample_with_log_prob")


def planar_constants(u: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What a planar map needs besides z: u_hat and softplus(w^T u), for any number of maps at once (u, w
    ``[..., d]``), so that K maps cost one set of small operations instead of K.

    u_hat is built as (u without its component along w) + m(w^T u) w / |w|^2 with m(a) = softplus(a) - 1, projecting
    twice so that a u almost parallel to w leaves no rounding residue along w; then w^T u_hat = m(w^T u) >= -1.
    """
    w_sq = (w * w).sum(-1, keepdim=True)
    alpha = (u * w).sum(-1, keepdim=True)
    u_perp = u - alpha / w_sq * w
    u_perp = u_perp - (u_perp * w).sum(-1, keepdim=True) / w_sq * w  # again: drops the rounding residue along w
    softplus_alpha = F.softplus(alpha)
    return u_perp + (softplus_alpha - 1.0) / w_sq * w, softplus_alpha


def planar_map(z: torch.Tensor, u_hat: torch.Tensor, w: torch.Tensor, b: torch.Tensor, softplus_alpha: torch.Tensor):
    """f(z) = z + u_hat tanh(w^T z + b) and log|det df/dz|, broadcasting z ``[..., B, d]`` against u_hat, w ``[B, d]``.

    det = 1 + (1 - tanh^2) w^T u_hat with w^T u_hat = softplus(w^T u) - 1, computed as the sum of non-negative terms
    tanh^2 + (1 - tanh^2) softplus(w^T u), which cannot cancel to 0 in floating point.
    """
    pre = (w * z).sum(-1, keepdim=True) + b
    act = torch.tanh(pre)
    det = act * act + log1m_tanh_sq(pre).exp() * softplus_alpha
    return z + u_hat * act, det.log().squeeze(-1)


def planar_step(z: torch.Tensor, u: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
    """One planar map from its raw (u, w, b): ``planar_constants`` then ``planar_map``."""
    u_hat, softplus_alpha = planar_constants(u, w)
    return planar_map(z, u_hat, w, b, softplus_alpha)


class FlowPosterior(Posterior):
    """Shared part of the flows: the diagonal Gaussian base and the Monte Carlo KL."""

    def __init__(self, in_features: int, latent_dim: int, min_std: float, kl_samples: int,
                 step_gradient: float = 1.0):
        super().__init__(in_features, latent_dim)
        check_option(kl_samples >= 1, "kl_samples", kl_samples, "an integer >= 1")
        check_gradient_scale("step_gradient", step_gradient)
        self.kl_samples = kl_samples
        # scale on the gradient the step head sends into the shared encoder (see fullcov's off_diagonal_gradient)
        self.step_gradient = step_gradient
        self.base = DiagonalPosterior(in_features, latent_dim, min_std)

    def rsample_with_log_prob(self, q: FlowDistribution, sample_shape=torch.Size()):
        return q.rsample_with_log_prob(sample_shape)

    def heads(self, h: torch.Tensor) -> list[torch.Tensor]:
        """The base's pieces, then the steps' own parameters (``step_parameters``)."""
        steps = self.step_parameters(scale_gradient(h, self.step_gradient))  # evaluated first: see Posterior.heads
        return [*self.base.heads(h), steps]

    def parameter_sizes(self) -> list[int]:
        return [*self.base.parameter_sizes(), self.step_size]

    def assemble(self, pieces: list[torch.Tensor]) -> FlowDistribution:
        return FlowDistribution(self.base.assemble(pieces[:-1]), self.steps_from(pieces[-1]))

    @property
    def step_head(self) -> nn.Linear:  # pragma: no cover - abstract
        """The linear head on the encoder features that gives the steps their per-image parameters."""
        raise NotImplementedError

    @property
    def step_size(self) -> int:
        """How many per-image parameters the steps take (``P_steps``)."""
        return self.step_head.out_features

    def step_parameters(self, h: torch.Tensor) -> torch.Tensor:
        """The per-image parameters of the flow steps, ``[B, P_steps]``."""
        return self.step_head(h)

    def steps_from(self, params: torch.Tensor) -> list[Step]:  # pragma: no cover - abstract
        """The flow steps for per-image step parameters ``[B, P_steps]``."""
        raise NotImplementedError

    def mean(self, q: FlowDistribution, n_samples: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
        """Monte Carlo E_q[z|x] from ``n_samples`` draws (a flow's mean has no closed form), and its variance."""
        z = q.rsample((n_samples,))
        return z.mean(0), z.var(0) / n_samples

    def kl(self, q: FlowDistribution, z: torch.Tensor, log_q: torch.Tensor, prior: Distribution) -> torch.Tensor:
        if self.kl_samples > 1:
            z, log_q = q.rsample_with_log_prob((self.kl_samples,))
        estimate = log_q - prior.log_prob(z)
        return estimate.reshape(-1, *q.batch_shape).mean(0)


@POSTERIORS.register("planar")
class PlanarPosterior(FlowPosterior):
    """Diagonal Gaussian base + ``flow_length`` planar maps with per-image (u, w, b) from one linear head."""

    def __init__(self, in_features: int, latent_dim: int, flow_length: int = 10, min_std: float = 1e-4,
                 kl_samples: int = 1, step_gradient: float = 0.0):
        super().__init__(in_features, latent_dim, min_std, kl_samples, step_gradient)
        check_option(flow_length >= 0, "flow_length", flow_length, "an integer >= 0")
        self.flow_length = flow_length
        self.step_params = nn.Linear(in_features, flow_length * (2 * latent_dim + 1))

    @property
    def step_head(self) -> nn.Linear:
        """(u, w, b) of every map: ``[B, K (2d + 1)]``."""
        return self.step_params

    def steps_from(self, params: torch.Tensor) -> list[Step]:
        d = self.latent_dim
        u, w, b = params.unflatten(-1, (self.flow_length, 2 * d + 1)).split([d, d, 1], dim=-1)
        u_hat, softplus_alpha = planar_constants(u, w)  # every map's at once: [B, K, d] and [B, K, 1]
        return [(lambda z, k=k: planar_map(z, u_hat[..., k, :], w[..., k, :], b[..., k, :], softplus_alpha[..., k, :]))
                for k in range(self.flow_length)]


def pyro_step(transform) -> Step:
    """A conditioned pyro transform as a flow step: samples and their log|det J|."""
    def step(z: torch.Tensor):
        y = transform(z)
        return y, transform.log_abs_det_jacobian(z, y)

    return step


def stable_iaf_step(transform: ConditionalAffineAutoregressive, context: torch.Tensor) -> Step:
    """pyro's stable IAF step ``transform`` conditioned on ``context``: (m, s) = MADE(z; context), sigma =
    sigmoid(s + sigmoid_bias), z' = sigma z + (1 - sigma) m and log|det| = sum log sigma, the operations of pyro's
    ``AffineAutoregressive`` (the same bits), with the MADE called directly: ``transform.condition`` wraps it in a
    ``functools.partial`` whose attributes break a ``torch.compile`` graph at every step (``trainer.compile``)."""
    bias = transform.kwargs["sigmoid_bias"]

    def step(z: torch.Tensor):
        mean, logit_scale = transform.nn(z, context=context)
        logit_scale = logit_scale + bias
        scale = torch.sigmoid(logit_scale)
        return scale * z + (1 - scale) * mean, F.logsigmoid(logit_scale).sum(-1)

    return step


@POSTERIORS.register("iaf")
class IAFPosterior(FlowPosterior):
    """Diagonal Gaussian base + ``flow_length`` stable IAF steps (pyro), MADE conditioned on a context head."""

    def __init__(self, in_features: int, latent_dim: int, flow_length: int = 4, hidden: Sequence[int] = (128, 128),
                 context_dim: int = 32, forget_bias: float = 2.0, min_std: float = 1e-4, kl_samples: int = 1,
                 step_gradient: float = 0.0):
        super().__init__(in_features, latent_dim, min_std, kl_samples, step_gradient)
        check_option(flow_length >= 0, "flow_length", flow_length, "an integer >= 0")
        self.flow_length = flow_length
        self.context = nn.Linear(in_features, context_dim)
        forward_order = torch.arange(latent_dim)
        self.steps = nn.ModuleList(
            ConditionalAffineAutoregressive(
                ConditionalAutoRegressiveNN(latent_dim, context_dim, list(hidden),
                                            permutation=forward_order if k % 2 == 0 else forward_order.flip(0)),
                stable=True, sigmoid_bias=forget_bias,
            )
            for k in range(flow_length)
        )

    @property
    def step_head(self) -> nn.Linear:
        """The context vector the MADEs see: ``[B, context_dim]`` (the MADEs' weights are shared)."""
        return self.context

    def steps_from(self, params: torch.Tensor) -> list[Step]:
        return [stable_iaf_step(t, params) for t in self.steps]
