"""The Pareto k-hat against generalized Pareto samples of known shape, and through importance weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import genpareto

from rhovae.pareto import PRIOR_WEIGHT, generalized_pareto_shape, pareto_k_hat, tail_length


@pytest.mark.parametrize("shape", [0.1, 0.5, 0.9])
def test_shape_estimate_is_unbiased_up_to_the_psis_prior(shape):
    """Averaged over 300 samples of 200 exceedances, the estimate lands on the true shape, pulled towards 0.5 by
    PSIS's prior (10 pseudo-observations) and no further."""
    rng = np.random.default_rng(0)
    n = 200
    exceedances = torch.from_numpy(np.sort(genpareto.rvs(shape, scale=2.0, size=(300, n), random_state=rng), axis=1))
    k_hat = generalized_pareto_shape(exceedances)
    expected = (n * shape + PRIOR_WEIGHT * 0.5) / (n + PRIOR_WEIGHT)
    standard_error = k_hat.std().item() / math.sqrt(len(k_hat))
    assert abs(k_hat.mean().item() - expected) < 4 * standard_error + 0.01, (k_hat.mean().item(), expected)
    assert k_hat.std().item() < 0.15  # one estimate from 200 exceedances is already informative


@pytest.mark.parametrize("shape", [0.3, 0.9])
def test_k_hat_from_importance_weights_whose_tail_is_pareto(shape):
    """Weights 1 + GPD(shape): k-hat sees the tail's shape from the largest M of K = 5000 log-weights, whatever
    their order and however many more are passed in."""
    rng = np.random.default_rng(1)
    n_samples = 5000
    log_w = torch.from_numpy(np.log1p(genpareto.rvs(shape, size=(200, n_samples), random_state=rng)))
    k_hat = pareto_k_hat(log_w[:, torch.randperm(n_samples)], n_samples)
    assert abs(k_hat.mean().item() - shape) < 0.05
    top = log_w.topk(tail_length(n_samples) + 1, dim=1).values
    torch.testing.assert_close(pareto_k_hat(top, n_samples), pareto_k_hat(log_w, n_samples))
    assert ((k_hat > 0.7).double().mean() > 0.5) == (shape > 0.7)


def test_flat_and_short_tails():
    assert tail_length(5000) == 213 and tail_length(1000) == 95 and tail_length(100) == 20
    assert pareto_k_hat(torch.zeros(3, 50), 50).eq(-math.inf).all()  # equal weights: a perfect proposal
    assert pareto_k_hat(torch.randn(3, 10), 10).eq(math.inf).all()  # too few samples to fit a tail
    shifted = torch.randn(4, 300, dtype=torch.float64)
    torch.testing.assert_close(pareto_k_hat(shifted + 1e3, 300), pareto_k_hat(shifted, 300))  # scale-free
