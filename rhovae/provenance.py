"""What a run ran on: code version, library versions, processor, threads and device.

Rounding differences between torch builds or processors grow through training like a change of seed, so two runs of
one config on two installs can differ by more than the spread over seeds. Every summary.json, checkpoint and W&B run
records this, and ``scripts/summarize.py`` says when the runs of one table differ in it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("torch", "pyro-ppl", "hydra-core", "omegaconf", "numpy")
REPOSITORY = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPOSITORY, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), or what ``platform`` knows elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def code_version() -> dict[str, Any]:
    """The git commit of the code this process imported and whether tracked files differ from it (read once per
    process: the code a process runs does not change under it)."""
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def provenance(device: torch.device) -> dict[str, Any]:
    """The code, libraries and machine of this process, as a flat JSON-able dict."""
    return {
        **code_version(), "python": platform.python_version(), **{package: _version(package) for package in PACKAGES},
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
    }
