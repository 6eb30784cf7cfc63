"""Annealed importance sampling (AIS) of log p(x), and bidirectional Monte Carlo (BDMC) to bound its error.

AIS (Neal 2001) moves ``C`` chains per image through the distributions

    f_t(z) = p0(z)^(1 - b_t) p(x, z)^(b_t),    0 = b_0 < b_1 < ... < b_T = 1,

from a normalized initial distribution p0 to the unnormalized posterior p(x, z) = p(z) p(x|z), whose normalizer is
p(x). A chain starts at z_0 ~ p0 and adds, for t = 1..T, the log-weight increment log f_t(z) - log f_(t-1)(z) =
(b_t - b_(t-1)) [log p(x, z) - log p0(z)] at its current state, then moves with a transition that leaves f_t
invariant. exp(log-weight) is an unbiased estimate of p(x), so the log-mean-exp over chains is a stochastic lower
bound of log p(x) (Jensen) whose bias vanishes as T grows. The initial distribution is the prior (``start=prior``:
it knows nothing of the posterior being judged) or the run's own q(z|x) (``start=posterior``: closer to the
target, so fewer steps reach the same accuracy; it needs a q with a density at any z, which a flow does not have).

Transitions are Hamiltonian Monte Carlo: Gaussian momentum, ``leapfrog_steps`` leapfrog steps and a Metropolis
correction. Each image's step size (shared by its chains) is multiplied by ``adapt_factor`` after a transition
whose mean acceptance probability exceeded ``target_accept`` and divided by it otherwise (Wu, Burda, Salakhutdinov
and Grosse 2017, "On the quantitative analysis of decoder-based generative models"; tonywu95/eval_gen).

Run backwards (b from 1 to 0) from an exact posterior sample, the same schedule estimates 1 / p(x) without bias,
so minus its log-mean-exp is a stochastic upper bound of log p(x) (Grosse, Ghahramani and Adams 2015). Exact
posterior samples exist for data simulated from the model (z ~ p(z), x ~ p(x|z)): on such data the gap between
the two bounds bounds the error of forward AIS with that schedule (``bdmc``).

Everything is vectorized over chains and images (tensors ``[C, B, d]``), and images go through in batches, so
memory grows with ``chains * batch_size``, not with the number of images.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

from .config.checks import AIS_SCHEDULES as SCHEDULES, AIS_STARTS as STARTS
from .config.schema import AisSettings
from .data import eval_batches
from .errors import RhovaeError
from .evaluation import EvaluationStopped, importance_weighted_estimates, seeded_rng
from .vae import PRECISIONS, VAE, bernoulli_log_likelihood

MIN_STEP_SIZE, MAX_STEP_SIZE = 1e-4, 0.5  # the adapted step size stays in this range (as in eval_gen)


def beta_schedule(steps: int, kind: str = "sigmoid", delta: float = 4.0) -> torch.Tensor:
    """The inverse temperatures b_0 = 0 < ... < b_T = 1 (float64, ``[steps + 1]``).

    ``linear``: evenly spaced. ``sigmoid`` (Wu et al. 2017): sigmoid(delta * u) for u evenly spaced in [-1, 1],
    rescaled to [0, 1]: denser at both ends, where the target changes fastest per unit of b.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    if kind == "linear":
        return u
    if kind == "sigmoid":
        s = torch.sigmoid(delta * (2 * u - 1))
        return (s - s[0]) / (s[-1] - s[0])
    raise ValueError(f"schedule {kind!r} is not known; accepted: {', '.join(SCHEDULES)}")


@dataclass
class AnnealingPath:
    """The two ends of the path for a batch of B images, each a function of z ``[C, B, d]`` returning ``[C, B]``:
    ``log_p0`` (normalized) and ``log_joint`` = log p(x, z) (normalizer p(x)); ``sample_p0(C)`` draws z_0."""

    log_p0: Callable[[torch.Tensor], torch.Tensor]
    log_joint: Callable[[torch.Tensor], torch.Tensor]
    sample_p0: Callable[[int], torch.Tensor]


@dataclass
class PathState:
    """A batch of chain states with both log-densities and their gradients at z (so any b reuses them)."""

    z: torch.Tensor
    log_p0: torch.Tensor
    log_joint: torch.Tensor
    grad_p0: torch.Tensor
    grad_joint: torch.Tensor

    def log_f(self, beta: float) -> torch.Tensor:
        return (1 - beta) * self.log_p0 + beta * self.log_joint

    def grad_log_f(self, beta: float) -> torch.Tensor:
        return (1 - beta) * self.grad_p0 + beta * self.grad_joint

    def where(self, keep_new: torch.Tensor, old: "PathState") -> "PathState":
        """This state where ``keep_new`` ``[C, B]`` is true, ``old`` elsewhere."""
        m = keep_new.unsqueeze(-1)
        return PathState(torch.where(m, self.z, old.z), torch.where(keep_new, self.log_p0, old.log_p0),
                         torch.where(keep_new, self.log_joint, old.log_joint),
                         torch.where(m, self.grad_p0, old.grad_p0), torch.where(m, self.grad_joint, old.grad_joint))


def evaluate_path(path: AnnealingPath, z: torch.Tensor) -> PathState:
    """Both log-densities at ``z`` and their gradients with respect to ``z``."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        log_p0, log_joint = path.log_p0(z), path.log_joint(z)
        grad_p0, = torch.autograd.grad(log_p0.sum(), z)
        grad_joint, = torch.autograd.grad(log_joint.sum(), z)
    return PathState(z.detach(), log_p0.detach(), log_joint.detach(), grad_p0, grad_joint)


@dataclass
class HmcSettings:
    """One HMC transition: ``leapfrog_steps`` steps; with ``adapt``, each image's step size moves by
    ``adapt_factor`` toward ``target_accept`` after every transition."""

    leapfrog_steps: int = 10
    target_accept: float = 0.65
    adapt: bool = True
    adapt_factor: float = 1.02


def hmc_transition(path: AnnealingPath, state: PathState, beta: float, step_size: torch.Tensor,
                   settings: HmcSettings) -> tuple[PathState, torch.Tensor]:
    """One HMC move of every chain, leaving f_beta invariant; returns the new state and each move's acceptance
    probability min(1, exp(-dH)) ``[C, B]``. ``step_size`` is ``[B]`` (one per image)."""
    eps = step_size.to(state.z.dtype).view(1, -1, 1)
    momentum = torch.randn_like(state.z)
    energy = -state.log_f(beta) + 0.5 * (momentum * momentum).sum(-1)  # H = U + K, U = -log f
    p = momentum + 0.5 * eps * state.grad_log_f(beta)  # dp/dt = -dU/dz = grad log f
    z, new = state.z, state
    for step in range(settings.leapfrog_steps):
        z = z + eps * p
        new = evaluate_path(path, z)
        p = p + (eps if step < settings.leapfrog_steps - 1 else 0.5 * eps) * new.grad_log_f(beta)
    new_energy = -new.log_f(beta) + 0.5 * (p * p).sum(-1)
    log_accept = (energy - new_energy).clamp(max=0.0)
    log_accept = torch.where(torch.isnan(log_accept), torch.full_like(log_accept, -math.inf), log_accept)
    accept = torch.rand_like(log_accept).log() < log_accept
    return new.where(accept, state), log_accept.exp()


@dataclass
class AnnealingRun:
    """Per chain and image ``[C, B]``: the AIS log-weights (float64); per image ``[B]``: the mean acceptance
    probability over transitions and chains, and the final step size."""

    log_weights: torch.Tensor
    accept: torch.Tensor
    step_size: torch.Tensor


def anneal(path: AnnealingPath, z: torch.Tensor, betas: torch.Tensor, step_size: float | torch.Tensor,
           settings: HmcSettings) -> AnnealingRun:
    """Take chains from ``z`` ``[C, B, d]`` (a draw from f at ``betas[0]``) along ``betas`` and accumulate their
    log-weights sum_t log f_(b_t)(z) - log f_(b_(t-1))(z), each at the state before the move at b_t.

    Forward (``betas`` from 0 to 1, z ~ p0): exp(log-weight) estimates p(x). Reverse (from 1 to 0, z an exact
    posterior sample): it estimates 1 / p(x). No move follows the last increment, which nothing would use.
    """
    state = evaluate_path(path, z)
    n_images = z.shape[1]
    eps = torch.as_tensor(step_size, dtype=torch.float64, device=z.device).expand(n_images).clone()
    log_w = torch.zeros(z.shape[:2], dtype=torch.float64, device=z.device)
    accept_sum = torch.zeros(n_images, dtype=torch.float64, device=z.device)
    moves = 0
    betas = betas.tolist()
    for t in range(1, len(betas)):
        log_w += (betas[t] - betas[t - 1]) * (state.log_joint - state.log_p0).double()
        if t == len(betas) - 1:
            break
        state, accept = hmc_transition(path, state, betas[t], eps, settings)
        rate = accept.double().mean(0)
        accept_sum += rate
        moves += 1
        if settings.adapt:
            up = rate > settings.target_accept
            eps = torch.where(up, eps * settings.adapt_factor, eps / settings.adapt_factor)
            eps = eps.clamp(MIN_STEP_SIZE, MAX_STEP_SIZE)
    return AnnealingRun(log_w, accept_sum / max(moves, 1), eps)


def log_mean_exp(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log (1/C) sum_c exp(log_w) over the first dimension, and the delta-method variance of that log:
    (mean w^2 / (mean w)^2 - 1) / C, as for the importance-weighted estimate."""
    n = log_w.shape[0]
    first = torch.logsumexp(log_w, 0) - math.log(n)
    second = torch.logsumexp(2 * log_w, 0) - math.log(n)
    return first, ((second - 2 * first).exp() - 1) / n


def vae_path(model: VAE, x: torch.Tensor, start: str = "prior", decoder_dtype: torch.dtype = torch.float32,
             posterior_label: str = "") -> AnnealingPath:
    """The path from p0 (the prior, or q(z|x) of the model's own encoder) to p(z) p(x|z) for images ``x`` ``[B, P]``.
    The model's parameters are read, never trained; q is computed once, without gradients."""
    prior = model.prior()

    def log_joint(z: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_likelihood(model.decode(z, decoder_dtype), x) + prior.log_prob(z)

    if start == "prior":
        return AnnealingPath(prior.log_prob, log_joint, lambda chains: prior.sample((chains, len(x))))
    if start != "posterior":
        raise ValueError(f"start {start!r} is not known; accepted: {', '.join(STARTS)}")
    with torch.no_grad():
        q = model.posterior_of(x)
        try:
            q.log_prob(q.sample())
        except NotImplementedError:
            raise RhovaeError(f"ais.start=posterior needs a q(z|x) with a density at any z, and the posterior "
                              f"{posterior_label or type(model.posterior).__name__} has one only at its own samples; "
                              "accepted for it: ais.start=prior") from None
    return AnnealingPath(q.log_prob, log_joint, lambda chains: q.sample((chains,)))


@contextlib.contextmanager
def annealing(model: VAE, seed: int, device: torch.device):
    """Eval mode, the model's parameters frozen (gradients flow to z alone) and a seeded random stream; all restored
    afterwards."""
    was_training = model.training
    frozen = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in frozen:
        p.requires_grad_(False)
    try:
        with seeded_rng(seed, device):
            yield
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)


def hmc_settings(settings: AisSettings) -> HmcSettings:
    return HmcSettings(leapfrog_steps=settings.leapfrog_steps, target_accept=settings.target_accept,
                       adapt_factor=settings.adapt_factor)


def schedule_of(settings: AisSettings) -> torch.Tensor:
    return beta_schedule(settings.steps, settings.schedule, settings.sigmoid_delta)


@dataclass
class AisEstimates:
    """Per image ``[N]``: log p(x) (the log-mean-exp over chains), its delta-method Monte Carlo variance, the mean
    acceptance probability and the final step size."""

    log_px: torch.Tensor
    mc_variance: torch.Tensor
    accept: torch.Tensor
    step_size: torch.Tensor


def ais_estimates(model: VAE, images: torch.Tensor, settings: AisSettings, *, progress: bool = False,
                  stop: Callable[[], bool] = lambda: False, posterior_label: str = "") -> AisEstimates:
    """Forward AIS of log p(x) for every image of ``images`` (uint8 or binary), ``settings.batch_size`` at a time;
    ``stop()`` is polled between batches and raises ``EvaluationStopped``."""
    betas, hmc = schedule_of(settings), hmc_settings(settings)
    dtype = PRECISIONS[settings.precision]
    parts: list[AnnealingRun] = []
    bar = tqdm(total=len(images), desc=f"AIS (T={settings.steps})", unit="img", leave=False, dynamic_ncols=True,
               disable=None if progress else True)
    with bar, annealing(model, settings.seed, images.device):
        for x in eval_batches(images, settings.batch_size):
            if stop():
                raise EvaluationStopped(f"stopped during AIS, after {sum(p.accept.numel() for p in parts)} of "
                                        f"{len(images)} images")
            path = vae_path(model, x, settings.start, dtype, posterior_label)
            parts.append(anneal(path, path.sample_p0(settings.chains), betas, settings.step_size, hmc))
            bar.update(len(x))
    log_w = torch.cat([p.log_weights for p in parts], dim=1)
    log_px, variance = log_mean_exp(log_w)
    return AisEstimates(log_px, variance, torch.cat([p.accept for p in parts]), torch.cat([p.step_size for p in parts]))


def ais_metrics(model: VAE, images: torch.Tensor, settings: AisSettings, *, progress: bool = False,
                stop: Callable[[], bool] = lambda: False,
                posterior_label: str = "") -> tuple[dict[str, float], dict[str, list[float]]]:
    """AIS on ``images`` and, with ``settings.iw_samples`` > 0, the importance-weighted estimate on the same images
    (seeded by ``settings.seed``), as reported: ``nll`` (AIS, nats per image), ``nll_mc_se`` (its Monte Carlo
    standard error over chains), ``accept`` (mean acceptance probability), ``step_size_median``, ``s_per_image``, and
    ``iw_nll``, ``iw_nll_mc_se``, ``iw_minus_ais`` (the importance-weighted estimate's bias, up to AIS's own).

    Second, the per-image values behind them, in the order of ``images``: ``ais_log_px``, ``ais_mc_variance``,
    ``accept`` and, with ``iw_samples`` > 0, ``iw_log_px``, ``iw_mc_variance``. Two models scored on the same images
    pair image for image (``rhovae.results.ais_image_pairs``), which gives a difference between them an interval
    that counts which images were drawn, not only the chains' noise."""
    started = time.perf_counter()
    est = ais_estimates(model, images, settings, progress=progress, stop=stop, posterior_label=posterior_label)
    seconds = time.perf_counter() - started
    n = len(images)
    result = {"n_images": n, "nll": -est.log_px.mean().item(), "nll_mc_se": est.mc_variance.sum().sqrt().item() / n,
              "accept": est.accept.mean().item(), "step_size_median": est.step_size.median().item(),
              "s_per_image": seconds / n}
    per_image = {"ais_log_px": est.log_px, "ais_mc_variance": est.mc_variance, "accept": est.accept}
    if settings.iw_samples > 0:
        iw = importance_weighted_estimates(model, images, n_samples=settings.iw_samples, chunk=settings.iw_chunk,
                                           batch_size=settings.batch_size, eval_seed=settings.seed, stop=stop,
                                           precision=settings.precision)
        result.update({"iw_nll": -iw.log_px.mean().item(), "iw_nll_mc_se": iw.mc_variance.sum().sqrt().item() / n,
                       "iw_samples": settings.iw_samples})
        result["iw_minus_ais"] = result["iw_nll"] - result["nll"]
        per_image.update({"iw_log_px": iw.log_px, "iw_mc_variance": iw.mc_variance})
    return result, {k: v.double().tolist() for k, v in per_image.items()}


def simulate(model: VAE, n: int, generator_seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` draws (z, x) from the model: z ~ p(z), binary x ~ Bernoulli(sigmoid(decoder(z))); z is then an exact
    sample of p(z | x)."""
    with torch.no_grad(), seeded_rng(generator_seed, device):
        z = model.prior().sample((n,))
        x = torch.bernoulli(torch.sigmoid(model.decode(z)))
    return z, x


def bdmc(model: VAE, settings: AisSettings, n_images: int, *, progress: bool = False,
         stop: Callable[[], bool] = lambda: False, posterior_label: str = "") -> dict[str, float]:
    """Bidirectional Monte Carlo on ``n_images`` images simulated from the model: forward AIS (a stochastic lower
    bound of log p(x)) and reverse AIS from the exact posterior sample (a stochastic upper bound), with the same
    schedule, chains and transitions. ``gap`` = mean(upper - lower) bounds the error of forward AIS with these
    settings on such data; ``gap_se`` is its standard error over images."""
    betas, hmc = schedule_of(settings), hmc_settings(settings)
    dtype = PRECISIONS[settings.precision]
    device = next(model.parameters()).device
    z_exact, x_all = simulate(model, n_images, settings.seed + 1, device)
    lower, upper, accept = [], [], []
    started = time.perf_counter()
    bar = tqdm(total=n_images, desc=f"BDMC (T={settings.steps})", unit="img", leave=False, dynamic_ncols=True,
               disable=None if progress else True)
    with bar, annealing(model, settings.seed, device):
        for begin in range(0, n_images, settings.batch_size):
            if stop():
                raise EvaluationStopped(f"stopped during BDMC, after {begin} of {n_images} images")
            x, z = x_all[begin:begin + settings.batch_size], z_exact[begin:begin + settings.batch_size]
            path = vae_path(model, x, settings.start, dtype, posterior_label)
            forward = anneal(path, path.sample_p0(settings.chains), betas, settings.step_size, hmc)
            reverse = anneal(path, z.expand(settings.chains, *z.shape).clone(), betas.flip(0), settings.step_size, hmc)
            lower.append(log_mean_exp(forward.log_weights)[0])
            upper.append(-log_mean_exp(reverse.log_weights)[0])
            accept.append(torch.stack([forward.accept, reverse.accept]))
            bar.update(len(x))
    lower, upper, accept = torch.cat(lower), torch.cat(upper), torch.cat(accept, 1)
    gaps = upper - lower
    return {"n_images": n_images, "steps": settings.steps, "log_px_lower": lower.mean().item(),
            "log_px_upper": upper.mean().item(), "gap": gaps.mean().item(),
            "gap_se": (gaps.std() / math.sqrt(n_images)).item() if n_images > 1 else math.nan,
            "accept_forward": accept[0].mean().item(), "accept_reverse": accept[1].mean().item(),
            "seconds": time.perf_counter() - started}
