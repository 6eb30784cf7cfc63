"""Where a posterior loses nats: the inference-gap decomposition (Cremer, Li & Duvenaud 2018).

For one image x, with q_enc the encoder's posterior and q* the best member of the same family for x,

    log p(x) - ELBO(q_enc)  =  [log p(x) - ELBO(q*)]  +  [ELBO(q*) - ELBO(q_enc)]
                                approximation gap          amortization gap

The approximation gap is what the family cannot represent; the amortization gap is what the encoder fails to
find. q* is found through the posterior's local parameters (``Posterior.local_parameters``): starting from the
encoder's vector, ``steps`` Adam steps on each image's ELBO move that vector alone, with the decoder and every
shared weight (a flow's MADE) frozen. All images of a batch are optimized together; the loss is the sum of
their ELBOs, so each image's gradient is its own.

Estimators, all in nats per image:

* ``elbo_amortized``: the mean of ``elbo_samples`` log weights log p(x, z) - log q(z) under q_enc.
* ``elbo_local``: per image, the better of start and end of the optimization is chosen with one estimate of each
  (so a step size too large for an image cannot leave it worse than its encoder), then the chosen vector is scored
  again with ``elbo_samples`` fresh draws. Reporting the estimate that did the choosing would add the maximum of
  two noisy numbers, a positive bias (0.17 nats at 100 samples with no optimization at all); the fresh one is
  unbiased, so with ``steps=0`` the amortization gap is 0 up to its standard error. Its Monte Carlo standard error
  is reported per image (``elbo_local_se``) so noise can be told from a gap.
* ``log_px``: importance-weighted log p(x) with ``iw_samples`` draws from the locally optimized q, a better
  proposal than q_enc. It is a lower bound in expectation that tightens with K: ``log_px_tenth_k`` is the same
  estimate from the first K / 10 draws, so ``log_px - log_px_tenth_k`` shows how fast it is still rising (the bias
  left at K is of that order or smaller), and ``pareto_k_above_0_7`` the fraction of images whose weights are too
  heavy-tailed for the estimate to be trusted (``rhovae.pareto``). A biased-low log p(x) shrinks the
  approximation gap.

The two gaps are differences of these: ``approximation_gap = log_px - elbo_local``,
``amortization_gap = elbo_local - elbo_amortized``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Callable

import torch
from tqdm import tqdm

from .config.schema import GapSettings
from .data import eval_batches
from .evaluation import EvaluationStopped, log_weight_summary, seeded_rng
from .pareto import UNRELIABLE, pareto_k_hat
from .vae import VAE, bernoulli_log_likelihood


def elbo_estimate(model: VAE, x: torch.Tensor, params: torch.Tensor, n_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error over ``n_samples`` of log p(x, z) - log q(z), z ~ q(params): ``[B]`` each."""
    q = model.posterior.distribution(params)
    log_w = model.log_importance_weights(x, n_samples, q).double()
    return log_w.mean(0), log_w.std(0) / math.sqrt(n_samples)


def optimize_local_parameters(model: VAE, x: torch.Tensor, start: torch.Tensor, settings: GapSettings) -> torch.Tensor:
    """``start`` moved by Adam to maximise each image's ELBO (reconstruction minus the posterior's own KL)."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    params = start.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([params], lr=settings.lr)
    prior = model.prior()
    try:
        with torch.enable_grad():
            for _ in range(settings.steps):
                q = model.posterior.distribution(params)
                z, log_q = model.posterior.rsample_with_log_prob(q, (settings.opt_samples,))
                recon = bernoulli_log_likelihood(model.decoder(z), x).mean(0)
                kl = model.posterior.kl(q, z, log_q, prior)
                optimizer.zero_grad(set_to_none=True)
                (kl - recon).sum().backward()
                optimizer.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return params.detach()


def inference_gaps(model: VAE, images: torch.Tensor, settings: GapSettings, *, progress: bool = False,
                   stop: Callable[[], bool] = lambda: False) -> tuple[dict, dict[str, torch.Tensor]]:
    """The decomposition on ``images`` (uint8 ``[N, n_pixels]``): summary numbers and per-image arrays ``[N]``."""
    started = time.perf_counter()
    per_image: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "elbo_amortized", "elbo_amortized_se", "elbo_local", "elbo_local_se", "log_px", "log_px_tenth_k", "k_hat",
        "improved")}
    bar = tqdm(total=len(images), desc="inference gaps", unit="img", leave=False, dynamic_ncols=True,
               disable=None if progress else True)
    was_training = model.training
    model.eval()
    # no_grad, not inference_mode: the local optimization switches gradients back on inside
    with bar, torch.no_grad(), seeded_rng(settings.seed, images.device):
        for x in eval_batches(images, settings.batch_size):
            if stop():
                raise EvaluationStopped("stopped during the inference-gap analysis")
            start = model.posterior.local_parameters(model.encoder(x))
            amortized, amortized_se = elbo_estimate(model, x, start, settings.elbo_samples)
            end = optimize_local_parameters(model, x, start, settings)
            improved = elbo_estimate(model, x, end, settings.elbo_samples)[0] > amortized  # chooses; not reported
            best = torch.where(improved.unsqueeze(-1), end, start)
            local, local_se = elbo_estimate(model, x, best, settings.elbo_samples)  # fresh draws: unbiased
            weights = log_weight_summary(model, x, model.posterior.distribution(best), settings.iw_samples,
                                         settings.iw_chunk, n_prefix=settings.iw_samples // 10)
            for key, value in (("elbo_amortized", amortized), ("elbo_amortized_se", amortized_se),
                               ("elbo_local", local), ("elbo_local_se", local_se), ("log_px", weights.log_mean),
                               ("log_px_tenth_k", weights.log_mean_prefix),
                               ("k_hat", pareto_k_hat(weights.top, settings.iw_samples)), ("improved", improved)):
                per_image[key].append(value.detach().cpu())
            bar.update(len(x))
    model.train(was_training)
    arrays = {k: torch.cat(v) for k, v in per_image.items()}
    arrays["approximation_gap"] = arrays["log_px"] - arrays["elbo_local"]
    arrays["amortization_gap"] = arrays["elbo_local"] - arrays["elbo_amortized"]
    summary = {"n_images": len(images), **{k: arrays[k].double().mean().item() for k in (
        "elbo_amortized", "elbo_local", "log_px", "log_px_tenth_k", "approximation_gap", "amortization_gap")},
        "amortization_gap_se": arrays["amortization_gap"].double().std().item() / math.sqrt(len(images)),
        "pareto_k_above_0_7": (arrays["k_hat"] > UNRELIABLE).double().mean().item(),
        **{f"{k}_sd": arrays[k].double().std().item() for k in ("approximation_gap", "amortization_gap")},
        "improved_fraction": arrays["improved"].double().mean().item(),
        "elbo_local_se_mean": arrays["elbo_local_se"].double().mean().item(),
        "settings": asdict(settings), "time_s": time.perf_counter() - started}
    return summary, arrays
