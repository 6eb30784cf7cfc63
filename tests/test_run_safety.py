"""Finished work survives every way a researcher can rerun, resume, stop or mistype ``python train.py``.

Each test drives the real command in a subprocess and compares run folders byte for byte (``folder_digest``).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import REPO, TINY_OVERRIDES, folder_digest, started, subprocess_env, train, wait_for
from rhovae.checkpoint import load_checkpoint
from rhovae.tracking import read_jsonl

# 200 training images in batches of 8 (25 steps per epoch), rho posterior, seed 1, W&B offline: not the defaults, so a
# resume that forgot the original overrides would show.
ARGS = [o for o in TINY_OVERRIDES if not o.startswith(("trainer.max_batches", "trainer.batch_size"))]
ARGS += ["posterior=rho", "seed=1", "trainer.batch_size=8", "trainer.epochs=2", "trainer.device=cpu"]
COMPARED = ("epochs", "best_epoch", "val/elbo", "test/elbo", "test/kl", "test/nll", "n_params")

pytestmark = pytest.mark.slow  # every test here runs train.py or a script in a subprocess


def last_line(proc) -> str:
    return proc.stderr.strip().splitlines()[-1]


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


@pytest.fixture(scope="module")
def finished(data_root, tmp_path_factory) -> Path:
    """A completed run, logged to W&B offline; W&B's own console output stays silent without WANDB_SILENT."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    proc = train([f"dataset.root={data_root}", *ARGS, f"hydra.run.dir={run_dir}"], cwd=run_dir.parent,
                 wandb_silent=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wandb_lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "wandb" in line.lower()]
    assert len(wandb_lines) == 1 and "upload it with: wandb sync" in wandb_lines[0]  # the project's line, not W&B's
    assert proc.stdout.strip().splitlines()[-1].split(" - ")[1].startswith("test ELBO")  # the project's line is last
    return run_dir


def test_rerun_without_resume_is_refused_and_changes_nothing(finished, data_root):
    before = folder_digest(finished)
    proc = train([f"dataset.root={data_root}", *ARGS, f"hydra.run.dir={finished}"], cwd=finished.parent)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout
    assert last_line(proc) == (
        f"error: {finished} already holds a run (checkpoints/last.pt, checkpoints/best.pt, summary.json; status "
        "completed); nothing was changed. Continue it with trainer.resume=true, or replace it with "
        "trainer.overwrite=true")
    assert proc.stderr.count("already holds a run") == 1 and "already holds a run" not in proc.stdout
    assert folder_digest(finished) == before


def test_refused_resume_changes_nothing_and_names_the_keys_that_may_change(finished, data_root):
    before = folder_digest(finished)
    proc = train([f"dataset.root={data_root}", "trainer.resume=true", "latent_dim=5", f"hydra.run.dir={finished}"],
                 cwd=finished.parent)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    line = last_line(proc)
    assert line.startswith(f"error: cannot resume {finished}: the config differs from its checkpoint in "
                           "latent_dim=5 (checkpoint: 4); nothing was changed.")
    allowed = line.split("Keys that may change on resume: ")[1].split(", ")
    assert {"trainer.epochs", "eval.iw_samples", "dataset.root", "logger.mode", "trainer.device"} <= set(allowed)
    assert not any(k.endswith((".", "_")) for k in allowed)  # full key names, not prefixes
    assert folder_digest(finished) == before  # no .hydra rewrite, no train.log line, no new W&B run
    assert len(offline_runs(finished)) == 1


def test_a_completed_run_resumed_with_nothing_to_do_is_left_alone(finished):
    before = folder_digest(finished)
    proc = train(["trainer.resume=true", f"hydra.run.dir={finished}"], cwd=finished.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "is complete (status completed); nothing to resume" in proc.stdout
    assert folder_digest(finished) == before


def test_overwrite_replaces_the_run_only_when_asked(finished, data_root, tmp_path):
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(finished), str(copy)], check=True)
    old_summary = json.loads((copy / "summary.json").read_text())
    (copy / "evaluation_last.json").write_text("{}")  # a re-scoring of the old run's last checkpoint
    proc = train([f"dataset.root={data_root}", *ARGS, "trainer.epochs=1", "trainer.overwrite=true",
                  f"hydra.run.dir={copy}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trainer.overwrite=true: removed the previous run's checkpoints, summary.json, metrics.jsonl" in proc.stdout
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["epochs"] == 1 and old_summary["epochs"] == 2
    assert not (copy / "evaluation_last.json").exists()
    assert [r["epoch"] for r in read_jsonl(copy / "metrics.jsonl")] == [1]
    runs = offline_runs(copy)
    assert len(runs) == 1 and not runs[0].name.endswith(offline_runs(finished)[0].name[-16:])  # a new W&B id


def test_sweep_whose_job_folders_hold_runs_is_refused_job_by_job(data_root, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", "seed=0", f"dataset.root={data_root}", *TINY_OVERRIDES, "logger=none", "trainer.epochs=1",
            f"hydra.sweep.dir={sweep}"]
    assert train(args, cwd=tmp_path).returncode == 0
    job = next(sweep.glob("0_*"))
    before = folder_digest(sweep)
    proc = train([*args, "trainer.epochs=2"], cwd=tmp_path)  # other overrides: Hydra's new record would differ
    assert proc.returncode != 0
    assert f"error in {job.name}: {job} already holds a run" in proc.stderr
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last == f"error: 1 job(s) of this sweep failed: {job.name} (each one's error is above)"
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    assert folder_digest(sweep) == before  # the jobs and the sweep's multirun.yaml, byte for byte

    resumed = train([*args, "trainer.resume=true"], cwd=tmp_path)  # nothing to do, and it succeeds
    assert resumed.returncode == 0, resumed.stderr
    assert folder_digest(sweep)["multirun.yaml"] == before["multirun.yaml"]
    later = list(sweep.glob("multirun.*.yaml"))
    assert len(later) == 1 and "trainer.resume=true" in later[0].read_text()


def test_unknown_keys_added_with_plus_are_refused_with_the_closest_key(tmp_path):
    for override, hint in (("+trainer.epoch=3", "did you mean trainer.epochs?"),
                           ("+dataset.binarise=static", "did you mean dataset.binarize?"),
                           ("trainer.epoch=3", "did you mean trainer.epochs?"),  # without +: the typo, not +typo
                           ("posterior.flow_lenght=3", "did you mean posterior.flow_length?")):
        key = override.strip("+").split("=")[0]
        run_dir = tmp_path / key
        proc = train([override, "logger=none", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert last_line(proc) == f"error: {key} is not a key of the configuration; {hint}"
        assert not any(run_dir.rglob("*"))  # nothing written: no .hydra, no train.log


def test_evaluate_script_refuses_an_unknown_key_in_one_line(finished):
    before = folder_digest(finished)
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), str(finished), "eval.iw_sample=5"],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert last_line(proc) == ("error: eval.iw_sample is not a key of the run's configuration; "
                               "did you mean eval.iw_samples?")
    assert folder_digest(finished) == before


def test_resume_without_checkpoint_starts_afresh_and_oversized_batches_are_refused(data_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = train([f"dataset.root={data_root}", *TINY_OVERRIDES, "logger=none", "trainer.resume=true",
                  "trainer.batch_size=1000", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert last_line(proc) == ("error: trainer.batch_size=1000 is larger than the training set (200 images of mnist "
                               "after dataset.val_size=40); accepted: 1 to 200")
    assert not run_dir.exists()  # refused while planning: the folder Hydra made is removed, nothing is left

    proc = train([f"dataset.root={data_root}", *TINY_OVERRIDES, "logger=none", "trainer.resume=true",
                  "trainer.epochs=1", "eval.iw_samples=0", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"no checkpoint in {run_dir}, starting afresh" in proc.stdout
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"


# ---- stopping: Ctrl-C during training, a stop during the final evaluation -------------------------------------


def test_ctrl_c_saves_the_position_and_resume_needs_no_overrides(finished, data_root, tmp_path):
    run_dir = tmp_path / "run"
    with started([f"dataset.root={data_root}", *ARGS, f"hydra.run.dir={run_dir}"], cwd=tmp_path) as proc:
        wait_for(proc, (run_dir / "checkpoints" / "last.pt").exists, "the first checkpoint")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert stderr.strip().splitlines()[-1].endswith(f"continue with: python train.py trainer.resume=true "
                                                    f"hydra.run.dir={run_dir}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "stop requested" in summary["error"]

    # the resume command it printed, and nothing else: data root, posterior and sizes come from the checkpoint
    resumed = train(["trainer.resume=true", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary, reference = (json.loads((d / "summary.json").read_text()) for d in (run_dir, finished))
    assert summary["status"] == "completed" and summary["posterior"] == "rho"
    logged = [line for line in (resumed.stdout + resumed.stderr).splitlines() if "[rhovae." in line]
    assert logged and all("[mnist_rho_s1][rhovae." in line for line in logged)  # the run's name, not the defaults'
    for key in COMPARED:
        assert summary[key] == reference[key], key
    # one W&B run for both attempts: every offline run folder and its data file carry the same id
    runs = offline_runs(run_dir)
    ids = {r.name.rsplit("-", 1)[1] for r in runs}
    assert len(runs) == 2 and len(ids) == 1
    for r in runs:
        assert ids <= {p.stem.removeprefix("run-") for p in r.glob("run-*.wandb")}
        assert next(iter(ids)).encode() in next(r.glob("run-*.wandb")).read_bytes()


def test_resume_composes_keys_of_the_runs_own_posterior(finished, tmp_path):
    """The run is a rho run; the default posterior (diag) has no ``variant``: the resume reads the run's choices."""
    before = folder_digest(finished)
    proc = train(["trainer.resume=true", "posterior.variant=paper", f"hydra.run.dir={finished}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "is complete (status completed); nothing to resume" in proc.stdout + proc.stderr
    assert folder_digest(finished) == before


def test_resume_refuses_overrides_that_change_the_model(finished, tmp_path):
    proc = train(["trainer.resume=true", "posterior=iaf", f"hydra.run.dir={finished}"], cwd=tmp_path)
    assert proc.returncode == 1
    assert "differs from its checkpoint in posterior.name='iaf' (checkpoint: 'rho')" in last_line(proc)


def test_second_ctrl_c_exits_at_once():
    script = textwrap.dedent("""
        import os, signal, time
        from rhovae.interrupt import stop_on_signals
        with stop_on_signals() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)
            assert stop() and stop.exit_code == 130
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)
        print("not reached")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and "not reached" not in proc.stdout
    assert "received SIGINT again: exiting now; the last checkpoint is kept" in proc.stderr


def test_stop_during_the_final_evaluation_is_recorded_and_resume_goes_straight_to_it(data_root, tmp_path):
    run_dir = tmp_path / "run"
    args = [f"dataset.root={data_root}", *TINY_OVERRIDES, "logger=none", "trainer.epochs=1",
            "eval.iw_samples=2000000", "eval.iw_chunk=1000", f"hydra.run.dir={run_dir}"]
    log = run_dir / "train.log"
    with started(args, cwd=tmp_path) as proc:
        wait_for(proc, lambda: log.exists() and "test evaluation of the best checkpoint" in log.read_text(),
                 "the final evaluation")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert re.match(r"stopped during the (test evaluation, after the test ELBO|test evaluation, after the active "
                    r"units|importance-weighted NLL, after 0 of 80 images); training is complete", summary["error"])
    assert "resuming goes straight to the test evaluation" in summary["error"]
    trained = {name: folder_digest(run_dir)[name] for name in ("checkpoints/last.pt", "checkpoints/best.pt")}
    metrics = (run_dir / "metrics.jsonl").read_text()

    resumed = train(["trainer.resume=true", "eval.iw_samples=20", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "epoch 1/1" not in resumed.stdout  # no training step was taken
    assert (run_dir / "metrics.jsonl").read_text() == metrics
    assert {name: folder_digest(run_dir)[name] for name in trained} == trained
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["test/iw_samples"] == 20 and summary["epochs"] == 1
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["state"]["epoch"] == 1
