"""Where the project stands against the hardware and against the naive way: a benchmark with a JSON record.

    python scripts/bench.py                       # CPU or the default CUDA device; about 2-4 minutes on 2 cores
    python scripts/bench.py --device cuda --out outputs/bench_gpu.json
    python scripts/bench.py --quick               # tiny settings, seconds (what the test suite runs)
    python scripts/bench.py --compile             # adds the compiled training steps (a compilation per model)

Measures, for the default MLP (784-512-512, d=32, batch 128) on MNIST-shaped data:

1. training throughput of each posterior, and its step time as a ratio to ``diag`` in the same run; with
   ``--compile``, also the step through ``torch.compile`` (``trainer.compile``), and where this device has native
   bfloat16 the step with the networks in bfloat16 (``trainer.precision``), each with its speedup over eager,
   timed interleaved with the eager step so that all see the same machine; and beside it the ratio of the step's
   matrix-product FLOPs to diag's (the posterior's heads and flow steps), below which the time ratio cannot fall;
2. the hardware limit: float32 matmul FLOPs of a training epoch (counted by torch's FlopCounterMode) divided by
   the measured throughput of a large square float32 matmul, and the diag epoch (float32; bfloat16 where timed) as
   a multiple of it;
3. the project's data path (uint8 tensor on the device, indexed batches, on-device binarization) against
   a torch DataLoader over the torchvision dataset with ``transforms.ToTensor()`` per image, same model;
4. the vectorized rho sampler against a Python loop over latent dimensions, at several d;
5. importance-weighted evaluation throughput (test images per second at K = 5000) of each posterior, as a
   fraction of the rate the decoder's matrix products alone allow at the measured matmul throughput (and, for a
   flow, of the rate its sampling's matrix products and the decoder's together allow), and in bfloat16
   (``eval.iw_precision``) where this device has it natively;
6. the Bernoulli log-likelihood, the pixel term of both: at the NLL's chunk shape without autograd, its in-place
   softplus against the same formula out of place; at the training shape with autograd, its multiply-and-sum data
   term against einsum;
7. one training step of the IWAE paper's model (``experiment=iwae_paper``: batch 20, k = 1 and 5), eager and
   in the variants of 1;
8. the I(x; z) diagnostic of ``diag`` on N images, averaged over every image's draw against over the first M
   (``eval.information_images``; the mixture is over all N in both);
9. a diag training step on one thread against all of torch's threads (on a CPU with more than one);
10. on a CPU, a diag step after enough training on MNIST-format images for Adam's first moment of weights that get
    no gradient (blank pixels, dead units) to decay into subnormals, with subnormals kept and flushed to zero
    (``trainer.flush_denormal``, which this benchmark sets too), and how many of them the warm-up left;
11. on a CPU with glibc, the diag importance-weighted NLL in two fresh processes, one under glibc's own malloc policy
    and one with freed memory retained (``rhovae.allocator``, which every entry point, this benchmark included, sets);
12. annealed importance sampling of diag (``rhovae.ais``): gradient evaluations per second (each one the decoder's
    forward pass and its backward pass to z, for every chain of every image) as a fraction of the rate those matrix
    products allow at the measured matmul throughput, and the seconds per image this means at 1,000 steps (the
    comparison's schedule; every step costs the same, so a short run measures it).

Figures are medians over repeats after warm-up; the machine is noisy, so ratios within one run are the
figures that count. Results are printed as a table and written as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode
from torchvision import datasets, transforms

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's rhovae, not another copy pip installed

from rhovae.ais import HmcSettings, anneal, annealing, beta_schedule, vae_path  # noqa: E402
from rhovae.config import TrainerConfig, load_config, resolve_device  # noqa: E402
from rhovae.config.checks import check_bfloat16  # noqa: E402
from rhovae.errors import ConfigError  # noqa: E402
from rhovae.data import ImageData, load_image_data, train_batches  # noqa: E402
from rhovae.evaluation import importance_weighted_log_likelihood  # noqa: E402
from rhovae.build import build_vae, set_process_mode  # noqa: E402
from rhovae.idx import write_dataset  # noqa: E402
from rhovae.information import information  # noqa: E402
from rhovae.posteriors import AR1Normal, POSTERIORS  # noqa: E402
from rhovae.trainer import make_optimizer, training_loss  # noqa: E402
from rhovae.vae import VAE, bernoulli_log_likelihood, written_out_softplus  # noqa: E402

EPOCH_IMAGES = 60_000


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def model_for(posterior: str, latent_dim: int, device: torch.device) -> VAE:
    config = load_config({"latent_dim": latent_dim, "networks": {"name": "mlp", "hidden": [512, 512]},
                          "posterior": {"name": posterior}, "dataset": {"name": "mnist"}, "logger": {"name": "none"}})
    torch.manual_seed(0)
    return build_vae(config, (1, 28, 28)).to(device)


def training_step(model: VAE, optimizer: torch.optim.Optimizer, compile: bool = False, iw_samples: int = 1,
                  network_dtype: torch.dtype = torch.float32) -> Callable[[torch.Tensor], None]:
    loss_of = training_loss(model, compile)

    def step(x: torch.Tensor) -> None:
        loss, _ = loss_of(x, iw_samples=iw_samples, network_dtype=network_dtype)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``bfloat16`` would be accepted here for ``trainer.precision`` and ``eval.iw_precision`` (native
    bfloat16 matrix products)."""
    try:
        check_bfloat16(device)
    except ConfigError:
        return False
    return True


def step_variants(args, device: torch.device) -> dict[str, dict]:
    """The training steps to time, as ``training_step`` options: eager float32; with ``--compile`` also compiled
    (``trainer.compile``); where bfloat16 is native also eager with the networks in bfloat16 (``trainer.precision``)."""
    variants = {"eager": {}}
    if args.compile:
        variants["compiled"] = {"compile": True}
    if native_bfloat16(device):
        variants["bfloat16"] = {"network_dtype": torch.bfloat16}
    return variants


def interleaved_medians(runs: dict[str, Callable[[], None]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of each run, timed in turn within every repeat so that all see the same machine."""
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(median_time(run, device, 1, warmup=0))
    return {name: statistics.median(t) for name, t in times.items()}


def binarized_batches(args, images: torch.Tensor) -> list[torch.Tensor]:
    """``args.steps`` training batches of ``args.batch_size`` images, binarized once, already on the device."""
    return [torch.bernoulli(images[i * args.batch_size:(i + 1) * args.batch_size].float() / 255)
            for i in range(args.steps)]


def bench_training(args, device, images: torch.Tensor) -> dict:
    """Steps on pre-binarized batches already on the device: the model's cost alone. Each posterior's other step
    variants (``step_variants``: compiled, bfloat16) are timed in the same repeats as its eager step, alternating,
    and reported as ``<variant>_step_ms``, ``<variant>_speedup`` over eager and ``<variant>_ratio_vs_diag``."""
    out = {}
    batches = binarized_batches(args, images)
    variants = step_variants(args, device)
    for name in args.posteriors:
        runs = {}
        for variant, options in variants.items():
            model = model_for(name, args.latent_dim, device)
            step = training_step(model, make_optimizer(model, lr=1e-3), **options)
            step(batches[0])  # compiles here, outside the timing
            runs[variant] = lambda step=step: [step(x) for x in batches]
        seconds = interleaved_medians(runs, device, args.repeats)
        per_step = seconds["eager"] / args.steps
        out[name] = {"step_ms": 1e3 * per_step, "images_per_s": args.batch_size / per_step,
                     "epoch_s": EPOCH_IMAGES / args.batch_size * per_step}
        for variant in list(variants)[1:]:
            other = seconds[variant] / args.steps
            out[name].update({f"{variant}_step_ms": 1e3 * other, f"{variant}_speedup": per_step / other})
        # the posterior's heads and flow steps add matrix products: the step-time ratio cannot fall below this one
        out[name]["step_gflop"] = step_flops(model_for(name, args.latent_dim, device), args.batch_size, device) / 1e9
    for name in out:
        out[name]["ratio_vs_diag"] = out[name]["step_ms"] / out["diag"]["step_ms"]
        out[name]["flops_ratio_vs_diag"] = out[name]["step_gflop"] / out["diag"]["step_gflop"]
        for variant in list(variants)[1:]:
            key = f"{variant}_step_ms"
            out[name][f"{variant}_ratio_vs_diag"] = out[name][key] / out["diag"][key]
    return out


def bench_flush_denormal(args, device, data: ImageData) -> dict:
    """A diag step after ``--flush-warmup`` training steps on the MNIST-format training images of ``data``, with
    subnormal floats kept and flushed (timed alternately, each model trained in its own mode from the same start),
    and the number of Adam's first-moment entries the unflushed warm-up left subnormal."""
    if device.type != "cpu":
        return {}

    def batches(n: int):
        """The first ``n`` batches of epochs of shuffled, dynamically binarized training images."""
        gen = torch.Generator(device=device).manual_seed(0)
        while n > 0:
            order = torch.randperm(len(data.train), generator=gen, device=device)
            for x in train_batches(data.train, args.batch_size, order=order, binarize=gen, max_batches=n):
                n -= 1
                yield x

    timed = list(batches(args.steps))
    runs, subnormal, parameters = {}, 0, 0
    for flush in (False, True):
        torch.set_flush_denormal(flush)
        model = model_for("diag", args.latent_dim, device)
        optimizer = make_optimizer(model, lr=1e-3)
        step = training_step(model, optimizer)
        for x in batches(args.flush_warmup):
            step(x)
        if not flush:
            parameters = sum(p.numel() for p in model.parameters())
            tiny = torch.finfo(torch.float32).tiny
            subnormal = sum(int(((m != 0) & (m.abs() < tiny)).sum())
                            for m in (state["exp_avg"] for state in optimizer.state.values()))

        def run(step=step, flush=flush) -> None:
            torch.set_flush_denormal(flush)
            for x in timed:
                step(x)
        runs["flushed" if flush else "kept"] = run
    seconds = interleaved_medians(runs, device, args.repeats)
    torch.set_flush_denormal(True)
    return {"warmup_steps": args.flush_warmup, "subnormal_first_moments": subnormal, "parameters": parameters,
            "kept_step_ms": 1e3 * seconds["kept"] / args.steps,
            "flushed_step_ms": 1e3 * seconds["flushed"] / args.steps,
            "speedup": seconds["kept"] / seconds["flushed"]}


def bench_threads(args, device, images: torch.Tensor) -> dict:
    """A diag training step on one thread against the same step on all of torch's threads here (``trainer.threads``
    null means all), timed in turn within the same repeats: how well one run uses more than one core."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2:
        return {"threads": threads}  # nothing to compare
    batches = binarized_batches(args, images)
    model = model_for("diag", args.latent_dim, device)
    step = training_step(model, make_optimizer(model, lr=1e-3))

    def on(n: int) -> Callable[[], None]:
        def run() -> None:
            torch.set_num_threads(n)
            try:
                for x in batches:
                    step(x)
            finally:
                torch.set_num_threads(threads)
        return run

    on(1)()  # warm-up
    seconds = interleaved_medians({"one": on(1), "all": on(threads)}, device, args.repeats)
    speedup = seconds["one"] / seconds["all"]
    return {"threads": threads, "one_thread_step_ms": 1e3 * seconds["one"] / args.steps,
            "all_threads_step_ms": 1e3 * seconds["all"] / args.steps, "speedup": speedup,
            "efficiency": speedup / threads}


def bench_iwae_step(args, device) -> dict:
    """One training step of the IWAE paper's model (784-200-200-50 tanh, diag, batch 20, Adam eps 1e-4;
    ``experiment=iwae_paper``) with the ELBO (k = 1) and the IWAE bound (k = 5), eager and in the other variants of
    ``step_variants``: at this size the per-step overhead (autograd, Adam, small kernels), not the matrix products
    (a third of the step), sets the time."""
    config = load_config({"latent_dim": 50, "networks": {"name": "mlp", "hidden": [200, 200], "activation": "tanh"},
                          "posterior": {"name": "diag"}, "dataset": {"name": "mnist"}, "logger": {"name": "none"}})
    x = torch.bernoulli(torch.full((20, 784), 0.3, device=device))
    reps = args.steps * 5
    out = {}
    for k in (1, 5):
        runs = {}
        for variant, options in step_variants(args, device).items():
            torch.manual_seed(0)
            model = build_vae(config, (1, 28, 28)).to(device)
            step = training_step(model, make_optimizer(model, lr=1e-3, eps=1e-4), iw_samples=k, **options)
            step(x)  # compiles here, outside the timing
            runs[variant] = lambda step=step: [step(x) for _ in range(reps)]
        seconds = interleaved_medians(runs, device, args.repeats)
        out[f"k{k}"] = {f"{variant}_step_ms": 1e3 * s / reps for variant, s in seconds.items()}
        for variant in list(seconds)[1:]:
            out[f"k{k}"][f"{variant}_speedup"] = seconds["eager"] / seconds[variant]
    return out


def step_flops(model: VAE, batch_size: int, device: torch.device) -> int:
    """The matrix-product FLOPs of one training step (forward and backward) at ``batch_size``."""
    x = torch.bernoulli(torch.rand(batch_size, 784, device=device))
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = model.loss(x)
        loss.backward()
    return counter.get_total_flops()


def bench_limit(args, device, diag: dict) -> dict:
    """The float32 matmul-FLOP limit of a diag training epoch, and the measured diag epoch (eager float32, and
    with the networks in bfloat16 where that was timed) as a multiple of it."""
    step_flops_diag = step_flops(model_for("diag", args.latent_dim, device), args.batch_size, device)
    n = args.matmul_size
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    seconds = median_time(lambda: a @ b, device, repeats=max(3, args.repeats), warmup=2)
    gflops = 2 * n ** 3 / seconds / 1e9
    limit = step_flops_diag * EPOCH_IMAGES / args.batch_size / (gflops * 1e9)
    out = {"step_gflop": step_flops_diag / 1e9, "matmul_gflops": gflops, "epoch_limit_s": limit,
           "diag_epoch_over_limit": diag["epoch_s"] / limit}
    if "bfloat16_step_ms" in diag:
        out["diag_bfloat16_epoch_over_limit"] = diag["bfloat16_step_ms"] / diag["step_ms"] * diag["epoch_s"] / limit
    return out


def bench_data_path(args, device, root: Path, data: ImageData) -> dict:
    """Same diag model and steps; batches from the project's tensors (``data``, loaded from ``root``) vs a
    DataLoader with ToTensor per image over the files under ``root``."""
    model = model_for("diag", args.latent_dim, device)
    step = training_step(model, make_optimizer(model, lr=1e-3))
    gen = torch.Generator(device=device).manual_seed(0)

    def project():
        order = torch.randperm(len(data.train), generator=gen, device=device)
        for x in train_batches(data.train, args.batch_size, order=order, binarize=gen, max_batches=args.data_steps):
            step(x)

    loader = DataLoader(datasets.MNIST(str(root), train=True, transform=transforms.ToTensor()),
                        batch_size=args.batch_size, shuffle=True, num_workers=0)

    def baseline():
        for i, (x, _) in enumerate(loader):
            if i >= args.data_steps:
                break
            step(torch.bernoulli(x.view(len(x), -1).to(device)))

    project_s = median_time(project, device, args.repeats)
    baseline_s = median_time(baseline, device, args.repeats)
    scale = EPOCH_IMAGES / (args.data_steps * args.batch_size)
    return {"project_epoch_s": project_s * scale, "dataloader_epoch_s": baseline_s * scale,
            "speedup": baseline_s / project_s}


def loop_rho_sampler(loc: torch.Tensor, rho: torch.Tensor, log_s: torch.Tensor) -> torch.Tensor:
    """The naive way: build z one latent dimension at a time."""
    eps = torch.randn_like(loc)
    sd = (0.5 * log_s).exp()
    innovation_sd = sd * torch.sqrt(1 - rho ** 2)
    xs = [sd * eps[:, 0]]
    for j in range(1, loc.shape[-1]):
        xs.append(rho * xs[-1] + innovation_sd * eps[:, j])
    return loc + torch.stack(xs, dim=-1)


def bench_rho_sampler(args, device) -> dict:
    out = {}
    for d in args.sampler_dims:
        loc = torch.randn(args.batch_size, d, device=device)
        rho, log_s = torch.rand(args.batch_size, device=device) * 1.8 - 0.9, torch.randn(args.batch_size, device=device)
        q = AR1Normal(loc, rho=rho, log_scale=log_s, validate_args=False)
        reps = 50
        vec = median_time(lambda: [q.rsample() for _ in range(reps)], device, args.repeats) / reps
        loop = median_time(lambda: [loop_rho_sampler(loc, rho, log_s) for _ in range(reps)], device, args.repeats) / reps
        out[str(d)] = {"vectorized_us": 1e6 * vec, "loop_us": 1e6 * loop, "speedup": loop / vec}
    return out


def bench_iw_eval(args, device, images: torch.Tensor, matmul_gflops: float) -> dict:
    """Test images per second of the importance-weighted NLL, against the rate at which the decoder's matrix
    products alone would run at the measured matmul throughput; in bfloat16 too where that is native."""
    out = {}
    subset = images[: args.iw_images]
    precisions = ["float32", "bfloat16"] if native_bfloat16(device) else ["float32"]
    for name in args.posteriors:
        model = model_for(name, args.latent_dim, device)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model.decoder(torch.zeros(args.iw_chunk, args.latent_dim, device=device))
        decoder_flops = counter.get_total_flops() / args.iw_chunk
        limit = matmul_gflops * 1e9 / (decoder_flops * args.iw_samples)
        # a flow's steps run on every one of the K samples too (IAF's MADEs, Sylvester's products): their matrix
        # products are work the decoder's limit does not count
        with torch.no_grad():
            q = model.posterior_of(subset[:1].float() / 255)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model.posterior.rsample_with_log_prob(q, (args.iw_chunk,))
        sample_flops = counter.get_total_flops() / args.iw_chunk
        out[name] = {"k": args.iw_samples, "images_per_s_limit": limit, "images_per_s_limit_with_posterior":
                     matmul_gflops * 1e9 / ((decoder_flops + sample_flops) * args.iw_samples)}
        for precision in precisions:
            seconds = median_time(lambda: importance_weighted_log_likelihood(
                model, subset, n_samples=args.iw_samples, chunk=args.iw_chunk, batch_size=args.iw_batch_size,
                precision=precision), device, repeats=1, warmup=0)
            prefix = "" if precision == "float32" else "bfloat16_"
            out[name][f"{prefix}images_per_s"] = len(subset) / seconds
        out[name]["fraction_of_limit"] = out[name]["images_per_s"] / limit
        out[name]["fraction_of_limit_with_posterior"] = (out[name]["images_per_s"]
                                                         / out[name]["images_per_s_limit_with_posterior"])
        if "bfloat16_images_per_s" in out[name]:
            out[name]["bfloat16_speedup"] = out[name]["bfloat16_images_per_s"] / out[name]["images_per_s"]
    return out


def bench_ais(args, device, images: torch.Tensor, matmul_gflops: float) -> dict:
    """AIS of diag on ``args.ais_images`` images with ``args.ais_chains`` chains each: gradient evaluations per second
    against the rate the decoder's forward and backward matrix products allow at the measured matmul throughput."""
    model = model_for("diag", args.latent_dim, device)
    x = (images[: args.ais_images].float() / 255).bernoulli()
    hmc, betas = HmcSettings(leapfrog_steps=args.ais_leapfrog), beta_schedule(args.ais_steps)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.decoder(torch.zeros(args.ais_chains, args.ais_images, args.latent_dim, device=device))
    # the backward pass to z (the weights are frozen) multiplies each layer's output gradient by its weight once:
    # the forward's matrix products again
    evaluation_flops = 2 * counter.get_total_flops()
    with annealing(model, 0, device):
        path = vae_path(model, x)
        seconds = median_time(lambda: anneal(path, path.sample_p0(args.ais_chains), betas, 0.05, hmc), device,
                              repeats=1)
    evaluations = 1 + (args.ais_steps - 1) * args.ais_leapfrog  # the start, then L per move (none after the last)
    rate, limit = evaluations / seconds, matmul_gflops * 1e9 / evaluation_flops
    at_1000 = (1 + 999 * args.ais_leapfrog) / rate / args.ais_images
    return {"images": args.ais_images, "chains": args.ais_chains, "steps": args.ais_steps,
            "leapfrog_steps": args.ais_leapfrog, "evaluation_gflop": evaluation_flops / 1e9,
            "evaluations_per_s": rate, "evaluations_per_s_limit": limit, "fraction_of_limit": rate / limit,
            "s_per_image_at_1000_steps": at_1000}


def out_of_place_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``bernoulli_log_likelihood``'s formula with every intermediate a new tensor (its autograd form)."""
    return torch.einsum("...p,...p->...", logits, x) - written_out_softplus(logits).sum(-1)


def bench_likelihood(args, device) -> dict:
    """The pixel term at the NLL's chunk shape (no autograd) and at the training shape (forward and backward)."""
    x = torch.bernoulli(torch.full((args.iw_batch_size, 784), 0.3, device=device))
    logits = 4 * torch.randn(args.iw_chunk, args.iw_batch_size, 784, device=device)
    with torch.no_grad():
        in_place = median_time(lambda: bernoulli_log_likelihood(logits, x), device, args.repeats)
        out_of_place = median_time(lambda: out_of_place_log_likelihood(logits, x), device, args.repeats)
    x = torch.bernoulli(torch.full((args.batch_size, 784), 0.3, device=device))
    logits = (4 * torch.randn(args.batch_size, 784, device=device)).requires_grad_()
    reps = 20

    def training(data_term):
        def run():
            for _ in range(reps):
                (data_term(logits, x) - written_out_softplus(logits).sum(-1)).sum().backward()
        return median_time(run, device, args.repeats) / reps

    mul_sum = training(lambda l, x: (l * x).sum(-1))
    einsum = training(lambda l, x: torch.einsum("...p,...p->...", l, x))
    return {"eval_in_place_ms": 1e3 * in_place, "eval_out_of_place_ms": 1e3 * out_of_place,
            "eval_speedup": out_of_place / in_place, "train_mul_sum_us": 1e6 * mul_sum, "train_einsum_us": 1e6 * einsum,
            "train_speedup": einsum / mul_sum}


def bench_information(args, device) -> dict:
    model = model_for("diag", args.latent_dim, device)
    with torch.no_grad():
        params = model.posterior.local_parameters(torch.randn(args.info_images, 512, device=device))
    every = median_time(lambda: information(model, params), device, repeats=1, warmup=0)
    subset = median_time(lambda: information(model, params, outer=args.info_outer), device, repeats=1, warmup=0)
    return {"images": args.info_images, "outer": args.info_outer, "all_s": every, "subset_s": subset,
            "speedup": every / subset}


ALLOCATOR_CHILD = """
import sys, time, torch
sys.path.insert(0, sys.argv[1])
from bench import model_for
from rhovae.allocator import retain_freed_memory
from rhovae.evaluation import importance_weighted_log_likelihood
policy, latent_dim, k, n, chunk, batch = sys.argv[2], *map(int, sys.argv[3:])
if policy == "retained":
    assert retain_freed_memory()
model = model_for("diag", latent_dim, torch.device("cpu"))
images = torch.randint(0, 256, (n, 784), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
importance_weighted_log_likelihood(model, images[:1], n_samples=chunk, chunk=chunk, batch_size=batch)
start = time.perf_counter()
importance_weighted_log_likelihood(model, images, n_samples=k, chunk=chunk, batch_size=batch)
print(n / (time.perf_counter() - start))
"""


def bench_allocator(args, device) -> dict:
    """diag's IW NLL (images/s) in fresh processes under glibc's malloc policy and with freed memory retained,
    alternated (best of each of two): a process cannot undo the policy, so each measurement gets its own."""
    if device.type != "cpu" or platform.libc_ver()[0] != "glibc":
        return {}
    rates = {"default": [], "retained": []}
    for _ in range(max(1, min(args.repeats, 2))):
        for policy in rates:
            out = subprocess.run([sys.executable, "-c", ALLOCATOR_CHILD, str(Path(__file__).parent), policy,
                                  *map(str, (args.latent_dim, args.iw_samples, args.iw_images, args.iw_chunk,
                                             args.iw_batch_size))], capture_output=True, text=True, check=True)
            rates[policy].append(float(out.stdout.split()[-1]))
    best = {policy: max(values) for policy, values in rates.items()}
    return {"default_images_per_s": best["default"], "retained_images_per_s": best["retained"],
            "speedup": best["retained"] / best["default"]}


def print_table(results: dict) -> None:
    train, limit, data, rho, iw = (results[k] for k in ("train", "limit", "data_path", "rho_sampler", "iw_eval"))
    variants = [key[: -len("_speedup")] for key in train["diag"] if key.endswith("_speedup")]
    print(f"device: {results['device']}  (batch {results['settings']['batch_size']}, d={results['settings']['latent_dim']})")
    print(f"\n{'posterior':<22}{'images/s':>10}{'epoch s':>9}{'vs diag':>9}{'FLOPs':>7}{'IW img/s':>10}"
          + "".join(f"{variant + ' ms':>15}{'speedup':>9}{'vs diag':>9}" for variant in variants))
    for name in train:
        row = train[name]
        print(f"{name:<22}{row['images_per_s']:>10.0f}{row['epoch_s']:>9.2f}{row['ratio_vs_diag']:>8.2f}x"
              f"{row['flops_ratio_vs_diag']:>6.2f}x{iw[name]['images_per_s']:>10.2f}"
              + "".join(f"{row[f'{v}_step_ms']:>15.2f}{row[f'{v}_speedup']:>8.2f}x{row[f'{v}_ratio_vs_diag']:>8.2f}x"
                        for v in variants))
    print(f"\nimportance-weighted NLL (K = {iw['diag']['k']}): images/s and the fraction of the decoder's matmul limit")
    for name, row in iw.items():
        bf16 = (f"; bfloat16 {row['bfloat16_images_per_s']:.2f} img/s ({row['bfloat16_speedup']:.2f}x)"
                if "bfloat16_speedup" in row else "")
        own = (f" ({row['fraction_of_limit_with_posterior']:.0%} counting the posterior's own matrix products)"
               if row["fraction_of_limit_with_posterior"] > row["fraction_of_limit"] + 0.005 else "")
        print(f"  {name:<22}{row['images_per_s']:>8.2f} img/s = {row['fraction_of_limit']:.0%} of "
              f"{row['images_per_s_limit']:.1f}{own}{bf16}")
    print(f"\nmatmul {limit['matmul_gflops']:.1f} GFLOP/s; a training step is {limit['step_gflop']:.3f} GFLOP; "
          f"epoch limit {limit['epoch_limit_s']:.2f} s; diag epoch = {limit['diag_epoch_over_limit']:.2f}x the limit"
          + (f" ({limit['diag_bfloat16_epoch_over_limit']:.2f}x with the networks in bfloat16)"
             if "diag_bfloat16_epoch_over_limit" in limit else ""))
    print(f"data path: project {data['project_epoch_s']:.2f} s/epoch, DataLoader+ToTensor "
          f"{data['dataloader_epoch_s']:.2f} s/epoch: {data['speedup']:.1f}x faster")
    print("rho sampler speedup over a Python loop: "
          + ", ".join(f"d={d}: {v['speedup']:.1f}x" for d, v in rho.items()))
    ll = results["likelihood"]
    print(f"Bernoulli log-likelihood: NLL chunk {ll['eval_in_place_ms']:.1f} ms in place, "
          f"{ll['eval_out_of_place_ms']:.1f} ms out of place ({ll['eval_speedup']:.2f}x); training step "
          f"{ll['train_mul_sum_us']:.0f} us with "
          f"multiply-and-sum, {ll['train_einsum_us']:.0f} us with einsum ({ll['train_speedup']:.1f}x)")
    iwae = results["iwae_step"]
    print("IWAE paper's model (batch 20), one training step: " + "; ".join(
        f"k = {k[1:]}: {row['eager_step_ms']:.2f} ms eager" + "".join(
            f", {row[f'{v}_step_ms']:.2f} ms {v} ({row[f'{v}_speedup']:.2f}x)" for v in variants)
        for k, row in iwae.items()))
    threads = results["threads"]
    if "speedup" in threads:
        print(f"threads: a diag step takes {threads['one_thread_step_ms']:.2f} ms on 1 thread, "
              f"{threads['all_threads_step_ms']:.2f} ms on {threads['threads']}: {threads['speedup']:.2f}x "
              f"({threads['efficiency']:.0%} of linear)")
    flush = results["flush_denormal"]
    if flush:
        print(f"subnormals: after {flush['warmup_steps']} steps {flush['subnormal_first_moments']} of diag's "
              f"{flush['parameters']} Adam first moments are subnormal; a step {flush['kept_step_ms']:.2f} ms with "
              f"them kept, {flush['flushed_step_ms']:.2f} ms flushed to zero: {flush['speedup']:.2f}x")
    allocator = results["allocator"]
    if allocator:
        print(f"allocator: diag IW NLL {allocator['retained_images_per_s']:.2f} img/s with freed memory retained, "
              f"{allocator['default_images_per_s']:.2f} under glibc's default policy: {allocator['speedup']:.2f}x")
    ais = results["ais"]
    print(f"AIS (diag, {ais['images']} images x {ais['chains']} chains, {ais['leapfrog_steps']} leapfrog steps): "
          f"{ais['evaluations_per_s']:.1f} gradient evaluations/s = {ais['fraction_of_limit']:.0%} of the decoder's "
          f"forward+backward matmul limit ({ais['evaluations_per_s_limit']:.1f}/s); "
          f"{ais['s_per_image_at_1000_steps']:.2f} s per image at 1,000 steps")
    info = results["information"]
    print(f"I(x; z) of {info['images']} images: over every draw {info['all_s']:.2f} s, over the first {info['outer']} "
          f"{info['subset_s']:.2f} s: {info['speedup']:.1f}x faster")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median reported)")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed repeat")
    parser.add_argument("--data-steps", type=int, default=60, help="steps per repeat in the data-path comparison")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--sampler-dims", type=int, nargs="+", default=[10, 32, 64, 128])
    parser.add_argument("--flush-warmup", type=int, default=1200,
                        help="training steps before the subnormal comparison (3 paper_cpu epochs)")
    parser.add_argument("--iw-samples", type=int, default=5000)
    parser.add_argument("--iw-images", type=int, default=20, help="test images timed for the IW evaluation")
    parser.add_argument("--iw-chunk", type=int, default=200)
    parser.add_argument("--iw-batch-size", type=int, default=20)
    parser.add_argument("--ais-images", type=int, default=100, help="images annealed together in the AIS row")
    parser.add_argument("--ais-chains", type=int, default=16)
    parser.add_argument("--ais-steps", type=int, default=20, help="intermediate distributions timed (rate per step)")
    parser.add_argument("--ais-leapfrog", type=int, default=10)
    parser.add_argument("--info-images", type=int, default=4000, help="images N of the I(x; z) measurement")
    parser.add_argument("--info-outer", type=int, default=1000, help="its subset M (eval.information_images)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder with MNIST/raw/*-ubyte; default: synthetic MNIST-format files in a temp folder")
    parser.add_argument("--posteriors", nargs="+", default=list(POSTERIORS), choices=list(POSTERIORS),
                        metavar="NAME", help="posteriors to time (diag is always included: the ratios are to it)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the training step through torch.compile (trainer.compile)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks that everything runs")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.data_steps, args.matmul_size = 1, 2, 2, 256
        args.sampler_dims, args.iw_samples, args.iw_images, args.iw_chunk = [4, 8], 20, 4, 10
        args.info_images, args.info_outer, args.flush_warmup = 40, 10, 5
        args.ais_images, args.ais_chains, args.ais_steps, args.ais_leapfrog = 4, 2, 3, 2
    args.posteriors = ["diag", *(name for name in dict.fromkeys(args.posteriors) if name != "diag")]
    device = resolve_device(args.device)
    set_process_mode(TrainerConfig())  # the mode a run with the default trainer section sets
    if args.compile:
        # Every compiled step is a guarded version of the one method VAE.loss; past dynamo's recompile limit (8) the
        # later posteriors and the IWAE model would silently run eager. A training run compiles one model: no limit.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(args.posteriors) + 8)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root
        if root is None:
            root = Path(tmp)
            write_dataset(root, "mnist", n_train=EPOCH_IMAGES, n_test=1000)
        mnist = load_image_data("mnist", root, binarize="dynamic", val_size=10_000, download=False, device=device)
        images = torch.randint(0, 256, (args.steps * args.batch_size, 784), dtype=torch.uint8, device=device)
        train = bench_training(args, device, images)
        limit = bench_limit(args, device, train["diag"])
        results = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "torch": torch.__version__,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "train": train,
            "limit": limit,
            "data_path": bench_data_path(args, device, root, mnist),
            "rho_sampler": bench_rho_sampler(args, device),
            "iw_eval": bench_iw_eval(args, device, images, limit["matmul_gflops"]),
            "ais": bench_ais(args, device, images, limit["matmul_gflops"]),
            "likelihood": bench_likelihood(args, device),
            "iwae_step": bench_iwae_step(args, device),
            "threads": bench_threads(args, device, images),
            "information": bench_information(args, device),
            "flush_denormal": bench_flush_denormal(args, device, mnist),
            "allocator": bench_allocator(args, device),
        }
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
