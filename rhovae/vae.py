"""The VAE: an injected encoder, posterior and decoder, a standard normal prior, and the ELBO.

Every per-image quantity is summed over pixels and latent dimensions; ``elbo_terms`` returns them per
image (shape ``[B]``) and the callers average over the batch. Nothing here depends on which posterior it
holds: the posterior supplies samples with their log-density and the KL (closed form or Monte Carlo).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from .posteriors import Posterior


# what the networks' matrix products may run in: ``trainer.precision`` (training) and ``eval.iw_precision`` (the
# importance-weighted NLL's decoder)
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def networks_in(dtype: torch.dtype, device: torch.device):
    """Autocast to ``dtype`` for an encoder's or decoder's matrix products (nothing for float32)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def standard_normal_prior(latent_dim: int, device=None, dtype=None) -> Independent:
    """p(z) = N(0, I_d) as ``Independent(Normal(0, 1), 1)``: the form the posteriors register KLs against."""
    loc = torch.zeros(latent_dim, device=device, dtype=dtype)
    return Independent(Normal(loc, torch.ones_like(loc)), 1)


def written_out_softplus(logits: torch.Tensor) -> torch.Tensor:
    """softplus(l) = max(l, 0) + log(1 + exp(-|l|)), every intermediate a new tensor (autograd's form; see
    ``bernoulli_log_likelihood`` for why it is written out)."""
    return logits.clamp_min(0) + torch.log(1 + torch.exp(-logits.abs()))


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) summed over pixels for Bernoulli pixels with the given logits (x may be continuous in [0, 1]);
    ``logits`` ``[..., P]`` broadcast against ``x``.

    sum_j x_j l_j - softplus(l_j), with softplus(l) = max(l, 0) + log(1 + exp(-|l|)) written out: torch's CPU
    kernels for ``binary_cross_entropy_with_logits``, ``softplus`` and ``log1p`` are not vectorized on every CPU, and
    this form is 2.5 times faster on one core of an AMD EPYC. Where exp(-|l|) is below float precision, log(1 + .)
    rounds it to 0: at most 6e-8 nats per pixel in float32.

    The data term is a dot product per row. For logits with sample dimensions before the batch (``[K, B, P]``
    against ``x`` ``[B, P]``, the importance-weighted NLL) einsum makes it one batched matrix-vector product, 3 times
    faster than multiply-and-sum; for logits shaped like ``x`` (training) einsum makes B tiny matrix products, and
    multiply-and-sum is 10 times faster. Without autograd (evaluation) the softplus runs in place, the same
    operations in the same order (so the same bits) with half the memory traffic: 1.4 to 1.8 times faster on the
    NLL's chunks (``scripts/bench.py``).
    """
    x = x.to(logits.dtype)
    if logits.shape == x.shape:
        data = (logits * x).sum(-1)
    else:
        data = torch.einsum("...p,...p->...", logits, x)
    if torch.is_grad_enabled() and logits.requires_grad:
        softplus = written_out_softplus(logits)
    else:
        softplus = logits.abs().neg_().exp_().add_(1).log_()
        softplus += logits.clamp_min(0)  # clamp(min=0) is the same values and gradient from a 4x slower CPU kernel
    return data - softplus.sum(-1)


@dataclass
class ElboTerms:
    """Per-image terms, each of shape ``[B]``: elbo = recon - kl.

    ``objective_kl`` is the KL term the training loss uses: the true ``kl`` for every posterior except a
    deliberate reproduction of published code (``rho`` with ``variant=published_code``).
    """

    recon: torch.Tensor
    kl: torch.Tensor
    objective_kl: torch.Tensor | None = None
    kl_groups: torch.Tensor | None = None  # [B, G]: the KL split into the posterior's free-bits groups

    @property
    def elbo(self) -> torch.Tensor:
        return self.recon - self.kl


class VAE(nn.Module):
    def __init__(self, encoder: nn.Module, posterior: Posterior, decoder: nn.Module, latent_dim: int):
        super().__init__()
        self.encoder = encoder
        self.posterior = posterior
        self.decoder = decoder
        self.latent_dim = latent_dim

    def prior(self) -> Independent:
        ref = next(self.parameters())
        return standard_normal_prior(self.latent_dim, device=ref.device, dtype=ref.dtype)

    def posterior_of(self, x: torch.Tensor, network_dtype: torch.dtype = torch.float32) -> Distribution:
        """q(z|x). With ``network_dtype=torch.bfloat16`` the encoder's matrix products run under bfloat16 autocast;
        its features return to float32 before the posterior's heads, which run in float32."""
        with networks_in(network_dtype, x.device):
            features = self.encoder(x)
        return self.posterior(features.float())

    def decode(self, z: torch.Tensor, network_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The decoder's logits for ``z``, always float32 (its matrix products under autocast to ``network_dtype``),
        so that the likelihood's sum over pixels runs in float32."""
        with networks_in(network_dtype, z.device):
            logits = self.decoder(z)
        return logits.float()

    def elbo_terms(self, x: torch.Tensor, kl_groups: bool = False,
                   network_dtype: torch.dtype = torch.float32) -> ElboTerms:
        """Single-sample reconstruction term and the posterior's KL, per image (with ``kl_groups``, also the KL
        split into the posterior's free-bits groups); the networks' matrix products in ``network_dtype``."""
        q = self.posterior_of(x, network_dtype)
        z, log_q = self.posterior.rsample_with_log_prob(q)
        recon = bernoulli_log_likelihood(self.decode(z, network_dtype), x)
        prior = self.prior()
        kl = self.posterior.kl(q, z, log_q, prior)
        groups = self.posterior.kl_groups(q, z, log_q, prior, kl) if kl_groups else None
        return ElboTerms(recon=recon, kl=kl, objective_kl=self.posterior.objective_kl(q, kl), kl_groups=groups)

    def log_importance_weights(self, x: torch.Tensor, n_samples: int, q: Distribution | None = None,
                               decoder_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """log p(x|z_k) + log p(z_k) - log q(z_k|x) for ``n_samples`` draws z_k ~ q(z|x): shape ``[n_samples, B]``.

        Pass ``q`` to reuse an already-encoded posterior when drawing several chunks of samples. With
        ``decoder_dtype=torch.bfloat16`` the decoder's matrix products run under bfloat16 autocast and its logits
        return to float32 before the likelihood, whose sum over pixels stays in float32.
        """
        q = self.posterior_of(x) if q is None else q
        z, log_q = self.posterior.rsample_with_log_prob(q, (n_samples,))
        return bernoulli_log_likelihood(self.decode(z, decoder_dtype), x) + self.prior().log_prob(z) - log_q

    def loss(self, x: torch.Tensor, beta: float = 1.0, free_bits: float = 0.0, iw_samples: int = 1,
             network_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, ElboTerms]:
        """The training objective and the detached terms (whose ``kl`` is always the true one).

        -(recon - beta * kl) averaged over the batch (beta-VAE for beta != 1). With ``free_bits`` = lambda > 0,
        the free-bits objective of Kingma et al. (2016): -mean(recon) + beta * sum_g max(lambda, mean_batch KL_g)
        over the posterior's KL groups, so a group whose batch-mean KL is below lambda gets no KL gradient.
        With ``iw_samples`` = k > 1, the importance-weighted bound of Burda et al. (2015),
        -mean_batch log (1/k) sum_k p(x, z_k) / q(z_k|x) (``iwae_bound``); its terms are then the k samples' mean
        reconstruction and Monte Carlo KL, whose difference is an ELBO estimate. ``network_dtype`` is that of the
        encoder's and decoder's matrix products (``trainer.precision``); the heads, the sampling, the likelihood and
        the KL stay float32.
        """
        if iw_samples > 1:
            bound, recon, kl = self.iwae_bound(x, iw_samples, network_dtype)
            return -bound.mean(), ElboTerms(recon=recon.detach(), kl=kl.detach())
        terms = self.elbo_terms(x, kl_groups=free_bits > 0, network_dtype=network_dtype)
        if free_bits > 0:
            loss = -terms.recon.mean() + beta * terms.kl_groups.mean(0).clamp(min=free_bits).sum()
        else:
            loss = -(terms.recon - beta * terms.objective_kl).mean()
        return loss, ElboTerms(recon=terms.recon.detach(), kl=terms.kl.detach())

    def iwae_bound(self, x: torch.Tensor, k: int,
                   network_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """L_k = log (1/k) sum_k w_k per image with w_k = p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x), and the mean over
        the k samples of log p(x|z_k) and of log q(z_k|x) - log p(z_k); all ``[B]``."""
        q = self.posterior_of(x, network_dtype)
        z, log_q = self.posterior.rsample_with_log_prob(q, (k,))
        recon = bernoulli_log_likelihood(self.decode(z, network_dtype), x)
        kl = log_q - self.prior().log_prob(z)
        return torch.logsumexp(recon - kl, dim=0) - math.log(k), recon.mean(0), kl.mean(0)

    @torch.no_grad()
    def sample_images(self, n: int) -> torch.Tensor:
        """Bernoulli means sigmoid(decoder(z)) for ``n`` draws z ~ p(z), shape ``[n, n_pixels]``."""
        z = self.prior().sample((n,))
        return torch.sigmoid(self.decoder(z))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Bernoulli means of the decoder at one posterior sample per image."""
        z, _ = self.posterior.rsample_with_log_prob(self.posterior_of(x))
        return torch.sigmoid(self.decoder(z))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
