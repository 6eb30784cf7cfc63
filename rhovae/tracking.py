"""Where a run's numbers go: local files in the run folder, and optionally Weights & Biases.

Local files (always): ``metrics.jsonl``, one JSON object per finished epoch, appended and flushed as it
happens; ``summary.json``, written atomically. W&B (``logger=wandb``): imported only when selected, offline
by default so no account is needed; ``wandb sync <run_dir>/wandb/offline-run-*`` uploads later.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch


log = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else (math.inf if value > 0 else -math.inf)
    return value


def write_json_atomic(path: str | Path, obj: Mapping[str, Any]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({k: _jsonable(v) for k, v in obj.items()}, indent=2) + "\n")
    os.replace(tmp, path)


def append_jsonl(path: str | Path, row: Mapping[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n")
        f.flush()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class NullLogger:
    """``logger=none``: W&B is never imported."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_images(self, images: Mapping[str, torch.Tensor | Path], step: int) -> None:
        pass

    def summarize(self, metrics: Mapping[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger(NullLogger):
    """A W&B run in ``run_dir/wandb``; scalars per epoch, image grids, and the final metrics in the run summary.

    ``run_id`` is fixed by the caller and W&B resumes it when it exists (``resume="allow"``), so a run that was
    interrupted and resumed is one W&B run, not one per attempt. W&B's own console output is silenced (``verbose``
    brings it back); the run's own log says where its files are.
    """

    def __init__(self, run_dir: Path, config: Mapping[str, Any], *, project: str, mode: str, group: str,
                 tags: Sequence[str], run_id: str, entity: str | None = None, name: str | None = None,
                 verbose: bool = False):
        import wandb  # lazy: logger=none must never need it

        self._wandb = wandb
        settings = wandb.Settings(silent=not verbose)
        self.run = wandb.init(project=project, entity=entity, name=name, group=group, tags=list(tags),
                              config=dict(config), dir=str(run_dir), mode=mode, reinit="finish_previous",
                              id=run_id, resume="allow", settings=settings)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def log_images(self, images: Mapping[str, torch.Tensor | Path], step: int) -> None:
        """Image grids ``[C, H, W]`` in [0, 1], or PNG files."""
        self.run.log({k: self._wandb.Image(str(v) if isinstance(v, Path) else v.permute(1, 2, 0).cpu().numpy())
                      for k, v in images.items()}, step=step)

    def summarize(self, metrics: Mapping[str, Any]) -> None:
        self.run.summary.update(dict(metrics))

    def finish(self, exit_code: int = 0) -> None:
        offline = self.run.settings.mode == "offline"
        folder = Path(self.run.dir).parent  # wandb/offline-run-<date>-<id>, above the run's files/
        self.run.finish(exit_code=exit_code)
        if offline:
            log.info("W&B run saved offline in %s; upload it with: wandb sync %s", folder, folder)
