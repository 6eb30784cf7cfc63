"""What the KL term is made of: "ELBO surgery" (Hoffman & Johnson 2016) over a set of images.

The average KL to the prior splits exactly into two parts,

    E_x KL(q(z|x) || p(z))  =  I_q(x; z)  +  KL(q(z) || p(z)),     q(z) = E_x q(z|x) (the aggregate posterior)

the mutual information between image and code under q, and how far the aggregate posterior is from the prior. A
posterior that lowers the KL by lowering I(x; z) has not become a better approximation; one that lowers the
marginal KL has.

Estimator. The images are the data distribution (uniform over the N images given, usually the test set), so the
aggregate posterior is exactly the mixture (1/N) sum_m q(z|x_m). With one draw z_n ~ q(z|x_n) per image,

    I ~= mean_n [ log q(z_n|x_n) - log (1/N) sum_m q(z_n|x_m) ],     marginal KL = mean KL - I.

The outer mean may run over the draws of the first M images only (``outer``; the mixture stays over all N): the
same estimand, with more Monte Carlo noise, at M/N of the N^2 density evaluations (about a minute for the 10,000
test images on 2 CPU cores, against a few seconds for M = 1000).
It is unbiased for the mutual information of that empirical distribution (the N images as the data), and it can
never exceed log N (9.2 nats for the 10,000 test images): once the images' posteriors barely overlap, it sits at
that cap whatever the posterior, and the marginal KL is then only KL - log N. As an estimate of the mutual
information under the population of images it can fall short by any amount. ``mutual_information_fraction`` is
I / log N: close to 1 means saturated, and the two numbers then say nothing about the posterior; compare posteriors
on the same images, never against other papers' numbers. It needs
q(z|x_m) at arbitrary points, so flows (whose density is known only for their own samples) report no I(x; z).
``kl_per_dim`` is the mean KL of each latent dimension, for posteriors whose KL factorizes (``diag``).
"""

from __future__ import annotations

import math

import torch

from .vae import VAE


def mixture_log_density(model: VAE, params: torch.Tensor, z: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    """log (1/N) sum_m q(z_n | params_m) for every row z_n of ``z`` ``[N', d]``: ``[N']`` (float64).

    Raises ``NotImplementedError`` for posteriors that cannot score arbitrary points (flows).
    """
    results = []
    for z_rows in z.split(chunk):
        running = torch.full((len(z_rows),), -math.inf, dtype=torch.float64, device=z.device)
        for param_rows in params.split(chunk):
            log_q = model.posterior.distribution(param_rows).log_prob(z_rows.unsqueeze(-2))  # [rows, components]
            running = torch.logaddexp(running, torch.logsumexp(log_q.double(), dim=-1))
        results.append(running - math.log(len(params)))
    return torch.cat(results)


def information(model: VAE, params: torch.Tensor, chunk: int = 1000,
                outer: int | None = None) -> dict[str, float | list[float]]:
    """``kl``, ``kl_per_dim`` (when the KL factorizes), ``mutual_information``, ``mutual_information_fraction`` (of its
    cap log N) and ``marginal_kl`` (when q has a density at arbitrary points) for the images whose local parameters
    are ``params`` ``[N, P]``; the mutual information averages over the draws of the first ``outer`` images (all when
    None). Draws from the global random stream: call it inside a seeded block."""
    posterior, prior = model.posterior, model.prior()
    q = posterior.distribution(params)
    z, log_q = posterior.rsample_with_log_prob(q)
    kl = posterior.kl(q, z, log_q, prior)
    result: dict[str, float | list[float]] = {"kl": kl.double().mean().item()}
    groups = posterior.kl_groups(q, z, log_q, prior, kl)
    if groups.shape[-1] == model.latent_dim > 1:
        result["kl_per_dim"] = groups.double().mean(0).tolist()
    try:
        log_aggregate = mixture_log_density(model, params, z[:outer], chunk)
    except NotImplementedError:
        return result
    mutual_information = (log_q[:outer].double() - log_aggregate).mean().item()
    result.update(mutual_information=mutual_information, marginal_kl=result["kl"] - mutual_information,
                  mutual_information_fraction=mutual_information / math.log(len(params)) if len(params) > 1 else 0.0)
    return result
