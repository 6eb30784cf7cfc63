"""The training objectives the VAE report describes: beta-VAE and free bits, beside the true ELBO that is reported."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import POSTERIOR_NAMES, TINY_OVERRIDES, compose
from rhovae.experiment import run_experiment
from rhovae.posteriors import build_posterior
from rhovae.tracking import read_jsonl
from rhovae.trainer import kl_weight
from rhovae.vae import VAE

P, D = 12, 4


def small_vae(posterior: str, decoder_weight: float = 1.0) -> VAE:
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(P, 16), nn.Tanh())
    encoder.out_features = 16
    decoder = nn.Linear(D, P)
    with torch.no_grad():
        decoder.weight.mul_(decoder_weight)
    return VAE(encoder, build_posterior(posterior, 16, D), decoder, D)


@pytest.mark.parametrize("posterior", POSTERIOR_NAMES)
def test_beta_one_without_free_bits_is_exactly_the_negative_elbo(posterior):
    model, x = small_vae(posterior), torch.rand(32, P).bernoulli()
    torch.manual_seed(1)
    loss, _ = model.loss(x)
    torch.manual_seed(1)
    terms = model.elbo_terms(x)
    assert torch.equal(loss, -(terms.recon - 1.0 * terms.objective_kl).mean())
    torch.manual_seed(1)
    beta_loss, _ = model.loss(x, beta=4.0)
    assert torch.equal(beta_loss, -(terms.recon - 4.0 * terms.objective_kl).mean())


@pytest.mark.parametrize("posterior", POSTERIOR_NAMES)
def test_kl_groups_add_up_to_the_kl(posterior):
    model, x = small_vae(posterior), torch.rand(32, P).bernoulli()
    terms = model.elbo_terms(x, kl_groups=True)
    torch.testing.assert_close(terms.kl_groups.sum(-1), terms.objective_kl)
    assert terms.kl_groups.shape == (32, D if posterior == "diag" else 1)  # only diag's KL factorizes


def test_free_bits_give_no_gradient_to_a_group_below_its_threshold():
    model = small_vae("diag", decoder_weight=0.0)  # p(x|z) ignores z: every gradient on the heads is the KL's
    x = torch.rand(64, P).bernoulli()
    with torch.no_grad():
        per_dim = model.elbo_terms(x, kl_groups=True).kl_groups.mean(0)
    ordered = per_dim.sort().values
    threshold = (ordered[1] + ordered[2]).item() / 2  # strictly between two groups' KLs
    below = per_dim < threshold
    assert below.any() and (~below).any()
    loss, _ = model.loss(x, free_bits=threshold)
    loss.backward()
    for head in (model.posterior.loc, model.posterior.raw_std):
        grad = head.weight.grad.abs().sum(-1)  # one row per latent dimension
        assert torch.all(grad[below] == 0) and torch.all(grad[~below] > 0)


def test_warm_up_rises_to_beta():
    assert kl_weight(0, 10, 0, beta=4.0) == 4.0
    assert kl_weight(10, 10, 2, beta=4.0) == 2.0
    assert kl_weight(25, 10, 2, beta=4.0) == 4.0


def test_a_beta_vae_trains_on_its_objective_and_reports_the_true_elbo(data_root, tmp_path):
    cfg = compose([f"dataset.root={data_root}", "logger=none", "trainer.device=cpu", *TINY_OVERRIDES,
                   "trainer.epochs=1", "objective.beta=4", "objective.free_bits=0.5"])
    summary = run_experiment(cfg, tmp_path)
    row = read_jsonl(tmp_path / "metrics.jsonl")[0]
    assert row["beta"] == 4.0
    assert row["train/loss"] > -(row["train/recon"] - row["train/kl"])  # the objective is not the ELBO ...
    assert abs(summary["test/elbo"] - (summary["test/recon"] - summary["test/kl"])) < 1e-3  # ... the report is
    assert summary["config"]["objective"] == {"beta": 4.0, "free_bits": 0.5, "iw_samples": 1}


def test_iwae_bound_with_one_sample_is_the_single_sample_elbo_and_its_mean_the_closed_form_elbo():
    model, x = small_vae("diag"), torch.rand(8, P).bernoulli()
    torch.manual_seed(2)
    bound, recon, kl = model.iwae_bound(x, 1)
    torch.manual_seed(2)
    torch.testing.assert_close(bound, model.log_importance_weights(x, 1)[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(bound, recon - kl)
    with torch.no_grad():  # E[L_1] = E_q[log p(x|z)] - KL(q || p), the ELBO with the closed-form KL
        draws = model.iwae_bound(x.repeat(4000, 1), 1)[0].view(4000, len(x))
        closed = model.elbo_terms(x.repeat(4000, 1)).recon.view(4000, len(x)).mean(0) - model.elbo_terms(x).kl
    se = draws.std(0) / 4000 ** 0.5
    assert torch.all((draws.mean(0) - closed).abs() < 5 * se + 0.02), (draws.mean(0), closed, se)


@pytest.mark.parametrize("posterior", ["diag", "planar"])
def test_iwae_bound_rises_with_k_towards_log_px_by_grid_integration(posterior):
    """E[L_1] <= E[L_10] <= E[L_100] <= log p(x) (Burda et al. 2015, Theorem 1), and L_2000 is within 0.05 nats of
    log p(x) integrated on a grid, for a 2-D latent whose q was fitted."""
    from helpers.models import exact_log_px, fit_posterior, tiny_vae

    torch.manual_seed(3)
    model = tiny_vae(posterior)
    x = torch.sigmoid(model.decoder(torch.randn(4, 2))).bernoulli().detach()
    fit_posterior(model, x, steps=50)  # a rough q: L_k then rises clearly with k
    exact = exact_log_px(model, x).float()
    with torch.no_grad():
        draws = [model.iwae_bound(x.repeat(reps, 1), k)[0].view(reps, len(x))  # reps independent bounds per image
                 for k, reps in ((1, 4000), (10, 400), (100, 100))]
        close = model.iwae_bound(x, 2000)[0]
    means = [d.mean(0) for d in draws]
    se = [d.std(0) / len(d) ** 0.5 for d in draws]
    for lower, higher in ((0, 1), (1, 2)):  # no fall beyond 3 standard errors, and a clear rise from 1 to 100
        assert torch.all(means[higher] > means[lower] - 3 * (se[lower] ** 2 + se[higher] ** 2).sqrt())
    assert torch.all(means[2] - means[0] > 5 * (se[0] ** 2 + se[2] ** 2).sqrt())
    assert torch.all(means[2] < exact + 3 * se[2])
    torch.testing.assert_close(close, exact, rtol=0, atol=0.05)


def test_iwae_training_loss_is_the_negative_bound_and_refuses_a_kl_weight():
    model, x = small_vae("diag"), torch.rand(16, P).bernoulli()
    torch.manual_seed(4)
    loss, terms = model.loss(x, iw_samples=5)
    torch.manual_seed(4)
    bound, recon, kl = model.iwae_bound(x, 5)
    assert torch.equal(loss, -bound.mean()) and torch.equal(terms.recon, recon) and torch.equal(terms.kl, kl)
    from rhovae.config import load_config, validate_config
    from rhovae.errors import ConfigError

    for extra, key in (("objective.beta=2", "objective.beta"), ("objective.free_bits=0.5", "objective.free_bits"),
                       ("trainer.kl_warmup_epochs=2", "trainer.kl_warmup_epochs")):
        with pytest.raises(ConfigError, match=rf"{key}=.* is not valid; accepted: .*with objective.iw_samples > 1"):
            validate_config(load_config(compose(["objective.iw_samples=5", extra])))


def test_stepped_learning_rate_follows_the_iwae_schedule_and_a_constant_one_without_stages():
    from rhovae.config import TrainerConfig
    from rhovae.trainer import learning_rate

    stages = [3 ** i for i in range(8)]
    settings = TrainerConfig(epochs=3280, batch_size=20, lr=1e-3, lr_stage_epochs=stages, lr_stage_decay=10 ** (-1 / 7))
    for i in range(8):  # 0.001 * 10^(-i/7) on the first and last epoch of stage i (Burda et al. 2015)
        first, last = sum(stages[:i]) + 1, sum(stages[:i + 1])
        for epoch in (first, last):
            assert learning_rate(settings, epoch) == pytest.approx(1e-3 * 10 ** (-i / 7), rel=1e-12)
    assert sum(stages) == 3280 and learning_rate(settings, 5000) == pytest.approx(1e-3 * 10 ** (-1))
    assert learning_rate(TrainerConfig(epochs=3, batch_size=20, lr=3e-4), 3) == 3e-4
