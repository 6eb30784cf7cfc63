"""Test helpers: the real configs composed through Hydra, ``python train.py`` in subprocesses, folder digests, and
the lists of components every contract test runs over, read from the registries and the config folders, so that
a new posterior, network or dataset is tested with no test edit."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
from hydra.core.config_store import ConfigStore

from rhovae.data import DATASETS
from rhovae.config.hydra_run import register_configs
from rhovae.networks import NETWORKS
from rhovae.posteriors import POSTERIORS, FlowPosterior, build_posterior

register_configs()  # the typed configs configs/config.yaml builds on (importing rhovae.config.hydra_run did it already)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"

# Tiny, fast settings every smoke run shares: 40 validation images out of 240, 3 batches of 32 per epoch.
TINY_OVERRIDES = [
    "dataset.val_size=40", "trainer.batch_size=32", "trainer.max_batches=3", "eval.batch_size=64",
    "latent_dim=4", "networks.hidden=[32,32]", "trainer.progress=false", "eval.iw_samples=20", "eval.iw_chunk=8",
    "eval.mean_samples=4",
]


def flushing_subnormals() -> bool:
    """Whether this process flushes subnormal floats to zero (``trainer.flush_denormal``): a subnormal operand,
    1e-39 (below float32's 1.18e-38), then counts as zero."""
    return (torch.tensor([1e-39]) * 1.0).item() == 0.0


def compose(overrides: list[str], hydra: bool = False):
    """Compose ``configs/config.yaml`` with ``overrides`` through Hydra's compose API; ``hydra`` keeps ``cfg.hydra``."""
    from hydra import compose as hydra_compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=hydra)


def subprocess_env(wandb_silent: bool = True) -> dict[str, str]:
    """The environment of a user's shell: no inherited W&B settings or data root (``WANDB_SILENT`` by default)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "RHOVAE_DATA"}
    env.update(PYTHONUNBUFFERED="1", **({"WANDB_SILENT": "true"} if wandb_silent else {}))
    return env


def load_script(name: str):
    """scripts/<name>.py as a module, so that its main() runs in this process (no subprocess: quick tier)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (relative path) with the SHA-256 of its bytes: equal digests = byte-identical."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def train(args: list[str], cwd: Path, wandb_silent: bool = True) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` as a user runs it, in ``cwd``, with no inherited data root (and W&B told to be
    quiet unless ``wandb_silent`` is false: the project must then keep it quiet itself)."""
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd,
                          env=subprocess_env(wandb_silent), capture_output=True, text=True, timeout=600)


@contextlib.contextmanager
def started(args: list[str], cwd: Path) -> Iterator[subprocess.Popen]:
    """``python train.py ARGS`` in the background, as ``train`` runs it; killed on the way out if a failed check
    left it running (an orphaned training process would slow every later test)."""
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def wait_for(proc: subprocess.Popen, ready: Callable[[], bool], what: str) -> None:
    """Poll ``ready()`` until it is true; fail if ``proc`` ends first or two minutes pass."""
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def build_choice(choice: str, in_features: int, latent_dim: int, **options):
    """The posterior of a ``posterior=`` choice: a registered name, or a named setting of one with its options."""
    name, fixed = POSTERIORS.settings.get(choice, (choice, {}))
    return build_posterior(name, in_features, latent_dim, **{**fixed, **options})


POSTERIOR_NAMES = sorted(POSTERIORS)
# every choice of the posterior group, named settings included (the contract tests run on each)
POSTERIOR_CHOICES = sorted([*POSTERIORS, *POSTERIORS.settings])
FLOW_CHOICES = [n for n in POSTERIOR_CHOICES if isinstance(build_choice(n, 4, 2), FlowPosterior)]
FLOW_NAMES = [n for n in POSTERIOR_NAMES if n in FLOW_CHOICES]
GAUSSIAN_CHOICES = [n for n in POSTERIOR_CHOICES if n not in FLOW_CHOICES]  # closed-form KL, exact log_prob
GAUSSIAN_NAMES = [n for n in POSTERIOR_NAMES if n in GAUSSIAN_CHOICES]
DATASET_NAMES = sorted(DATASETS)
NETWORK_NAMES = sorted(NETWORKS)


def flows_in_slow_tier(names: list[str]) -> list:
    """``names`` as pytest parameters with the flows marked slow: an estimator check of a flow costs seconds (Monte
    Carlo densities through K steps), so the quick tier checks the other families and the full suite all of them."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in FLOW_CHOICES else n for n in names]


def config_options(group: str) -> list[str]:
    """The options of a config group: its YAML files in ``configs/<group>/`` and its typed options in Hydra's
    ConfigStore (one per registered component, ``rhovae.config.hydra_run.register_configs``)."""
    stored = ConfigStore.instance().repo.get(group, {})
    return sorted({p.stem for p in (CONFIGS / group).glob("*.yaml")} | {Path(name).stem for name in stored})
