"""Models small enough to check against exact answers: a 6-pixel VAE with d = 2, whose log p(x) a grid integrates."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Normal

from rhovae.posteriors import build_posterior
from rhovae.vae import VAE, bernoulli_log_likelihood

P, D = 6, 2  # pixels and latent dimensions of a model small enough to integrate on a grid


def tiny_vae(posterior: str) -> VAE:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(P, 8), nn.Tanh())
    encoder.out_features = 8
    decoder = nn.Linear(D, P)
    with torch.no_grad():
        decoder.weight.mul_(4.0)  # an informative likelihood, so the posterior is far from the prior
    return VAE(encoder, build_posterior(posterior, 8, D), decoder, D)


def fit_posterior(model: VAE, x: torch.Tensor, steps: int = 300) -> VAE:
    """Amortized inference for a fixed decoder: a few hundred Adam steps on the ELBO of the encoder and q only,
    so that q is a sensible importance proposal (the estimator converges for any q, but slowly for a bad one)."""
    params = list(model.encoder.parameters()) + list(model.posterior.parameters())
    opt = torch.optim.Adam(params, lr=1e-2)
    for _ in range(steps):
        loss, _ = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def exact_log_px(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log int p(x|z) p(z) dz by the rectangle rule on an 801 x 801 grid over [-8, 8]^2, in float64."""
    axis = torch.linspace(-8, 8, 801, dtype=torch.float64)
    step = (axis[1] - axis[0]).item()
    z = torch.cartesian_prod(axis, axis)
    log_prior = Normal(0.0, 1.0).log_prob(z).sum(-1)
    decoder = model.decoder.double()
    with torch.no_grad():
        log_lik = bernoulli_log_likelihood(decoder(z)[:, None, :], x.double()[None])
    model.decoder.float()
    return torch.logsumexp(log_lik + log_prior[:, None], dim=0) + 2 * math.log(step)
