"""Equal-budget tuning (rhovae.tuning, scripts/tune.py) on tiny data, in process: the loop with a pruned trial, an
interrupted study continued, the budget recorded in every study, bad input refused, and tuned runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from helpers import REPO, TINY_OVERRIDES, compose, subprocess_env
from rhovae import trainer, tuning
from rhovae.errors import ConfigError
from rhovae.results import BUDGET_KEYS


def tiny_tune(data_root, tmp_path, **changes) -> tuple[tuning.TuneConfig, str]:
    overrides = ["tune.posteriors=[diag,planar]", "tune.n_trials=3", "tune.epochs=3", "tune.startup_trials=2",
                 *(f"tune.{k}={v}" for k, v in changes.items())]
    tune_cfg = tuning.load_tune_config(overrides)
    tune_cfg.run = [f"dataset.root={data_root}", *TINY_OVERRIDES]
    tune_cfg.space = {"trainer.lr": {"type": "float", "low": 1e-5, "high": 3e-2, "log": True}}
    if "planar" in tune_cfg.posteriors:  # a key of one posterior's options: tuned for it alone
        tune_cfg.space["posterior.flow_length"] = {"type": "int", "low": 1, "high": 3}
    return tune_cfg, f"sqlite:///{tmp_path / 'studies.db'}"


def study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def states(url: str, name: str) -> list[TrialState]:
    return [t.state for t in study(url, name).get_trials(deepcopy=False)]


@pytest.mark.slow  # trains one tiny trial: seconds
def test_an_iwae_study_scores_the_bound_its_runs_train_not_the_elbo(data_root, tmp_path, monkeypatch):
    tune_cfg, url = tiny_tune(data_root, tmp_path, posteriors="[diag]", n_trials=1, epochs=2, startup_trials=1)
    tune_cfg.run.append("objective.iw_samples=4")
    scored = []
    real = trainer.evaluate_elbo

    def recording(*args, **kwargs):
        scored.append(real(*args, **kwargs))
        return scored[-1]

    monkeypatch.setattr(trainer, "evaluate_elbo", recording)
    tuning.tune(tune_cfg, url, progress=False)

    trial = study(url, "mnist-diag").trials[0]
    assert [set(s) for s in scored] == [{"elbo", "recon", "kl", "iw_bound"}] * 2
    assert list(trial.intermediate_values.values()) == [s["iw_bound"] for s in scored]
    assert all(s["iw_bound"] > s["elbo"] for s in scored)  # k = 4 is a tighter bound: the two are told apart
    assert trial.value == max(s["iw_bound"] for s in scored)


@pytest.mark.slow  # trains several tiny trials: seconds
def test_every_posterior_gets_the_same_space_and_budget_and_a_poor_trial_is_pruned(data_root, tmp_path):
    tune_cfg, url = tiny_tune(data_root, tmp_path)
    space = tuning.SearchSpace(tune_cfg.space)
    storage = tuning.make_storage(url)
    plans = {plan.name: plan for plan in tuning.planned_studies(tune_cfg)}
    diag = tuning.open_study(storage, plans["mnist-diag"], tune_cfg, space, tune_cfg.seed)
    for lr in (3e-2, 1e-2, 1e-5):  # the third learns almost nothing: below the median after its warm-up epoch
        diag.enqueue_trial({"trainer.lr": lr})
    tuning.tune(tune_cfg, url, progress=False)

    assert states(url, "mnist-diag") == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert [t.state for t in study(url, "mnist-planar").get_trials()].count(TrialState.PRUNED) <= 1
    for name in ("mnist-diag", "mnist-planar"):  # the equal budget, as stored in each study
        s = study(url, name)
        assert len(s.get_trials(states=tuning.COUNTED)) == 3
        assert s.user_attrs == tuning.study_attributes(tune_cfg, space, plans[name].config)
        assert s.user_attrs["value"] == "validation ELBO"
        assert json.loads(s.user_attrs["space"]) == tune_cfg.space
    assert set(study(url, "mnist-diag").best_params) == {"trainer.lr"}  # planar's option only where it exists
    assert set(study(url, "mnist-planar").best_params) == {"trainer.lr", "posterior.flow_length"}
    pruned = study(url, "mnist-diag").trials[2]
    assert max(pruned.intermediate_values) == 2  # reported each epoch, stopped after the second

    table = tuning.tuning_table(url, ["mnist-diag", "mnist-planar"])
    assert table["trials"].tolist() == [3, 3] and table.loc[0, "pruned"] == 1
    assert table.loc[0, "best val bound"] == pytest.approx(study(url, "mnist-diag").best_value)
    assert tuning.history_figure(url, ["mnist-diag", "mnist-planar"], tmp_path / "history.png").stat().st_size > 0


def test_an_interrupted_study_continues_and_its_interrupted_trial_never_counts(data_root, tmp_path, monkeypatch):
    tune_cfg, url = tiny_tune(data_root, tmp_path, posteriors="[diag]", epochs=1)
    real_epoch = trainer.train_one_epoch
    calls = []

    def interrupted_on_the_second_trial(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr("rhovae.trainer.train_one_epoch", interrupted_on_the_second_trial)
    with pytest.raises(KeyboardInterrupt):
        tuning.tune(tune_cfg, url, progress=False)
    assert states(url, "mnist-diag") == [TrialState.COMPLETE, TrialState.FAIL]

    monkeypatch.setattr("rhovae.trainer.train_one_epoch", real_epoch)
    tuning.tune(tune_cfg, url, progress=False)  # the same command again
    assert states(url, "mnist-diag") == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                         TrialState.COMPLETE]
    assert tuning.tuning_table(url, ["mnist-diag"]).loc[0, ["trials", "failed"]].tolist() == [3, 1]
    tuning.tune(tune_cfg, url, progress=False)  # a finished study takes no more trials
    assert len(states(url, "mnist-diag")) == 4


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_that_finds_no_slot_left_is_recorded_as_surplus_and_not_counted(data_root, tmp_path):
    tune_cfg, url = tiny_tune(data_root, tmp_path, posteriors="[diag]", n_trials=2)
    space = tuning.SearchSpace(tune_cfg.space)
    plan = tuning.planned_studies(tune_cfg)[0]
    s = tuning.open_study(tuning.make_storage(url), plan, tune_cfg, space, 0)
    s.ask(), s.ask()  # two trials running in other workers hold both slots
    s.optimize(tuning.Objective(tune_cfg, space, plan), n_trials=1)
    last = s.trials[-1]
    assert last.state == TrialState.FAIL and last.user_attrs == {"surplus": True}


@pytest.mark.parametrize("change,message", [
    ({"trainer.lr_typo": {"low": 1e-4, "high": 1e-3}}, r"tune.space has trainer.lr_typo, which no run"),
    ({"trainer.lr": {"low": 1e-3, "high": 1e-3}}, r"tune.space.trainer.lr: the range low=0.001, high=0.001 is empty"),
    ({"trainer.lr": {"type": "grid", "low": 1, "high": 2}}, r"tune.space.trainer.lr.type='grid' is not valid"),
])
def test_a_bad_search_space_is_one_line_and_writes_nothing(data_root, tmp_path, change, message):
    tune_cfg, url = tiny_tune(data_root, tmp_path)
    tune_cfg.space = change
    with pytest.raises(ConfigError, match=message):
        tuning.tune(tune_cfg, url, progress=False)
    assert not (tmp_path / "studies.db").exists()


def test_one_field_of_the_search_space_is_set_from_the_command_line():
    """The space's keys are dotted run keys: tune.space.trainer.kl_warmup_epochs.high=10 widens that range and keeps its
    other fields; a key new to the space is added; a field that is none of the accepted ones is one line."""
    default = tuning.load_tune_config([]).space
    space = tuning.load_tune_config(["tune.space.trainer.kl_warmup_epochs.high=10", "tune.space.objective.beta.low=0.5",
                                     "tune.space.objective.beta.high=2"]).space
    assert space["trainer.kl_warmup_epochs"] == {**default["trainer.kl_warmup_epochs"], "high": 10}
    assert space["objective.beta"] == {"low": 0.5, "high": 2} and "trainer" not in space
    assert {k: v for k, v in space.items() if k not in ("trainer.kl_warmup_epochs", "objective.beta")} == {
        k: v for k, v in default.items() if k != "trainer.kl_warmup_epochs"}
    with pytest.raises(ConfigError, match=r"^tune.space.trainer.lr.hgh: expected tune.space.<run key>.<field> with a "
                                          r"field of type, low, high, log, choices$"):
        tuning.load_tune_config(["tune.space.trainer.lr.hgh=3"])


def test_a_study_made_with_another_space_is_refused_and_left_unchanged(data_root, tmp_path):
    tune_cfg, url = tiny_tune(data_root, tmp_path, posteriors="[diag]", n_trials=1, epochs=1)
    tuning.tune(tune_cfg, url, progress=False)
    before = (tmp_path / "studies.db").read_bytes()
    tune_cfg.space = {"trainer.lr": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}}
    with pytest.raises(ConfigError, match=r"study mnist-diag in .* was made with a different space; nothing was "):
        tuning.tune(tune_cfg, url, progress=False)
    assert (tmp_path / "studies.db").read_bytes() == before
    with pytest.raises(ConfigError, match=r"tune.n_trial is not a tuning key; accepted: tune.name, "):
        tuning.load_tune_config(["tune.n_trial=3"])
    with pytest.raises(ConfigError, match=r"tune.pruner='hyperband' is not valid; accepted: median, halving"):
        tuning.load_tune_config(["tune.pruner=hyperband"])
    with pytest.raises(ConfigError, match=r"tune.posteriors has 'nope'; accepted: diag, "):
        tuning.load_tune_config(["tune.posteriors=[diag,nope]"])
    tune_cfg.run.append("trainer.lrr=1")
    with pytest.raises(ConfigError, match=r"trainer.lrr is not a key of the configuration; did you mean trainer.lr\?"):
        tuning.tune(tune_cfg, url, progress=False)
    assert (tmp_path / "studies.db").read_bytes() == before


@pytest.mark.slow  # trains several tiny trials: seconds
def test_a_tuned_run_takes_its_studys_best_settings(data_root, tmp_path):
    tune_cfg, url = tiny_tune(data_root, tmp_path, n_trials=2, epochs=1)
    tuning.tune(tune_cfg, url, progress=False)
    database = tmp_path / "studies.db"
    for posterior in ("diag", "planar"):
        cfg = compose([f"dataset.root={data_root}", *TINY_OVERRIDES, f"posterior={posterior}", f"tuned={database}"])
        applied = tuning.apply_tuned(cfg, given=[])
        assert applied == study(url, f"mnist-{posterior}").best_params
        assert cfg.trainer.lr == applied["trainer.lr"]
        if posterior == "planar":
            assert cfg.posterior.flow_length == applied["posterior.flow_length"]
    cfg = compose([f"dataset.root={data_root}", *TINY_OVERRIDES, "trainer.lr=0.01", f"tuned={database}"])
    with pytest.raises(ConfigError, match=r"trainer.lr set on the command line and by tuned="):
        tuning.apply_tuned(cfg, given=["trainer.lr"])
    fmnist = compose([f"dataset.root={data_root}", "dataset=fmnist", f"tuned={database}"])
    with pytest.raises(ConfigError, match=r"has no study fmnist-diag; it has mnist-diag, mnist-planar"):
        tuning.apply_tuned(fmnist, given=[])
    with pytest.raises(ConfigError, match=r"tuned='nowhere.db': no study database there"):
        tuning.apply_tuned(compose(["tuned=nowhere.db"]), given=[])
    assert "config.tuned" in BUDGET_KEYS  # the results table says which runs were tuned, and from which database


def tune_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "tune.py"), *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # scripts/tune.py in a subprocess, two tiny trials
def test_the_default_space_fits_posteriors_without_its_options_and_a_given_key_for_none_is_refused(data_root,
                                                                                                   tmp_path):
    """``tune.posteriors=[diag,rho]`` with the default space, whose posterior.flow_length only flows have: both
    studies run and neither samples flow_length. The same key set on the command line is refused in one line."""
    run = [f"dataset.root={data_root}", *TINY_OVERRIDES]
    common = ["tune.posteriors=[diag,rho]", "tune.n_trials=1", "tune.epochs=1", f"tune.storage=sqlite:///{tmp_path}/a.db"]
    done = tune_command(*common, *run)
    assert done.returncode == 0, done.stderr[-2000:]
    url = f"sqlite:///{tmp_path}/a.db"
    for name in ("mnist-diag", "mnist-rho"):
        assert set(study(url, name).trials[0].params) == {"trainer.lr", "trainer.kl_warmup_epochs"}
    refused = tune_command(*common[:-1], f"tune.storage=sqlite:///{tmp_path}/b.db",
                           "tune.space.posterior.flow_length.high=8", *run)
    assert refused.returncode == 1 and refused.stderr == (
        "error: tune.space has posterior.flow_length, which no run of these posteriors has; accepted: trainer.*, "
        "objective.*, posterior.<option> and other run keys\n")
    assert not (tmp_path / "b.db").exists()


@pytest.mark.slow  # scripts/tune.py in a subprocess
def test_a_study_recorded_without_its_value_reads_as_the_elbo_and_refuses_another_bound(data_root, tmp_path):
    """A study made before the trial's value was part of the recorded budget (an IWAE study then stored ELBO values):
    continuing it with objective.iw_samples=5 is refused in one line and changes nothing; the ELBO one continues."""
    run = [f"dataset.root={data_root}", *TINY_OVERRIDES]
    for k, name in ((1, "elbo"), (5, "iwae")):
        tune_cfg = tuning.load_tune_config(["tune.posteriors=[diag]", "tune.n_trials=1", "tune.epochs=1"])
        tune_cfg.run = [*tune_cfg.run, *run, *([f"objective.iw_samples={k}"] if k > 1 else [])]
        plan = tuning.planned_studies(tune_cfg)[0]
        old = {key: value for key, value in tuning.study_attributes(
            tune_cfg, tuning.SearchSpace(tune_cfg.space), plan.config).items() if key != "value"}
        url = f"sqlite:///{tmp_path}/{name}.db"
        made = optuna.create_study(study_name="mnist-diag", storage=url, direction="maximize")
        for key, value in old.items():
            made.set_user_attr(key, value)
    before = (tmp_path / "iwae.db").read_bytes()
    refused = tune_command("tune.posteriors=[diag]", "tune.n_trials=1", "tune.epochs=1",
                           f"tune.storage=sqlite:///{tmp_path}/iwae.db", *run, "objective.iw_samples=5")
    assert refused.returncode == 1 and refused.stderr.startswith("error: study mnist-diag in ") and \
        "was made with a different value; nothing was changed" in refused.stderr and refused.stderr.count("\n") == 1
    assert (tmp_path / "iwae.db").read_bytes() == before
    done = tune_command("tune.posteriors=[diag]", "tune.n_trials=1", "tune.epochs=1",
                        f"tune.storage=sqlite:///{tmp_path}/elbo.db", *run)
    assert done.returncode == 0, done.stderr[-2000:]
    continued = study(f"sqlite:///{tmp_path}/elbo.db", "mnist-diag")
    assert continued.user_attrs["value"] == "validation ELBO" and len(continued.trials) == 1


@pytest.mark.slow  # scripts/tune.py with two submitit workers in separate processes
def test_workers_through_submitit_share_a_journal_file_and_keep_the_exact_budget(data_root, tmp_path):
    """``tune.launcher=submitit_local``: two workers submitted through submitit's local executor (real separate
    processes, as SLURM jobs would be) run one study against an Optuna journal file: exactly n_trials are counted."""
    journal = tmp_path / "cluster.journal"
    done = tune_command("tune.launcher=submitit_local", "tune.n_jobs=2", "tune.posteriors=[diag]", "tune.n_trials=3",
                        "tune.epochs=1", "tune.startup_trials=1", f"tune.storage={journal}", f"dataset.root={data_root}",
                        *TINY_OVERRIDES)
    assert done.returncode == 0, done.stderr[-3000:]
    s = optuna.load_study(study_name="mnist-diag", storage=tuning.make_storage(str(journal)))
    assert len(s.get_trials(states=tuning.COUNTED)) == 3 and s.user_attrs["value"] == "validation ELBO"
    logs = list((tmp_path / "cluster_workers").glob("*_log.out"))
    assert len(logs) == 2  # one per submitted worker
    assert (tmp_path / "cluster.md").is_file()  # the table beside the storage


def test_a_killed_workers_trial_in_a_journal_study_is_failed_and_its_parameters_run_again(data_root, tmp_path):
    """A journal file has no heartbeat: a running trial that stopped reporting (its worker was killed) is failed
    when the next trial starts, its parameters run again, and the budget still counts exactly n_trials."""
    tune_cfg, _ = tiny_tune(data_root, tmp_path, posteriors="[diag]", n_trials=2, epochs=1)
    url = str(tmp_path / "studies.journal")
    space = tuning.SearchSpace(tune_cfg.space)
    plan = tuning.planned_studies(tune_cfg)[0]
    s = tuning.open_study(tuning.make_storage(url), plan, tune_cfg, space, 0)
    killed = s.ask()
    lr = killed.suggest_float("trainer.lr", 1e-5, 3e-2, log=True)
    killed.set_user_attr("alive_at", time.time() - 2 * tuning.STALE_AFTER_S)
    tuning.tune(tune_cfg, url, progress=False)

    trials = tuning.load_study(url, "mnist-diag").get_trials()
    assert trials[0].state == TrialState.FAIL
    counted = [t for t in trials if t.state in tuning.COUNTED]
    assert len(counted) == 2
    retried = [t for t in counted if t.user_attrs.get("retry_of") == 0]
    assert len(retried) == 1 and retried[0].params["trainer.lr"] == lr
