"""What a run ran on: code version, library versions, processor, threads and device.

Rounding differences between torch builds or processors grow through training like a change of seed, so two runs of
one config on two installs can differ by more than the spread over seeds (a planar run retrained on another AMD EPYC
scored 133 at its first milestone where the first machine's scored 187; diag reproduced to the last digit). Every
summary.json, checkpoint and W&B run records this, and ``scripts/summarize.py`` says when the runs of one table
differ in it. The matrix products come from MKL, which picks its own code path by processor vendor and generation
unless told otherwise (``MKL_CBWR``): an Intel and an AMD processor round differently even with torch's own
kernels held to AVX2 (results/iwae_paper_xeon_check).
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("torch", "pyro-ppl", "hydra-core", "omegaconf", "numpy")
REPOSITORY = Path(__file__).resolve().parent.parent
# environment variables that choose which kernels the math libraries under torch run, hence how they round
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
                    "DNNL_MAX_CPU_ISA")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=REPOSITORY, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model(cpuinfo: str | None = None) -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux), or what ``platform`` knows elsewhere."""
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_generation(cpuinfo: str | None = None) -> str | None:
    """The processor's family, model and stepping (``25/17/1``), which tell apart the generations that share one
    model name ("AMD EPYC"); None where ``/proc/cpuinfo`` does not say."""
    fields = {}
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("cpu family", "model", "stepping") and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    if len(fields) < 3:
        return None
    return f"{fields['cpu family']}/{fields['model']}/{fields['stepping']}"


def kernel_settings() -> str | None:
    """The kernel-choosing environment variables this process was started with (``"ATEN_CPU_CAPABILITY=avx2
    MKL_CBWR=AVX2"``), or None where none is set and every library picks its kernels for the processor."""
    settings = [f"{name}={os.environ[name]}" for name in KERNEL_VARIABLES if os.environ.get(name)]
    return " ".join(settings) or None


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
    cpuinfo = _cpuinfo()
    cpu = cpu_model(cpuinfo)
    return {
        **code_version(), "python": platform.python_version(), **{package: _version(package) for package in PACKAGES},
        "cpu": cpu, "cpu_generation": cpu_generation(cpuinfo),
        # the vector instructions torch's kernels, and the code torch.compile generates, use (AVX512, AVX2, ...):
        # they round differently, so expect a run to reproduce bit for bit only where this and the generation match
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "kernel_settings": kernel_settings(),
        "threads": torch.get_num_threads(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
    }
