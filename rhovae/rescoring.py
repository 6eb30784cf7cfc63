"""Where the re-scorings of a finished run are written: one file per checkpoint, estimator and settings, so that no
re-scoring ever replaces another.

A file's name says what made its numbers: ``evaluation.json`` is the run's own checkpoint (best) at the run's own
settings; ``evaluation_epoch_1093.json`` a milestone's model; ``evaluation_ais.json`` the AIS estimator; and the
overrides of the estimating sections (``eval``, ``gaps``, ``ais``) that differ from the run's own settings, sorted, end
the name (``evaluation_epoch_1093_eval.iw_samples=5000.json``). Overrides of how a command runs (``trainer.threads``)
are not part of the name, since they do not change what is estimated, and neither is a key set to the value the run
has. A name that is taken is refused before any work, in one line; the earlier file stays as it was.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import OmegaConf

from .config.keys import flatten, in_sections
from .config.saved import ESTIMATING_SECTIONS, with_todays_defaults
from .errors import RhovaeError

MAX_SETTINGS_CHARS = 100  # longer settings are shortened, with a hash of the whole so names stay distinct


class RescoringExists(RhovaeError):
    """A re-scoring with the same checkpoint, estimator and settings is already in the run folder."""


def settings_slug(overrides: Sequence[str]) -> str:
    """The estimating overrides, sorted and joined with commas, in characters safe in a file name ('' for none)."""
    estimating = sorted(o for o in overrides if in_sections(o.split("=", 1)[0].strip(), ESTIMATING_SECTIONS))
    slug = re.sub(r"[^A-Za-z0-9._=,+-]", "-", ",".join(o.replace(" ", "") for o in estimating))
    if len(slug) > MAX_SETTINGS_CHARS:
        slug = f"{slug[:MAX_SETTINGS_CHARS - 9]}-{hashlib.sha1(slug.encode()).hexdigest()[:8]}"
    return slug


def changed(overrides: Sequence[str], saved: Mapping[str, Any]) -> list[str]:
    """The ``overrides`` whose value differs from the run's ``saved`` config (its keys added since at their
    defaults)."""
    own = flatten(with_todays_defaults(saved))
    return [o for o in overrides
            if any(own.get(k, object()) != v
                   for k, v in flatten(OmegaConf.to_container(OmegaConf.from_dotlist([o]))).items())]


def rescoring_path(run_dir: Path, prefix: str, checkpoint: str = "best", estimator: str = "",
                   overrides: Sequence[str] = (), saved: Mapping[str, Any] | None = None) -> Path:
    """``run_dir/<prefix>[_<checkpoint>][_<estimator>][_<settings>].json``; the checkpoint part is left out for
    ``best``, the run's own. With the run's ``saved`` config, overrides that repeat its own values name nothing."""
    parts = [prefix, *([checkpoint] if checkpoint != "best" else []), *([estimator] if estimator else [])]
    slug = settings_slug(overrides if saved is None else changed(overrides, saved))
    return run_dir / ("_".join([*parts, *([slug] if slug else [])]) + ".json")


def unclaimed(path: Path) -> Path:
    """``path``, or ``RescoringExists`` when a re-scoring is already there."""
    if path.exists():
        raise RescoringExists(f"{path} already holds a re-scoring of this checkpoint with these settings; nothing was "
                              "written (score with other settings, or move that file away to redo it)")
    return path
