"""Checkpoints: atomic replacement, and refusal to unpickle anything but tensors and plain containers."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from rhovae import checkpoint
from rhovae.checkpoint import CheckpointError, load_checkpoint, save_atomic


def test_round_trip(tmp_path):
    obj = {"model": {"w": torch.arange(3.0)}, "state": {"epoch": 2, "history": [{"val/elbo": -1.5}]}}
    save_atomic(obj, tmp_path / "ck" / "last.pt")
    loaded = load_checkpoint(tmp_path / "ck" / "last.pt")
    torch.testing.assert_close(loaded["model"]["w"], obj["model"]["w"])
    assert loaded["state"] == obj["state"]
    assert os.listdir(tmp_path / "ck") == ["last.pt"]  # no temporary file left behind


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"epoch": 1}, path)

    def dying_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(checkpoint.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"epoch": 2}, path)
    assert load_checkpoint(path) == {"epoch": 1}


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="refused to load .*evil.pt: it holds more than tensors"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()
    with open(tmp_path / "raw.pkl", "wb") as f:
        pickle.dump(_Exploit(), f)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "raw.pkl")
    assert not (tmp_path / "PWNED").exists()


def test_missing_and_garbage_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "garbage.pt")
