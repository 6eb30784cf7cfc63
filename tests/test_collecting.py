"""Collecting result files into results/: a run's copy grows with its run and is never replaced by another run's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import folder_digest, load_script
from rhovae.collecting import CollectConflict, collect, first_difference


def write_run(run: Path, epochs: int, seed: int = 0, timing: float = 9.0) -> Path:
    """A run folder as train.py leaves it: config, per-epoch metrics, a milestone per 2 epochs, a checkpoint."""
    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    (run / "checkpoints").mkdir(exist_ok=True)
    (run / ".hydra" / "config.yaml").write_text(f"seed: {seed}\n")
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"epoch": e, "val/elbo": -100.0 + e + seed, "epoch_s": timing}) + "\n" for e in range(1, epochs + 1)))
    (run / "milestones.jsonl").write_text("".join(
        json.dumps({"epoch": e, "test/nll": 90.0 - e + seed}) + "\n" for e in range(2, epochs + 1, 2)))
    (run / "summary.json").write_text(json.dumps({"status": "interrupted", "epochs_trained": epochs}))
    (run / "train.log").write_text(f"trained {epochs} epochs\n")
    (run / "checkpoints" / "last.pt").write_text("weights")
    return run


def test_a_copy_follows_its_run_as_it_trains_on_and_keeps_what_only_the_copy_has(tmp_path):
    run = write_run(tmp_path / "runs" / "mnist_diag_s0", epochs=4)
    dest = tmp_path / "results" / "x"
    collect(run, dest)
    copy = dest / "mnist_diag_s0"
    (copy / "evaluation_epoch_2.json").write_text('{"test/nll": 88.0}')  # scored from a folder since lost
    write_run(run, epochs=8)  # resumed: the same lines, then more
    copied = collect(run, dest)
    assert (copy / "metrics.jsonl").read_bytes() == (run / "metrics.jsonl").read_bytes()
    assert json.loads((copy / "summary.json").read_text())["epochs_trained"] == 8
    assert (copy / "evaluation_epoch_2.json").read_text() == '{"test/nll": 88.0}'
    assert not (copy / "checkpoints").exists() and copy / "train.log" in copied


@pytest.mark.parametrize("change", ["rerun", "shorter", "rescored", "milestones"])
def test_a_copy_that_the_source_does_not_continue_is_refused_and_nothing_is_copied(tmp_path, change):
    sweep = tmp_path / "sweep"
    write_run(sweep / "0_mnist_diag_s0", epochs=4)
    run = write_run(sweep / "1_mnist_rho_s0", epochs=4)
    (run / "evaluation_epoch_4.json").write_text('{"test/nll": 86.0}')
    dest = tmp_path / "results" / "x"
    collect(sweep, dest)
    if change == "rerun":  # the same settings trained again: the numbers agree, the timings do not
        write_run(run, epochs=6, timing=9.5)
    elif change == "shorter":
        write_run(run, epochs=2)
    elif change == "rescored":
        (run / "evaluation_epoch_4.json").write_text('{"test/nll": 86.5}')
    else:  # a milestone rewritten, though the metrics grew as they should
        write_run(run, epochs=6)
        (run / "milestones.jsonl").write_text(json.dumps({"epoch": 2, "test/nll": 80.0}) + "\n")
    write_run(sweep / "0_mnist_diag_s0", epochs=6)  # collected first, and could be refreshed on its own
    before = folder_digest(dest)
    with pytest.raises(CollectConflict, match=r"1_mnist_rho_s0 already holds results that .* would replace: its "
                                              r"(metrics\.jsonl|milestones\.jsonl|evaluation_epoch_4\.json) .*"
                                              r"nothing was copied.*--replace"):
        collect(sweep, dest)
    assert folder_digest(dest) == before


def test_replace_writes_the_refused_copies_afresh(tmp_path):
    run = write_run(tmp_path / "runs" / "mnist_planar_s0", epochs=4)
    dest = tmp_path / "results" / "x"
    collect(run, dest)
    copy = dest / "mnist_planar_s0"
    (copy / "gaps_epoch_2.json").write_text("{}")  # belonged to the run being replaced
    write_run(run, epochs=3, timing=7.0)
    collect(run, dest, replace=True)
    assert (copy / "metrics.jsonl").read_bytes() == (run / "metrics.jsonl").read_bytes()
    assert not (copy / "gaps_epoch_2.json").exists()


def test_completed_only_leaves_out_the_runs_still_training_until_they_finish(tmp_path):
    sweep = tmp_path / "sweep"
    done = write_run(sweep / "0_mnist_diag_s0", epochs=4)
    (done / "summary.json").write_text(json.dumps({"status": "completed", "epochs_trained": 4}))
    running = write_run(sweep / "1_mnist_rho_s0", epochs=2)  # summary says interrupted
    starting = sweep / "2_mnist_iaf_s0" / ".hydra"  # no epoch yet: a config and nothing else
    starting.mkdir(parents=True)
    (starting / "config.yaml").write_text("seed: 0\n")
    dest = tmp_path / "results" / "x"
    copied = collect(sweep, dest, completed_only=True)
    assert sorted(p.name for p in dest.iterdir()) == ["0_mnist_diag_s0"]
    assert dest / "0_mnist_diag_s0" / "summary.json" in copied
    (running / "summary.json").write_text(json.dumps({"status": "completed", "epochs_trained": 2}))
    collect(sweep, dest, completed_only=True)
    assert sorted(p.name for p in dest.iterdir()) == ["0_mnist_diag_s0", "1_mnist_rho_s0"]
    collect(sweep, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["0_mnist_diag_s0", "1_mnist_rho_s0", "2_mnist_iaf_s0"]


def test_the_script_with_completed_and_no_finished_run_says_so(tmp_path, capsys):
    script = load_script("collect_results")
    run = write_run(tmp_path / "runs" / "mnist_diag_s0", epochs=4)
    dest = tmp_path / "results" / "x"
    assert script.main(["--completed", str(run), str(dest)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no completed run") and "\n" not in err and not dest.exists()


def test_the_script_says_it_in_one_line_and_exits_1(tmp_path, capsys):
    script = load_script("collect_results")
    run = write_run(tmp_path / "runs" / "mnist_diag_s0", epochs=4)
    dest = tmp_path / "results" / "x"
    assert script.main([str(run), str(dest)]) == 0
    write_run(run, epochs=4, seed=1)
    assert script.main([str(run), str(dest)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "--replace" in err
    assert script.main([str(run), str(dest), "--replace"]) == 0


def edit_milestones(run: Path, change) -> None:
    """Rewrite a run's milestone records through ``change`` (a function of the list of records)."""
    rows = [json.loads(line) for line in (run / "milestones.jsonl").read_text().splitlines()]
    (run / "milestones.jsonl").write_text("".join(json.dumps(row) + "\n" for row in change(rows)))


@pytest.mark.parametrize("rerun", ["timings", "rounding", "a metric added since", "another seed", "a digit",
                                   "a metric dropped"])
def test_a_refusal_says_whether_the_source_reproduces_the_copy_and_what_replace_would_lose(tmp_path, rerun):
    run = write_run(tmp_path / "runs" / "mnist_diag_s0", epochs=4)
    if rerun == "a metric dropped":  # the copy holds a metric that the rerun does not record
        edit_milestones(run, lambda rows: [{**row, "test/kl": 25.0} for row in rows])
    dest = tmp_path / "results" / "x"
    collect(run, dest)
    (dest / "mnist_diag_s0" / "evaluation_epoch_2.json").write_text('{"test/nll": 88.0}')  # scored before the loss
    write_run(run, epochs=6, seed=1 if rerun == "another seed" else 0, timing=7.5)  # the machine changed; retrained
    if rerun in ("rounding", "a digit"):  # an epoch's mean summed in another order, or a real change
        lines = (run / "metrics.jsonl").read_text().splitlines()
        first = json.loads(lines[0])
        first["val/elbo"] *= 1 + (3e-7 if rerun == "rounding" else 1e-3)
        (run / "metrics.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    if rerun == "a metric added since":  # the rerun's code records active units at each milestone
        edit_milestones(run, lambda rows: [{**row, "test/active_units": 20} for row in rows])
    with pytest.raises(CollectConflict) as refused:
        collect(run, dest)
    message = str(refused.value)
    if rerun in ("timings", "rounding", "a metric added since"):
        besides = ", and records test/active_units besides" if rerun == "a metric added since" else ""
        assert (f"a rerun that reproduces every recorded number to float32 rounding, timings aside{besides}; "
                "--replace would lose the old timings, evaluation_epoch_2.json)") in message
    else:
        assert "(another run, or a rerun that does not reproduce it)" in message and "timings aside" not in message


@pytest.mark.parametrize("rerun", ["shorter, timings differ", "rounding", "another seed", "a digit at epoch 3",
                                   "a metric added since", "a metric added since, a digit at epoch 4"])
def test_compare_runs_checks_the_records_both_runs_hold(tmp_path, capsys, rerun):
    """A rerun stopped earlier is compared on the epochs it has; rounding and timings are no difference, a digit
    is, and the script names the first epoch and value where the runs part."""
    run = write_run(tmp_path / "committed" / "mnist_diag_s0", epochs=6)
    other = write_run(tmp_path / "rerun" / "mnist_diag_s0", epochs=4, timing=3.0,
                      seed=1 if rerun == "another seed" else 0)
    if rerun in ("rounding", "a digit at epoch 3"):
        lines = (other / "metrics.jsonl").read_text().splitlines()
        third = json.loads(lines[2])
        third["val/elbo"] *= 1 + (3e-7 if rerun == "rounding" else 1e-3)
        lines[2] = json.dumps(third)
        (other / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if rerun.startswith("a metric added since"):  # the rerun's code records active units at each milestone
        def add_units(rows: list[dict]) -> list[dict]:
            rows = [{**row, "test/active_units": 20} for row in rows]
            if rerun.endswith("epoch 4"):
                rows[1]["test/nll"] += 0.01
            return rows
        edit_milestones(other, add_units)
    status = load_script("compare_runs").main([str(other), str(run)])
    out = capsys.readouterr().out
    if rerun in ("shorter, timings differ", "rounding", "a metric added since"):
        assert status == 0
        assert "metrics.jsonl: the 4 records both hold agree" in out and "milestones.jsonl: the 2 records" in out
        assert ("recorded by one run only, not compared: test/active_units" in out) == rerun.startswith("a metric")
    elif rerun.startswith("a metric added since"):
        assert status == 1 and "milestones.jsonl: they part at epoch 4: test/nll 86.01 against 86.0" in out
    else:
        assert status == 1
        epoch = 1 if rerun == "another seed" else 3
        assert f"metrics.jsonl: they part at epoch {epoch}: val/elbo " in out


def test_the_first_difference_is_the_first_differing_value_in_the_record_not_any_of_them():
    keys = [f"test/metric_{i:02d}" for i in range(20)]
    for order in (keys, keys[::-1]):  # the same values written in two orders: each report names its own first
        one = json.dumps({"epoch": 1, "train/elbo": -90.0, **{k: 1.0 for k in order}}).encode()
        other = json.dumps({"epoch": 1, "train/elbo": -90.0, **{k: 2.0 for k in order}}).encode()
        assert first_difference(one, other) == (1, f"epoch 1: {order[0]} 1.0 against 2.0", [])


def test_compare_runs_refuses_folders_without_shared_records(tmp_path, capsys):
    run = write_run(tmp_path / "a", epochs=2)
    assert load_script("compare_runs").main([str(run), str(tmp_path / "missing")]) == 1
    assert "share no records" in capsys.readouterr().err
