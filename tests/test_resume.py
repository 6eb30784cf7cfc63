"""A killed or terminated run, resumed, ends exactly where the uninterrupted run ends (bitwise on CPU)."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import signal
from pathlib import Path

import pytest

from helpers import TINY_OVERRIDES, compose, folder_digest, started, train, wait_for
from rhovae import experiment
from rhovae.checkpoint import load_checkpoint
from rhovae.errors import ConfigError
from rhovae.run_folder import RunFolderError, exclusive_use
from rhovae.tracking import read_jsonl
from rhovae.trainer import TrainingInterrupted, TrainingPaused

COMPARED = ("epochs", "best_epoch", "val/elbo", "test/elbo", "test/recon", "test/kl", "test/nll",
            "test/active_units", "n_params")
# 200 training images in batches of 8: 25 steps per epoch, long enough to be caught in the middle of one
RESUME_OVERRIDES = [o for o in TINY_OVERRIDES if not o.startswith(("trainer.max_batches", "trainer.batch_size",
                                                                  "networks."))]
RESUME_OVERRIDES += ["trainer.batch_size=8", "trainer.epochs=3", "logger=none", "trainer.device=cpu"]


def same_numbers(a: dict, b: dict) -> None:
    for key in COMPARED:
        assert a[key] == b[key], (key, a[key], b[key])


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    return experiment.run_experiment(compose([f"dataset.root={data_root}", *RESUME_OVERRIDES]), run_dir)


def test_stop_mid_epoch_then_resume_matches_the_uninterrupted_run(data_root, tmp_path, monkeypatch, uninterrupted):
    calls = {"n": 0}

    @contextlib.contextmanager
    def stop_after_36_steps():
        def stop():
            calls["n"] += 1
            return calls["n"] >= 36  # polled after each step and each epoch: epoch 2, step 35, batch 10 of 25
        yield stop

    monkeypatch.setattr(experiment, "stop_on_signals", stop_after_36_steps)
    cfg = compose([f"dataset.root={data_root}", *RESUME_OVERRIDES])
    with pytest.raises(TrainingInterrupted, match="stop requested: saved epoch 2 at step 35"):
        experiment.run_experiment(cfg, tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "interrupted"
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert saved["state"]["epoch"] == 1 and saved["epoch_progress"]["next_batch"] == 10

    monkeypatch.undo()
    resumed = experiment.run_experiment(compose([f"dataset.root={data_root}", *RESUME_OVERRIDES,
                                                 "trainer.resume=true"]), tmp_path)
    same_numbers(resumed, uninterrupted)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_resume_refuses_a_different_model(data_root, tmp_path, uninterrupted):
    cfg = compose([f"dataset.root={data_root}", *RESUME_OVERRIDES, "trainer.epochs=1"])
    experiment.run_experiment(cfg, tmp_path)
    changed = compose([f"dataset.root={data_root}", *RESUME_OVERRIDES, "trainer.resume=true", "latent_dim=5"])
    with pytest.raises(ConfigError, match=r"cannot resume .*latent_dim=5 \(checkpoint: 4\)"):
        experiment.run_experiment(changed, tmp_path)
    # extending the number of epochs is allowed, and continues from epoch 2
    longer = experiment.run_experiment(compose([f"dataset.root={data_root}", *RESUME_OVERRIDES,
                                                "trainer.resume=true"]), tmp_path)
    same_numbers(longer, uninterrupted)


def test_a_folder_held_by_a_training_process_is_refused_and_left_as_it_is(data_root, tmp_path):
    experiment.run_experiment(compose([f"dataset.root={data_root}", *RESUME_OVERRIDES, "trainer.epochs=1"]), tmp_path)
    before = folder_digest(tmp_path)
    resume = compose([f"dataset.root={data_root}", *RESUME_OVERRIDES, "trainer.resume=true"])
    with exclusive_use(tmp_path):  # what the process training there holds
        with pytest.raises(RunFolderError, match=rf"^{re.escape(str(tmp_path))} is in use: another process is "
                                                 r"training this run right now; nothing was changed\. "):
            experiment.run_experiment(resume, tmp_path)
    assert folder_digest(tmp_path) == before
    assert experiment.run_experiment(resume, tmp_path)["epochs"] == 3  # released: the resume goes on


def test_a_file_system_without_flock_trains_unheld_and_says_so(data_root, tmp_path, monkeypatch, caplog):
    import fcntl

    def unsupported(fd, operation):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(fcntl, "flock", unsupported)
    with caplog.at_level(logging.WARNING, logger="rhovae.run_folder"):
        summary = experiment.run_experiment(compose([f"dataset.root={data_root}", *RESUME_OVERRIDES,
                                                     "trainer.epochs=1"]), tmp_path)
    assert summary["status"] == "completed"
    assert f"cannot hold {tmp_path} ({os.strerror(errno.EOPNOTSUPP)})" in caplog.text


def training_args(data_root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"dataset.root={data_root}", *RESUME_OVERRIDES, f"hydra.run.dir={run_dir}", *extra]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_subprocess_resumes_to_the_same_summary(data_root, tmp_path, uninterrupted, sig):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with started(training_args(data_root, run_dir), cwd=tmp_path) as proc:
        # epoch 1's last.pt is written last, by rename: the run is then in epoch 2
        wait_for(proc, (run_dir / "checkpoints" / "last.pt").exists, "the first checkpoint")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    summary_path = run_dir / "summary.json"
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and "Traceback" not in stderr
        assert stderr.strip().splitlines()[-1].startswith("interrupted: stop requested")
        assert json.loads(summary_path.read_text())["status"] == "interrupted"
    else:
        assert proc.returncode == -signal.SIGKILL
        assert not summary_path.exists()
    assert 1 <= load_checkpoint(run_dir / "checkpoints" / "last.pt")["state"]["epoch"] < 3

    proc = train(training_args(data_root, run_dir, "trainer.resume=true"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    same_numbers(json.loads(summary_path.read_text()), uninterrupted)


@pytest.mark.slow
def test_a_second_process_is_refused_while_the_first_trains_and_may_resume_once_it_is_killed(data_root, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with started(training_args(data_root, run_dir, "trainer.epochs=100000"), cwd=tmp_path) as first:
        wait_for(first, (run_dir / "checkpoints" / "last.pt").exists, "the first checkpoint")
        second = train(training_args(data_root, run_dir, "trainer.resume=true"), cwd=tmp_path)
        assert first.poll() is None  # still training while the second was refused
        assert second.returncode == 1 and "Traceback" not in second.stderr
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: {run_dir} is in use: another process is training this run right now; nothing was changed. Let "
            "it finish, or stop it (Ctrl-C saves a checkpoint) and resume")
        first.kill()
        first.communicate(timeout=120)
    proc = train(training_args(data_root, run_dir, "trainer.resume=true", "trainer.epochs=1"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]  # the killed process held nothing any more
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


def test_stop_at_epoch_ends_a_stretch_resumably_and_the_run_continues_bit_for_bit(data_root, tmp_path, uninterrupted):
    """trainer.stop_at_epoch=2 stops after epoch 2, saved (status interrupted, nothing tested); resumed with the
    saved stop still set it is refused without touching the folder; resumed with null it ends where the
    uninterrupted run ends."""
    base = [f"dataset.root={data_root}", *RESUME_OVERRIDES]
    with pytest.raises(TrainingPaused, match=r"trainer.stop_at_epoch=2 reached: epoch 2 is complete .* continue "
                                             r"with: python train.py trainer.resume=true trainer.stop_at_epoch=null"):
        experiment.run_experiment(compose([*base, "trainer.stop_at_epoch=2"]), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs"] == 2 and "test/nll" not in summary
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["state"]["epoch"] == 2

    before = folder_digest(tmp_path)
    for again in ([], ["trainer.stop_at_epoch=1"]):  # the saved stop (as the command line gives keys), an earlier one
        overrides = [*base, "trainer.resume=true", *again]
        with pytest.raises(ConfigError, match=r"trainer.stop_at_epoch=\d, but the run in .* has already trained 2 "
                                              r"epochs; accepted: an epoch after 2, or null"):
            experiment.run_experiment(compose(overrides), tmp_path, given=[o.split("=")[0] for o in overrides])
    assert folder_digest(tmp_path) == before

    resumed = experiment.run_experiment(compose([*base, "trainer.resume=true", "trainer.stop_at_epoch=null"]),
                                        tmp_path)
    same_numbers(resumed, uninterrupted)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
