"""The VAE's objective and networks against independent computations."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Bernoulli

from rhovae.errors import ConfigError
from rhovae.networks import build_networks
from rhovae.posteriors import build_posterior
from rhovae.trainer import kl_weight
from rhovae.vae import VAE, bernoulli_log_likelihood, count_parameters, standard_normal_prior


def tiny_vae(decoder="mlp", posterior="diag", d=3):
    options = {"hidden": [16, 8]} if decoder == "mlp" else {"channels": [4, 8], "hidden": 16}
    enc, dec = build_networks(decoder, (1, 28, 28), d, **options)
    return VAE(enc, build_posterior(posterior, enc.out_features, d), dec, d)


def test_bernoulli_log_likelihood_matches_torch_distribution():
    logits = 3 * torch.randn(4, 784)
    x = torch.bernoulli(torch.rand(4, 784))
    expected = Bernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(bernoulli_log_likelihood(logits, x), expected)
    # importance samples [S, B, P] broadcast against data [B, P]
    logits_s = torch.randn(5, 4, 784)
    assert bernoulli_log_likelihood(logits_s, x).shape == (5, 4)


@pytest.mark.parametrize("shape", [(6, 784), (5, 6, 784)], ids=["like x", "samples before the batch"])
def test_bernoulli_log_likelihood_is_the_same_with_and_without_autograd(shape):
    """Evaluation's in-place softplus gives training's bits, and neither path touches the logits."""
    torch.manual_seed(2)
    logits, x = 4 * torch.randn(shape), torch.bernoulli(torch.rand(6, 784))
    kept = logits.clone()
    with torch.no_grad():
        without = bernoulli_log_likelihood(logits, x)
    with_autograd = bernoulli_log_likelihood(logits.clone().requires_grad_(), x)
    assert torch.equal(without, with_autograd.detach()) and torch.equal(logits, kept)
    torch.testing.assert_close(without, Bernoulli(logits=logits).log_prob(x).sum(-1))


@pytest.mark.parametrize("scale", [1.0, 30.0, 300.0])
def test_bernoulli_log_likelihood_is_exact_for_saturated_logits_and_soft_targets(scale):
    """The written-out softplus must not overflow or lose the large terms, and x may be a grey level."""
    torch.manual_seed(1)
    logits = scale * torch.randn(3, 4, 784, dtype=torch.float64)
    for x in (torch.bernoulli(torch.rand(4, 784, dtype=torch.float64)), torch.rand(4, 784, dtype=torch.float64)):
        expected = (x * logits - torch.nn.functional.softplus(logits)).sum(-1)
        torch.testing.assert_close(bernoulli_log_likelihood(logits, x), expected, rtol=1e-10, atol=1e-6)
    logits = logits.requires_grad_()
    (gradient,) = torch.autograd.grad(bernoulli_log_likelihood(logits, x).sum(), logits)
    torch.testing.assert_close(gradient, (x - torch.sigmoid(logits)).detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("decoder", ["mlp", "conv"])
@pytest.mark.parametrize("posterior", ["diag", "rho"])
def test_elbo_terms_are_per_image_and_consistent(decoder, posterior):
    torch.manual_seed(0)
    model = tiny_vae(decoder, posterior)
    x = torch.bernoulli(torch.rand(6, 784))
    torch.manual_seed(1)
    terms = model.elbo_terms(x)
    assert terms.recon.shape == terms.kl.shape == (6,)
    torch.testing.assert_close(terms.elbo, terms.recon - terms.kl)
    assert (terms.recon < 0).all() and (terms.kl >= 0).all()
    # recompute by hand with the same random draws: encoder -> q -> z -> decoder
    torch.manual_seed(1)
    q = model.posterior(model.encoder(x))
    z, _ = model.posterior.rsample_with_log_prob(q)
    recon = Bernoulli(logits=model.decoder(z)).log_prob(x).sum(-1)
    kl = torch.distributions.kl_divergence(q, standard_normal_prior(3))
    torch.testing.assert_close(terms.recon, recon)
    torch.testing.assert_close(terms.kl, kl)
    torch.manual_seed(1)
    loss, _ = model.loss(x, beta=0.5)
    torch.testing.assert_close(loss, -(recon - 0.5 * kl).mean())


@pytest.mark.parametrize("decoder", ["mlp", "conv"])
def test_networks_pass_leading_dimensions_through(decoder):
    model = tiny_vae(decoder)
    assert model.encoder(torch.rand(2, 5, 784)).shape == (2, 5, model.encoder.out_features)
    assert model.decoder(torch.randn(7, 5, 3)).shape == (7, 5, 784)
    assert model.sample_images(4).shape == (4, 784)
    assert model.reconstruct(torch.rand(3, 784)).shape == (3, 784)


def test_mlp_sizes_and_parameter_count():
    enc, dec = build_networks("mlp", (1, 28, 28), 32, hidden=[512, 512])
    expected_enc = 784 * 512 + 512 + 512 * 512 + 512
    expected_dec = 32 * 512 + 512 + 512 * 512 + 512 + 512 * 784 + 784
    assert count_parameters(enc) == expected_enc and count_parameters(dec) == expected_dec


def test_unknown_network_and_activation_are_config_errors():
    with pytest.raises(ConfigError, match="networks='resnet' is not known; accepted: conv, mlp"):
        build_networks("resnet", (1, 28, 28), 4)
    with pytest.raises(ConfigError, match="networks.activation='swish' is not known; accepted: elu, gelu, relu"):
        build_networks("mlp", (1, 28, 28), 4, activation="swish")


def test_kl_warmup_schedule():
    assert kl_weight(0, 10, 0) == 1.0
    assert kl_weight(0, 10, 2) == 0.0
    assert kl_weight(10, 10, 2) == 0.5
    assert kl_weight(25, 10, 2) == 1.0


@pytest.mark.parametrize("decoder", ["mlp", "conv"])
@pytest.mark.parametrize("iw_samples", [1, 3], ids=["elbo", "iwae"])
def test_bfloat16_networks_round_the_step_and_keep_everything_else_float32(decoder, iw_samples):
    """``trainer.precision=bfloat16``: the encoder's and decoder's layers compute in bfloat16 (checked at their
    outputs), the posterior's heads and the loss in float32, and loss and gradients move by rounding only."""
    torch.manual_seed(0)
    model = tiny_vae(decoder)
    x = torch.bernoulli(torch.rand(32, 784))
    seen = {}
    for name, module in (("encoder", model.encoder), ("decoder", model.decoder), ("heads", model.posterior)):
        module.register_forward_hook(lambda m, args, out, name=name: seen.setdefault(name, []).append(
            (args[0].dtype, out.dtype if torch.is_tensor(out) else out.mean.dtype)))
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        seen.clear()
        torch.manual_seed(1)
        loss, _ = model.loss(x, iw_samples=iw_samples, network_dtype=dtype)
        model.zero_grad()
        loss.backward()
        results[dtype] = loss, torch.cat([p.grad.flatten() for p in model.parameters()])
        assert loss.dtype == torch.float32 and all(p.grad.dtype == torch.float32 for p in model.parameters())
        assert seen["heads"] == [(torch.float32, torch.float32)]
        assert seen["encoder"][0][1] == seen["decoder"][0][1] == dtype
    (loss32, grad32), (loss16, grad16) = results[torch.float32], results[torch.bfloat16]
    assert loss16 != loss32 and abs(loss16 - loss32) < 2e-3 * abs(loss32)
    assert torch.nn.functional.cosine_similarity(grad32, grad16, dim=0) > 0.99
