"""Scoring a trained VAE on a fixed image set, in nats per image.

* ``evaluate_elbo``: the ELBO with one posterior sample per image, and its reconstruction and KL terms.
* ``importance_weighted_log_likelihood``: log p(x) ~ logmeanexp_k [log p(x|z_k) + log p(z_k) - log q(z_k|x)]
  over K samples z_k ~ q(z|x) (Burda et al.), processed in chunks of samples so memory stays bounded.
  Its negative is the test NLL that likelihood papers report; it is >= the ELBO in expectation. The same weights
  give each image's effective sample size, the Monte Carlo variance of its estimate, the estimate from the first
  K / 10 samples (its remaining bias) and the Pareto k-hat of the weights (``importance_weighted_estimates``).
* ``posterior_diagnostics``: active units (latent dimensions whose Cov_x(E_q[z|x]) exceeds a threshold;
  for Monte Carlo means the estimator's own variance is subtracted, so sampling noise does not count as
  activity), the mean and spread of each posterior's own statistics (rho and log s for ``rho``), and the
  information diagnostics of ``rhovae.information`` (I(x; z), marginal KL, KL per dimension);
  ``active_units`` the first alone.

Every evaluation draws its samples from its own seeded random stream (``EvalSettings.seed``), so the
numbers do not depend on how far training advanced the global generator, a re-scored run reproduces them,
and evaluating never perturbs training.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

from .config.schema import EvalSettings
from .data import ImageData, eval_batches
from .information import information
from .pareto import UNRELIABLE, pareto_k_hat, tail_length
from .vae import PRECISIONS, VAE

log = logging.getLogger(__name__)


class EvaluationStopped(Exception):
    """``stop()`` turned true between two batches of an evaluation; nothing of it was kept."""


def _never() -> bool:
    return False


@contextlib.contextmanager
def seeded_rng(seed: int, device: torch.device):
    """Run the block with torch's global generators reseeded, restoring their state afterwards."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def evaluating(model: VAE, seed: int, device: torch.device):
    """Eval mode, no autograd, and a seeded random stream; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), seeded_rng(seed, device):
            yield
    finally:
        model.train(was_training)


def evaluate_elbo(model: VAE, images: torch.Tensor, *, batch_size: int = 1000, eval_seed: int = 0,
                  iw_samples: int = 1) -> dict[str, float]:
    """Mean per-image ``elbo``, ``recon`` and ``kl`` over ``images`` (uint8), one posterior sample per image; with
    ``iw_samples`` = k > 1 also ``iw_bound``, the k-sample importance-weighted bound an IWAE run trains."""
    totals = torch.zeros(3, dtype=torch.float64, device=images.device)
    with evaluating(model, eval_seed, images.device):
        for x in eval_batches(images, batch_size):
            terms = model.elbo_terms(x)
            bound = model.iwae_bound(x, iw_samples)[0].sum() if iw_samples > 1 else torch.zeros(())
            totals += torch.stack([terms.recon.sum(), terms.kl.sum(), bound.to(terms.kl)]).double()
    recon, kl, bound = (totals / len(images)).tolist()
    return {"elbo": recon - kl, "recon": recon, "kl": kl, **({"iw_bound": bound} if iw_samples > 1 else {})}


@dataclass
class WeightSummary:
    """What the importance-weighted estimates need of K log-weights w_k = log p(x, z_k) - log q(z_k), per image:
    log (1/K) sum_k w_k (``log_mean``), log (1/K) sum_k w_k^2 (``log_mean_sq``), the same first moment from only
    the first ``n_prefix`` draws (``log_mean_prefix``, to show the estimator's bias at K / 10), and the largest
    ``pareto.tail_length(K) + 1`` log-weights (``top``, for the Pareto k-hat). All float64."""

    log_mean: torch.Tensor
    log_mean_sq: torch.Tensor
    log_mean_prefix: torch.Tensor
    top: torch.Tensor


def log_weight_summary(model: VAE, x: torch.Tensor, q, n_samples: int, chunk: int,
                       before_chunk: Callable[[], None] = lambda: None, n_prefix: int = 0,
                       decoder_dtype: torch.dtype = torch.float32) -> WeightSummary:
    """``WeightSummary`` of ``n_samples`` draws z_k ~ ``q`` for each image of ``x``, reduced with running logsumexps
    (and a running top-M) over chunks of at most ``chunk`` samples, so memory does not grow with K.

    The first moment is the importance-weighted log p(x); with the second, the effective sample size
    (sum w)^2 / sum w^2 and the delta-method variance of the first, (mean w^2 / (mean w)^2 - 1) / K.
    """
    n_prefix = min(max(n_prefix, 1), n_samples)
    first = torch.full((len(x),), -math.inf, dtype=torch.float64, device=x.device)
    second, prefix = first.clone(), first.clone()
    top = torch.empty(len(x), 0, dtype=torch.float64, device=x.device)
    keep = min(tail_length(n_samples) + 1, n_samples)
    for start in range(0, n_samples, chunk):
        before_chunk()
        log_w = model.log_importance_weights(x, min(chunk, n_samples - start), q, decoder_dtype).double()
        first = torch.logaddexp(first, torch.logsumexp(log_w, dim=0))
        second = torch.logaddexp(second, torch.logsumexp(2 * log_w, dim=0))
        if start < n_prefix:
            prefix = torch.logaddexp(prefix, torch.logsumexp(log_w[: n_prefix - start], dim=0))
        top = torch.cat([top, log_w.T], dim=1).topk(min(keep, top.shape[1] + len(log_w)), dim=1).values
    return WeightSummary(first - math.log(n_samples), second - math.log(n_samples), prefix - math.log(n_prefix), top)


@dataclass
class ImportanceEstimates:
    """Per image ``[N]``: log p(x) from K samples and from the first K / 10, the effective sample size over K, the
    delta-method Monte Carlo variance of log p(x), and the Pareto k-hat of the weights (``rhovae.pareto``)."""

    log_px: torch.Tensor
    ess_fraction: torch.Tensor
    mc_variance: torch.Tensor
    log_px_tenth: torch.Tensor
    k_hat: torch.Tensor


def importance_weighted_log_likelihood(model: VAE, images: torch.Tensor, *, n_samples: int, chunk: int = 500,
                                       batch_size: int = 100, eval_seed: int = 0, progress: bool = False,
                                       stop: Callable[[], bool] = _never, precision: str = "float32") -> torch.Tensor:
    """Per-image estimates of log p(x) from ``n_samples`` importance samples, shape ``[N]``."""
    return importance_weighted_estimates(model, images, n_samples=n_samples, chunk=chunk, batch_size=batch_size,
                                         eval_seed=eval_seed, progress=progress, stop=stop,
                                         precision=precision).log_px


def importance_weighted_estimates(model: VAE, images: torch.Tensor, *, n_samples: int, chunk: int = 500,
                                  batch_size: int = 100, eval_seed: int = 0, progress: bool = False,
                                  stop: Callable[[], bool] = _never, precision: str = "float32") -> ImportanceEstimates:
    """Per-image log p(x) from ``n_samples`` importance samples, with the diagnostics of ``ImportanceEstimates``.

    Each image is encoded once; its K log-weights are reduced over chunks of at most ``chunk`` samples, so memory
    grows with ``chunk * batch_size``, not with K. With ``progress`` a tqdm bar counts images (hidden when stderr is
    not a terminal); ``stop()`` is polled before every chunk of samples and raises ``EvaluationStopped``.
    ``precision`` (``rhovae.vae.PRECISIONS``) is that of the decoder's matrix products; everything else is float32
    and the reductions over samples float64.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    summaries, done = [], 0
    bar = tqdm(total=len(images), desc=f"test NLL (K={n_samples})", unit="img", leave=False, dynamic_ncols=True,
               disable=None if progress else True)

    def check() -> None:
        if stop():
            raise EvaluationStopped(f"stopped during the importance-weighted NLL, after {done} of {len(images)} images")

    with bar, evaluating(model, eval_seed, images.device):
        for x in eval_batches(images, batch_size):
            summaries.append(log_weight_summary(model, x, model.posterior_of(x), n_samples, chunk, before_chunk=check,
                                                n_prefix=n_samples // 10, decoder_dtype=PRECISIONS[precision]))
            done += len(x)  # counted here: a bar hidden off a terminal counts nothing
            bar.update(len(x))
    log_mean, log_mean_sq, log_mean_prefix, top = (torch.cat(parts) for parts in
                                                   zip(*((s.log_mean, s.log_mean_sq, s.log_mean_prefix, s.top)
                                                         for s in summaries)))
    relative_second_moment = (log_mean_sq - 2 * log_mean).exp()  # mean(w^2) / mean(w)^2 >= 1
    return ImportanceEstimates(log_px=log_mean, ess_fraction=1.0 / relative_second_moment,
                               mc_variance=(relative_second_moment - 1.0) / n_samples, log_px_tenth=log_mean_prefix,
                               k_hat=pareto_k_hat(top, n_samples))


def importance_metrics(estimates: ImportanceEstimates, n_samples: int) -> dict[str, float]:
    """The NLL and what says how far to trust it, as reported (without the ``test/`` prefix):

    ``nll`` (K samples), ``nll_tenth_k`` (the first K / 10 of them: the importance-weighted estimate is biased
    upwards, by less as K grows, so the difference shows how much bias is left), ``ess_fraction``, ``nll_mc_se``
    (delta method; meaningless where k-hat > 0.7), ``pareto_k_median`` and ``pareto_k_above_0_7`` (the fraction
    of images whose estimate cannot be trusted, ``rhovae.pareto``).
    """
    log_px = estimates.log_px
    return {"nll": -log_px.mean().item(), "nll_tenth_k": -estimates.log_px_tenth.mean().item(),
            "iw_samples": n_samples, "ess_fraction": estimates.ess_fraction.mean().item(),
            "nll_mc_se": estimates.mc_variance.sum().sqrt().item() / len(log_px),
            "pareto_k_median": estimates.k_hat.median().item(),
            "pareto_k_above_0_7": (estimates.k_hat > UNRELIABLE).double().mean().item()}


def _activity(means: list[torch.Tensor], noise: list[torch.Tensor]) -> torch.Tensor:
    """Cov_x(E_q[z|x]) per latent dimension from per-batch means and the variance of each mean's estimate: the
    covariance of Monte Carlo means is Cov_x(E_q[z|x]) + E_x[Var of the estimate], so the second term is removed."""
    return torch.cat(means).var(dim=0) - torch.cat(noise).mean(dim=0)


def active_units(model: VAE, images: torch.Tensor, *, batch_size: int = 1000, eval_seed: int = 0,
                 mean_samples: int = 100, threshold: float = 0.01) -> int:
    """The active units of ``posterior_diagnostics`` alone (no statistics, no information diagnostics): cheap
    enough for every milestone, where a posterior that stops using its latents shows first."""
    means, noise = [], []
    with evaluating(model, eval_seed, images.device):
        for x in eval_batches(images, batch_size):
            q = model.posterior.distribution(model.posterior.local_parameters(model.encoder(x)))
            mean, mean_variance = model.posterior.mean(q, mean_samples)
            means.append(mean)
            noise.append(mean_variance)
    return int((_activity(means, noise) > threshold).sum())


def posterior_diagnostics(model: VAE, images: torch.Tensor, *, batch_size: int = 1000, eval_seed: int = 0,
                          mean_samples: int = 100, threshold: float = 0.01,
                          information_images: int | None = None) -> tuple[dict[str, float], torch.Tensor]:
    """Active units, posterior statistics and the information diagnostics (``rhovae.information``) over ``images``;
    also returns E_q[z|x] per image ``[N, d]``. One pass of the encoder: the information diagnostics work on the
    local parameters it collects."""
    means, noise, stats, params = [], [], defaultdict(list), []
    with evaluating(model, eval_seed, images.device):
        for x in eval_batches(images, batch_size):
            params.append(model.posterior.local_parameters(model.encoder(x)))
            q = model.posterior.distribution(params[-1])
            mean, mean_variance = model.posterior.mean(q, mean_samples)
            means.append(mean)
            noise.append(mean_variance)
            for name, value in model.posterior.statistics(q).items():
                stats[name].append(value)
        info = information(model, torch.cat(params), chunk=batch_size, outer=information_images)
    result: dict[str, float] = {"active_units": int((_activity(means, noise) > threshold).sum())}
    means = torch.cat(means)
    for name, values in stats.items():
        values = torch.cat(values).double()
        result[f"{name}_mean"], result[f"{name}_std"] = values.mean().item(), values.std().item()
    result.update({k: v for k, v in info.items() if k != "kl"})  # the test KL is reported by evaluate_elbo
    return result, means


def evaluate_test_set(model: VAE, data: ImageData, settings: EvalSettings, *, progress: bool = False,
                      stop: Callable[[], bool] = _never) -> tuple[dict[str, float], torch.Tensor]:
    """Every test metric, keyed ``test/...``, and the test set's posterior means (for latent plots).

    ``stop()`` is polled between the parts and between the batches of the long one (the importance-weighted
    NLL); when it turns true, ``EvaluationStopped`` is raised and nothing is returned.
    """
    def check(done: str) -> None:
        if stop():
            raise EvaluationStopped(f"stopped during the test evaluation, after {done}")

    started = time.perf_counter()
    metrics = {f"test/{k}": v for k, v in evaluate_elbo(model, data.test, batch_size=settings.batch_size,
                                                        eval_seed=settings.seed).items()}
    log.info("test ELBO %.2f (%.0fs); next: active units, posterior statistics and I(x; z) on %d images",
             metrics["test/elbo"], time.perf_counter() - started, len(data.test))
    check("the test ELBO")
    started = time.perf_counter()
    diagnostics, means = posterior_diagnostics(model, data.test, batch_size=settings.batch_size,
                                               eval_seed=settings.seed, mean_samples=settings.mean_samples,
                                               threshold=settings.active_threshold,
                                               information_images=settings.information_images)
    metrics.update({f"test/{k}": v for k, v in diagnostics.items()})
    log.info("%d active units (%.0fs)%s", diagnostics["active_units"], time.perf_counter() - started,
             f"; next: the importance-weighted NLL with K={settings.iw_samples}" if settings.iw_samples > 0 else "")
    check("the active units")
    if settings.iw_samples > 0:
        start = time.perf_counter()
        estimates = importance_weighted_estimates(model, data.test, n_samples=settings.iw_samples,
                                                  chunk=settings.iw_chunk, batch_size=settings.iw_batch_size,
                                                  eval_seed=settings.seed, progress=progress, stop=stop,
                                                  precision=settings.iw_precision)
        metrics.update({f"test/{k}": v for k, v in importance_metrics(estimates, settings.iw_samples).items()})
        metrics["test/iw_eval_s"] = time.perf_counter() - start
    return metrics, means
