"""The training loss through ``torch.compile``, checked against eager PyTorch before its numbers are trusted.

Compiled kernels can be wrong without failing: inductor reuses kernels from its cache
(``TORCHINDUCTOR_CACHE_DIR``, by default ``/tmp/torchinductor_<user>``), and a cache filled on one processor and
reused on another with a narrower vector unit runs 16-lane AVX-512 loops with 8-lane AVX2 vectors. Reproduced on
torch 2.14 by changing ``ATEN_CPU_CAPABILITY`` between two runs on one machine: diag's KL came out NaN, rho's
7 nats off with every value finite. A cluster whose nodes share one cache across processor generations is
exposed the same way. So the first batch of every input shape goes through both versions with the same random
numbers, and a disagreement beyond rounding stops the run with one line that says what to do. The eager pass
runs with the random state forked, so the run draws exactly what it would draw without the check.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .errors import RhovaeError

# |compiled - eager| allowed per image for the reconstruction term and the KL: generous for rounding (float32
# differs in the 5th digit; bfloat16 matrix products by up to about 1% of the term), far below what a wrong kernel
# gives (NaN, or nats).
ABS_TOLERANCE = 0.5
REL_TOLERANCE = 0.05


class CompiledKernelError(RhovaeError):
    """torch.compile's version of the loss disagrees with eager PyTorch on the same batch and random numbers."""


def disagreement(compiled: torch.Tensor, eager: torch.Tensor) -> str | None:
    """What is wrong with ``compiled`` as a copy of ``eager`` (per-image values), or None when it agrees."""
    compiled, eager = compiled.detach().float(), eager.detach().float()
    finite = torch.isfinite(eager)
    broken = int((finite & ~torch.isfinite(compiled)).sum())
    if broken:
        return f"{broken} of {eager.numel()} values non-finite (eager: finite)"
    gap = (compiled - eager).abs()[finite]
    too_far = gap > ABS_TOLERANCE + REL_TOLERANCE * eager.abs()[finite]
    if too_far.any():
        return f"{int(too_far.sum())} of {eager.numel()} values off by up to {gap.max().item():.3g}"
    return None


def checked_compile(loss: Callable[..., tuple[torch.Tensor, Any]]) -> Callable[..., tuple[torch.Tensor, Any]]:
    """``torch.compile(loss)`` (inductor's random numbers off, so it draws what eager draws) that, on the first call
    for each input shape, also runs ``loss`` eagerly on the same batch and random state and raises
    ``CompiledKernelError`` unless the per-image terms (``.recon``, ``.kl``) agree."""
    compiled = torch.compile(loss, options={"fallback_random": True})
    checked: set[tuple[int, ...]] = set()

    def run(x: torch.Tensor, *args, **kwargs):
        if tuple(x.shape) in checked:
            return compiled(x, *args, **kwargs)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            _, expected = loss(x, *args, **kwargs)
        value, terms = compiled(x, *args, **kwargs)
        for name in ("recon", "kl"):
            problem = disagreement(getattr(terms, name), getattr(expected, name))
            if problem:
                raise CompiledKernelError(
                    f"torch.compile's training loss disagrees with eager PyTorch on the same batch ({name} per image: "
                    f"{problem}); one known cause is a kernel cache filled on a processor with wider vector units: clear "
                    "$TORCHINDUCTOR_CACHE_DIR (default /tmp/torchinductor_$USER) or set trainer.compile=false")
        checked.add(tuple(x.shape))
        return value, terms

    return run
