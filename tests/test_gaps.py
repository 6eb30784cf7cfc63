"""The inference-gap estimator against exact answers: a decoder that ignores z, and d = 2 grid integration."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import POSTERIOR_NAMES
from helpers.models import D, P, exact_log_px, fit_posterior, tiny_vae
from rhovae.gaps import GapSettings, inference_gaps
from rhovae.posteriors import build_posterior
from rhovae.vae import VAE, bernoulli_log_likelihood

IMAGES = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 0, 1]],
                      dtype=torch.uint8) * 255


def test_a_decoder_that_ignores_z_has_no_approximation_gap_and_an_exact_log_px():
    """p(x|z) = p(x): the true posterior is the prior, which diag contains, and log p(x) is the decoder's bias alone."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(P, 8), nn.Tanh())
    encoder.out_features = 8
    decoder = nn.Linear(D, P)
    with torch.no_grad():
        decoder.weight.zero_()
    model = VAE(encoder, build_posterior("diag", 8, D), decoder, D)
    settings = GapSettings(n_images=4, elbo_samples=500, steps=400, lr=0.05, iw_samples=2000, batch_size=4)
    summary, arrays = inference_gaps(model, IMAGES, settings)

    exact = bernoulli_log_likelihood(decoder.bias.detach(), IMAGES.float() / 255).double()
    torch.testing.assert_close(arrays["log_px"], exact, atol=2e-3, rtol=0)
    assert arrays["approximation_gap"].abs().max() < 0.01  # the optimum q* is the prior: ELBO(q*) = log p(x)
    assert torch.all(arrays["amortization_gap"] > 0.05)  # the untrained encoder's q is not the prior
    assert summary["improved_fraction"] == 1.0 and summary["n_images"] == 4
    assert summary["approximation_gap"] == pytest.approx(arrays["approximation_gap"].mean().item())


@pytest.mark.parametrize("posterior", POSTERIOR_NAMES)
def test_gaps_order_and_log_px_match_grid_integration_in_two_dimensions(posterior):
    """elbo_amortized <= elbo_local <= log p(x) per image within Monte Carlo error, and log_px is the grid's value."""
    model = tiny_vae(posterior)
    x = IMAGES.float() / 255
    fit_posterior(model, x, steps=100)  # a sensible but imperfect encoder: something left to amortize
    exact = exact_log_px(model, x)
    settings = GapSettings(n_images=4, elbo_samples=4000, steps=300, lr=0.02, iw_samples=20_000, iw_chunk=5000,
                           batch_size=4)
    _, arrays = inference_gaps(model, IMAGES, settings)

    torch.testing.assert_close(arrays["log_px"], exact, atol=0.02, rtol=0)
    assert torch.all(arrays["elbo_amortized"] <= arrays["elbo_local"])
    assert torch.all(arrays["elbo_local"] <= exact + 4 * arrays["elbo_local_se"])  # a lower bound on log p(x)
    assert torch.all(arrays["amortization_gap"] >= 0) and arrays["improved"].any()
    assert torch.all(arrays["approximation_gap"] > -0.02 - 4 * arrays["elbo_local_se"])
