"""The Pareto k-hat of importance weights: how far an importance-weighted estimate can be trusted.

Pareto-smoothed importance sampling (Vehtari, Simpson, Gelman, Yao & Gabry, "Pareto Smoothed Importance
Sampling", JMLR 2024) fits a generalized Pareto distribution to the largest M = ceil(min(K / 5, 3 sqrt(K))) of
K importance weights and reads the estimate's reliability from the fitted shape k:

* k < 0.5: the weights have finite variance, and the central limit theorem (and the delta-method standard
  error) applies;
* 0.5 <= k < 0.7: finite mean, infinite variance; the estimate still converges, at a slower rate;
* k >= 0.7: the estimate is unreliable at any practical K, and a reported standard error means nothing.

The shape is estimated as in that paper's reference implementations (the ``loo`` R package, ArviZ): the
profile-likelihood posterior mean of Zhang & Stephens (2009), then shrunk towards 0.5 with the weak prior of
weight 10 that PSIS uses. Only the fit is written here (no library small enough to depend on provides it); the
tests check it for bias against generalized Pareto samples of known shape.
"""

from __future__ import annotations

import math

import torch

PRIOR_WEIGHT = 10.0  # pseudo-observations at k = 0.5 (PSIS's regularization of the fitted shape)
UNRELIABLE = 0.7  # k-hat above which an importance-weighted estimate cannot be trusted


def tail_length(n_samples: int) -> int:
    """M, the number of largest weights the generalized Pareto distribution is fitted to."""
    return int(math.ceil(min(0.2 * n_samples, 3.0 * math.sqrt(n_samples))))


def generalized_pareto_shape(exceedances: torch.Tensor) -> torch.Tensor:
    """The regularized Zhang & Stephens estimate of the shape k, per row of ``exceedances`` ``[..., M]``: the amounts
    by which the M largest values exceed the (M+1)-th largest, sorted ascending, all >= 0 (float64 advised)."""
    x = exceedances
    n = x.shape[-1]
    grid = 30 + int(math.sqrt(n))
    j = torch.arange(1, grid + 1, dtype=x.dtype, device=x.device)
    quartile = x[..., int(n / 4 + 0.5) - 1].clamp_min(torch.finfo(x.dtype).tiny)
    largest = x[..., -1].clamp_min(torch.finfo(x.dtype).tiny)
    # candidate values of theta = -k / sigma, from the prior quantiles of Zhang & Stephens
    theta = 1.0 / largest[..., None] + (1.0 - torch.sqrt(grid / (j - 0.5))) / (3.0 * quartile[..., None])
    k = torch.log1p(-theta[..., :, None] * x[..., None, :]).mean(-1)
    profile = n * (torch.log(-theta / k) - k - 1.0)
    weights = torch.softmax(profile, dim=-1)
    theta_hat = (weights * theta).sum(-1)
    k_hat = torch.log1p(-theta_hat[..., None] * x).mean(-1)
    return (n * k_hat + PRIOR_WEIGHT * 0.5) / (n + PRIOR_WEIGHT)


def pareto_k_hat(top_log_weights: torch.Tensor, n_samples: int) -> torch.Tensor:
    """k-hat per image from the largest ``tail_length(n_samples) + 1`` log-weights of each image ``[N, >= M + 1]``
    (any order) out of its ``n_samples``; ``inf`` where the tail is too short to fit (M < 5, i.e. K < 25), and
    ``-inf`` where the tail is flat (all of them equal: bounded weights, such as a proposal equal to the posterior)."""
    m = tail_length(n_samples)
    if m < 5:
        return torch.full(top_log_weights.shape[:-1], math.inf, dtype=torch.float64, device=top_log_weights.device)
    log_w = top_log_weights.double().topk(m + 1, dim=-1).values.flip(-1)  # ascending: the cutoff, then the tail
    log_w = log_w - log_w[..., -1:]  # relative to the largest: exp() cannot overflow
    w = log_w.exp()
    exceedances = w[..., 1:] - w[..., :1]
    flat = exceedances[..., -1] <= 0
    k_hat = generalized_pareto_shape(torch.where(flat[..., None], torch.ones_like(exceedances), exceedances))
    return torch.where(flat, -math.inf, k_hat)
