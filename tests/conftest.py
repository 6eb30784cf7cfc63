"""Shared fixtures: tiny IDX datasets in a temporary folder, a seeded generator and a clean environment per test.

Helpers (composing configs, running ``train.py``, component lists) live in ``tests/helpers``. A test that starts a
subprocess must be marked ``slow`` (``pytest -m "not slow"`` is the quick loop); ``_subprocesses_only_when_slow``
fails one that is not, so the quick tier stays quick as tests are added.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from rhovae.idx import write_dataset
from rhovae.provenance import code_version


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_dataset(root, "mnist", seed=0)
    write_dataset(root, "fmnist", seed=100)
    return root


@pytest.fixture(autouse=True)
def _seed_and_env(monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("RHOVAE_DATA", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Runs and tuning trials in this process set ``trainer.threads`` for the whole process; a later test comparing
    its in-process run with a subprocess's must not inherit another test's thread count (sums round differently)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _code_version_read_once():
    """Every run records its git commit (``rhovae.provenance``), read with git once per process: here, before the
    quick tests refuse subprocesses."""
    code_version()


@pytest.fixture(autouse=True)
def _subprocesses_only_when_slow(request, monkeypatch):
    if request.node.get_closest_marker("slow"):
        return

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.name} starts a subprocess: mark it @pytest.mark.slow")

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
