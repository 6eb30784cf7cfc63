"""What a command may do to a run folder: a folder that holds a run is continued or, when asked, replaced.

A run folder holds a run once it has a checkpoint or a ``summary.json``. Starting there is refused unless the
user says which of the two ways on is meant: ``trainer.resume=true`` continues it from ``checkpoints/last.pt``,
``trainer.overwrite=true`` deletes its outputs first. The refusal happens before anything is written, so the
folder stays byte-identical. A folder is held by the one process training in it (``exclusive_use``), so a second
command started there meanwhile is refused instead of interleaving its checkpoints with the first one's.
``wandb_run_id`` gives the run one W&B id for all its attempts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

from .errors import RhovaeError

CHECKPOINT = Path("checkpoints") / "last.pt"
# Files that make a folder a run: finished epochs (a checkpoint) or a record of how the run ended.
RUN_RECORDS = (CHECKPOINT, Path("checkpoints") / "best.pt", Path("summary.json"))
# Everything a run writes into its folder, and its re-scorings (scripts/evaluate.py), as names or glob patterns;
# trainer.overwrite=true removes these and nothing else (train.log is kept and appended to, so the log says what
# was replaced).
RUN_OUTPUTS = ("checkpoints", "summary.json", "metrics.jsonl", "milestones.jsonl", "evaluation.json",
               "evaluation_*.json", "samples.png", "reconstructions.png", "learning_curves.png", "latent_means.png",
               "kl_per_dim.png", "gaps.json", "gaps.npz", "gaps_*.json", "gaps_*.npz", "wandb", ".hydra")


log = logging.getLogger(__name__)


class RunFolderError(RhovaeError):
    """Starting in a folder that already holds a run, without saying whether to continue or replace it, or while
    another process trains there."""


@contextlib.contextmanager
def exclusive_use(run_dir: Path) -> Iterator[None]:
    """Hold the existing folder ``run_dir`` for this process, or refuse with one line if another process holds it.

    An advisory ``flock`` on the folder itself: nothing is written into it, and the hold ends with the process
    however that ends (no stale lock after a crash or ``kill -9``). Without ``fcntl`` (Windows), or on a file
    system that refuses ``flock``, the folder is not held and a warning says so.
    """
    try:
        import fcntl
    except ImportError:
        log.warning("this platform has no flock: nothing stops a second process from training in %s at the same "
                    "time", run_dir)
        yield
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderError(f"{run_dir} is in use: another process is training this run right now; nothing was "
                                 "changed. Let it finish, or stop it (Ctrl-C saves a checkpoint) and resume") from None
        except OSError as err:  # a file system without flock (some Lustre and NFS mounts)
            log.warning("cannot hold %s (%s): nothing stops a second process from training there at the same time",
                        run_dir, err.strerror)
        yield
    finally:
        os.close(fd)


def run_records(run_dir: Path) -> list[Path]:
    """The files that make ``run_dir`` a run (empty when it holds none)."""
    return [run_dir / rel for rel in RUN_RECORDS if (run_dir / rel).is_file()]


def recorded_status(run_dir: Path) -> str | None:
    """``status`` from the folder's summary.json (completed, interrupted, failed), or None without one."""
    path = run_dir / "summary.json"
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, ValueError):
        return None


def check_start(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse, with one line, a fresh start in a folder that holds a run, and resuming a run with no checkpoint."""
    if resume and overwrite:
        raise RunFolderError("trainer.resume=true and trainer.overwrite=true contradict each other; choose one")
    records = run_records(run_dir)
    if not records or overwrite:
        return
    status = recorded_status(run_dir)
    what = ", ".join(str(p.relative_to(run_dir)) for p in records) + (f"; status {status}" if status else "")
    if not resume:
        raise RunFolderError(f"{run_dir} already holds a run ({what}); nothing was changed. Continue it with "
                             f"trainer.resume=true, or replace it with trainer.overwrite=true")
    if not (run_dir / CHECKPOINT).is_file():
        raise RunFolderError(f"cannot resume {run_dir}: it holds a run ({what}) but no {CHECKPOINT}; nothing was "
                             f"changed. Replace it with trainer.overwrite=true")


def clear_outputs(run_dir: Path) -> list[str]:
    """Delete what a previous run wrote into ``run_dir`` (``trainer.overwrite=true``); return what was removed."""
    removed = []
    for path in (path for pattern in RUN_OUTPUTS for path in sorted(run_dir.glob(pattern))):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path.name)
    return removed


def wandb_run_id(run_dir: Path, salt: str = "") -> str:
    """A W&B run id that is the same every time the run in ``run_dir`` is started or resumed.

    Derived from the folder's absolute path; ``salt`` (the time of an overwrite) gives a replaced run its own id.
    """
    digest = hashlib.sha1(f"{Path(run_dir).resolve()}|{salt}".encode()).hexdigest()
    return digest[:16]


def overwrite_salt() -> str:
    return time.strftime("%Y%m%dT%H%M%S")
