"""Range checks on a typed run configuration, made before any data is read or any model is built.

Hydra and the typed merge (``rhovae.config.load``) have already refused unknown keys and wrong types; these checks
refuse values of the right type that make no sense (``trainer.epochs=0``). Each failure is a ``ConfigError`` with
one line naming the key, the bad value and what is accepted, so a typo in a sweep dies at start-up instead of
hours in. A component's own options are checked by its constructor: ``validate_config`` builds a small posterior
to ask it, so no list of any component's options is kept here.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, Sequence

from ..errors import ConfigError
from .schema import LOGGER_CONFIGS, RunConfig

DEVICES = ("auto", "cpu", "cuda")
AIS_SCHEDULES = ("linear", "sigmoid")  # rhovae.ais.beta_schedule
AIS_STARTS = ("prior", "posterior")  # rhovae.ais.vae_path
WANDB_MODES = ("offline", "online", "disabled")


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _value(config: Any, key: str) -> Any:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def _check(config: RunConfig, key: str, ok: Callable[[Any], bool], accepted: str) -> None:
    value = _value(config, key)
    if not ok(value):
        raise ConfigError(f"{key}={value!r} is not valid; accepted: {accepted}")


def _one_of(config: RunConfig, key: str, options: Sequence[str]) -> None:
    _check(config, key, lambda v: v in options, ", ".join(options))


def _int_at_least(config: RunConfig, key: str, low: int, optional: bool = False) -> None:
    accepted = f"an integer >= {low}" + (" or null" if optional else "")
    _check(config, key, lambda v: (optional and v is None) or (_is_int(v) and v >= low), accepted)


def _number_above(config: RunConfig, key: str, low: float, inclusive: bool = False) -> None:
    accepted = f"a number {'>=' if inclusive else '>'} {low}"
    _check(config, key, lambda v: _is_number(v) and (v >= low if inclusive else v > low), accepted)


def _list_of_ints(config: RunConfig, key: str, what: str) -> None:
    _check(config, key, lambda v: all(_is_int(e) and e >= 1 for e in v), f"a list of {what}, each an integer >= 1")


def resolve_device(name: str):
    """The ``torch.device`` of ``trainer.device``: ``auto`` picks CUDA when it is there; ``cuda`` without a GPU is
    an error, not a silent CPU run."""
    import torch  # here, so that importing the configuration does not import torch

    if name not in DEVICES:
        raise ConfigError(f"trainer.device={name!r} is not valid; accepted: {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device='cuda' but no CUDA GPU is available; accepted here: auto, cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


CXX_COMPILERS = ("c++", "g++", "clang++")


def check_compiler(device) -> None:
    """``trainer.compile`` on the CPU needs a C++ compiler (inductor writes C++ kernels): refuse in one line
    instead of failing at the first training step."""
    import shutil

    if device.type == "cpu" and not any(shutil.which(cxx) for cxx in CXX_COMPILERS):
        raise ConfigError(f"trainer.compile=true needs a C++ compiler on the CPU (none of {', '.join(CXX_COMPILERS)} "
                          "is on PATH); install one or set trainer.compile=false")


def check_bfloat16(device, key: str = "eval.iw_precision") -> None:
    """``key=bfloat16`` (``eval.iw_precision``, ``trainer.precision``) only where bfloat16 matrix products are native
    (AVX-512 BF16 or AMX on a CPU, a GPU that supports it): elsewhere autocast emulates them, slower than float32, so
    the value is refused."""
    import torch

    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else torch.cpu._is_avx512_bf16_supported()
    if not native:
        raise ConfigError(f"{key}='bfloat16' needs native bfloat16 matrix products (AVX-512 BF16 or AMX on "
                          f"a CPU), which this {device.type} lacks: it would run slower than float32; accepted here: "
                          "float32")


def validate_config(config: RunConfig):
    """Raise ``ConfigError`` on the first bad value; return the ``torch.device`` the run will use."""
    from ..data import BINARIZE_MODES, DATASETS
    from ..posteriors import POSTERIORS
    from ..vae import PRECISIONS

    _one_of(config, "dataset.name", list(DATASETS))
    _one_of(config, "dataset.binarize", BINARIZE_MODES)
    _int_at_least(config, "dataset.val_size", 1)
    _int_at_least(config, "dataset.binarize_seed", 0)
    _int_at_least(config, "latent_dim", 1)
    options = {k: v for k, v in dataclasses.asdict(config.posterior).items() if k != "name"}
    POSTERIORS.build(config.posterior.name, 1, config.latent_dim, **options)
    _int_at_least(config, "trainer.epochs", 1)
    _int_at_least(config, "trainer.batch_size", 1)
    _number_above(config, "trainer.lr", 0)
    _int_at_least(config, "trainer.max_batches", 1, optional=True)
    _int_at_least(config, "trainer.threads", 1, optional=True)
    _number_above(config, "trainer.kl_warmup_epochs", 0, inclusive=True)
    _number_above(config, "trainer.adam_eps", 0)
    _check(config, "trainer.adam_betas", lambda v: len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
           "two numbers in [0, 1): [beta1, beta2]")
    _number_above(config, "trainer.adam_second_moment_init", 0, inclusive=True)
    _list_of_ints(config, "trainer.lr_stage_epochs", "stage lengths in epochs")
    _number_above(config, "trainer.lr_stage_decay", 0)
    _int_at_least(config, "trainer.patience", 1, optional=True)
    _int_at_least(config, "trainer.stop_at_epoch", 1, optional=True)
    _list_of_ints(config, "trainer.milestones", "epochs")
    _one_of(config, "trainer.precision", list(PRECISIONS))
    _number_above(config, "objective.beta", 0, inclusive=True)
    _number_above(config, "objective.free_bits", 0, inclusive=True)
    _int_at_least(config, "objective.iw_samples", 1)
    if config.objective.iw_samples > 1:
        _check(config, "objective.beta", lambda v: v == 1, "1 with objective.iw_samples > 1 (the IWAE bound has no "
               "KL weight)")
        _check(config, "objective.free_bits", lambda v: v == 0, "0 with objective.iw_samples > 1")
        _check(config, "trainer.kl_warmup_epochs", lambda v: v == 0, "0 with objective.iw_samples > 1")
    for key in ("batch_size", "iw_chunk", "iw_batch_size", "mean_samples", "milestone_images"):
        _int_at_least(config, f"eval.{key}", 1)
    for key in ("seed", "iw_samples", "milestone_iw_samples"):
        _int_at_least(config, f"eval.{key}", 0)
    _int_at_least(config, "eval.information_images", 1, optional=True)
    _one_of(config, "eval.iw_precision", list(PRECISIONS))
    _number_above(config, "eval.active_threshold", 0, inclusive=True)
    for key in ("n_images", "elbo_samples", "opt_samples", "iw_samples", "iw_chunk", "batch_size"):
        _int_at_least(config, f"gaps.{key}", 1)
    for key in ("steps", "seed"):
        _int_at_least(config, f"gaps.{key}", 0)
    _number_above(config, "gaps.lr", 0)
    for key in ("n_images", "steps", "chains", "leapfrog_steps", "batch_size", "iw_chunk"):
        _int_at_least(config, f"ais.{key}", 1)
    for key in ("iw_samples", "seed"):
        _int_at_least(config, f"ais.{key}", 0)
    _one_of(config, "ais.schedule", AIS_SCHEDULES)
    _one_of(config, "ais.start", AIS_STARTS)
    _one_of(config, "ais.precision", list(PRECISIONS))
    _number_above(config, "ais.sigmoid_delta", 0)
    _check(config, "ais.step_size", lambda v: _is_number(v) and 0 < v <= 0.5, "a number in (0, 0.5]")
    _check(config, "ais.target_accept", lambda v: _is_number(v) and 0 < v < 1, "a number in (0, 1)")
    _check(config, "ais.adapt_factor", lambda v: _is_number(v) and v >= 1, "a number >= 1 (1: no adaptation)")
    _one_of(config, "logger.name", list(LOGGER_CONFIGS))
    _int_at_least(config, "logger.image_every", 0)
    if config.logger.name == "wandb":
        _one_of(config, "logger.mode", WANDB_MODES)
    device = resolve_device(config.trainer.device)
    if config.trainer.compile:
        check_compiler(device)
    for key in ("trainer.precision", "eval.iw_precision", "ais.precision"):
        if _value(config, key) == "bfloat16":
            check_bfloat16(device, key)
    return device
