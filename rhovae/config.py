"""Checks on a composed run configuration, made before any data is read or any model is built.

Each failure is a ``ConfigError`` with one line naming the key, the bad value and what is accepted, so a
typo in a sweep dies at start-up instead of hours in, or worse, silently trains something else.
"""

from __future__ import annotations

import difflib
import numbers
from typing import Any, Callable, Iterable, Mapping

import torch
from omegaconf import DictConfig, OmegaConf

from .data import BINARIZE_MODES, DATASETS
from .errors import ConfigError
from .networks import NETWORKS
from .posteriors import POSTERIORS
from .schema import LOGGER_CONFIGS, keys_with
from .tracking import WANDB_MODES

DEVICES = ("auto", "cpu", "cuda")

# Keys (or whole sections) a resumed run may change: how it executes, how long it trains, and how its final scores
# are estimated (marked where each key is defined: rhovae/key_roles.py).
RESUMABLE_KEYS = keys_with("may_change_on_resume", True)

def in_sections(key: str, sections: Iterable[str]) -> bool:
    """Whether the dotted ``key`` is one of ``sections`` or lies inside one of them."""
    return any(key == s or key.startswith(f"{s}.") for s in sections)


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check(cfg: DictConfig, key: str, ok: Callable[[Any], bool], accepted: str) -> None:
    value = OmegaConf.select(cfg, key, default="<missing>")
    if value == "<missing>" or not ok(value):
        raise ConfigError(f"{key}={value!r} is not valid; accepted: {accepted}")


def _one_of(cfg: DictConfig, key: str, options) -> None:
    _check(cfg, key, lambda v: v in options, ", ".join(options))


def _int_at_least(cfg: DictConfig, key: str, low: int, optional: bool = False) -> None:
    accepted = f"an integer >= {low}" + (" or null" if optional else "")
    _check(cfg, key, lambda v: (optional and v is None) or (_is_int(v) and v >= low), accepted)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"trainer.lr": 0.001, ...}`` (keys joined with dots, after ``prefix``)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of ``flatten``: ``{"trainer.lr": 0.001}`` as ``{"trainer": {"lr": 0.001}}``."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def reject_unknown_keys(keys: Iterable[str], known: Iterable[str], where: str = "") -> None:
    """One line naming the first key that is not in ``known`` and the closest known key."""
    known = sorted(set(known))
    unknown = sorted(set(keys) - set(known))
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    section = key.rpartition(".")[0]
    siblings = [k for k in known if k.rpartition(".")[0] == section]
    hint = f"did you mean {close[0]}?" if close else f"known keys here: {', '.join(siblings) or ', '.join(known)}"
    more = f" (and {len(unknown) - 1} more: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
    raise ConfigError(f"{key} is not a key {where or 'of the configuration'}; {hint}{more}")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when it is there; ``cuda`` without a GPU is an error, not a silent CPU run."""
    if name not in DEVICES:
        raise ConfigError(f"trainer.device={name!r} is not valid; accepted: {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device='cuda' but no CUDA GPU is available; accepted here: auto, cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def validate_config(cfg: DictConfig) -> torch.device:
    """Raise ``ConfigError`` on the first bad value; return the device the run will use."""
    _one_of(cfg, "dataset.name", list(DATASETS))
    _one_of(cfg, "dataset.binarize", BINARIZE_MODES)
    _int_at_least(cfg, "dataset.val_size", 1)
    _int_at_least(cfg, "dataset.binarize_seed", 0)
    _check(cfg, "dataset.download", lambda v: isinstance(v, bool), "true, false")
    _one_of(cfg, "posterior.name", list(POSTERIORS))
    _one_of(cfg, "networks.name", list(NETWORKS))
    _int_at_least(cfg, "latent_dim", 1)
    # a posterior checks its own options in its constructor: building a small one now reports a bad option before
    # any data is read, with no list of options kept here
    options = OmegaConf.to_container(cfg.posterior, resolve=True)
    POSTERIORS.build(options.pop("name"), 1, cfg.latent_dim, **options)
    _check(cfg, "seed", _is_int, "an integer")
    _int_at_least(cfg, "trainer.epochs", 1)
    _int_at_least(cfg, "trainer.batch_size", 1)
    _check(cfg, "trainer.lr", lambda v: _is_number(v) and v > 0, "a number > 0")
    _int_at_least(cfg, "trainer.max_batches", 1, optional=True)
    _int_at_least(cfg, "trainer.threads", 1, optional=True)
    _check(cfg, "trainer.kl_warmup_epochs", lambda v: _is_number(v) and v >= 0, "a number >= 0")
    _check(cfg, "objective.beta", lambda v: _is_number(v) and v >= 0, "a number >= 0")
    _check(cfg, "objective.free_bits", lambda v: _is_number(v) and v >= 0, "a number >= 0")
    _int_at_least(cfg, "objective.iw_samples", 1)
    if cfg.objective.iw_samples > 1:
        _check(cfg, "objective.beta", lambda v: v == 1, "1 with objective.iw_samples > 1 (the IWAE bound has no KL "
               "weight)")
        _check(cfg, "objective.free_bits", lambda v: v == 0, "0 with objective.iw_samples > 1")
        _check(cfg, "trainer.kl_warmup_epochs", lambda v: v == 0, "0 with objective.iw_samples > 1")
    _check(cfg, "trainer.adam_eps", lambda v: _is_number(v) and v > 0, "a number > 0")
    _check(cfg, "trainer.lr_stage_epochs", lambda v: all(_is_int(e) and e >= 1 for e in v),
           "a list of stage lengths in epochs, each an integer >= 1")
    _check(cfg, "trainer.lr_stage_decay", lambda v: _is_number(v) and v > 0, "a number > 0")
    _int_at_least(cfg, "trainer.patience", 1, optional=True)
    _check(cfg, "trainer.progress", lambda v: isinstance(v, bool), "true, false")
    _check(cfg, "trainer.resume", lambda v: isinstance(v, bool), "true, false")
    _check(cfg, "trainer.overwrite", lambda v: isinstance(v, bool), "true, false")
    _check(cfg, "trainer.milestones", lambda v: all(_is_int(e) and e >= 1 for e in v),
           "a list of epochs, each an integer >= 1")
    _int_at_least(cfg, "eval.batch_size", 1)
    _int_at_least(cfg, "eval.seed", 0)
    _int_at_least(cfg, "eval.iw_samples", 0)
    _int_at_least(cfg, "eval.iw_chunk", 1)
    _int_at_least(cfg, "eval.iw_batch_size", 1)
    _int_at_least(cfg, "eval.mean_samples", 1)
    _int_at_least(cfg, "eval.information_images", 1, optional=True)
    _check(cfg, "eval.active_threshold", lambda v: _is_number(v) and v >= 0, "a number >= 0")
    _check(cfg, "eval.gaps", lambda v: isinstance(v, bool), "true, false")
    _int_at_least(cfg, "eval.milestone_images", 1)
    _int_at_least(cfg, "eval.milestone_iw_samples", 0)
    for key in ("n_images", "elbo_samples", "opt_samples", "iw_samples", "iw_chunk", "batch_size"):
        _int_at_least(cfg, f"gaps.{key}", 1)
    _int_at_least(cfg, "gaps.steps", 0)
    _int_at_least(cfg, "gaps.seed", 0)
    _check(cfg, "gaps.lr", lambda v: _is_number(v) and v > 0, "a number > 0")
    _one_of(cfg, "logger.name", list(LOGGER_CONFIGS))
    _int_at_least(cfg, "logger.image_every", 0)
    if cfg.logger.name == "wandb":
        _one_of(cfg, "logger.mode", WANDB_MODES)
    return resolve_device(OmegaConf.select(cfg, "trainer.device"))

