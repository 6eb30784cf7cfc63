"""Checkpoints that survive a kill mid-write and never execute code when loaded.

``save_atomic`` writes to a temporary file in the same folder, flushes it to disk and renames it over the
target, so the previous checkpoint stays intact until the new one is complete. ``load_checkpoint`` only
unpickles tensors and plain containers (``weights_only=True``) and turns a refusal into one clear message.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from .errors import RhovaeError


class CheckpointError(RhovaeError):
    """A checkpoint is missing, unreadable, or holds objects that are not plain tensors and containers."""


def save_atomic(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0]
        raise CheckpointError(f"refused to load {path}: it holds more than tensors and plain containers ({reason})") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"could not read checkpoint {path}: {err}") from err
