"""Equal-budget tuning: one Optuna study per (dataset, posterior), each with the same search space, number of trials,
epochs per trial, sampler and pruner, in one study database (``scripts/tune.py`` is the command).

* ``TuneConfig`` and ``load_tune_config``: the typed ``tune.*`` settings, from ``configs/tune/default.yaml`` and the
  command line; ``SearchSpace`` checks the space (known keys, non-empty ranges) before anything is written.
* ``tune``: the studies, run by ``tune.n_jobs`` worker processes. A trial composes its run config with Hydra's
  compose API from ``configs/`` (as ``train.py`` does, plus the sampled values), trains with the project's own
  ``train_one_epoch`` and reports the validation bound after each epoch, so that the pruner can stop it; its value
  is the best validation bound (never a test number): the bound the run trains and picks its checkpoint by
  (``rhovae.trainer.selection_bound``), the ELBO, or the k-sample bound of an IWAE run. A trial whose loss turns
  non-finite is pruned: it used its share of the budget.
* The budget is exact: a study takes trials until ``n_trials`` of them are complete or pruned. Each trial claims a
  slot when it starts (trials are numbered by the database, so two workers never both take the last one); a
  trial that finds no slot left is recorded as failed and marked ``surplus``. A trial interrupted by Ctrl-C is
  recorded as failed, one whose process was killed is failed by the storage's heartbeat once it goes stale and
  run again with the same parameters (``RetryHeartbeatStaleTrialCallback``); failed trials never count.
* ``best_settings`` and ``apply_tuned``: a study's best parameters, and a run config with them applied
  (``python train.py ... tuned=<database>``).
* ``tuning_table`` and ``history_figure``: what ``scripts/tune.py`` shows at the end.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import optuna
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from .errors import ConfigError

log = logging.getLogger(__name__)

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)  # trials that used their share of the budget
PRUNERS = ("median", "halving")
LAUNCHERS = ("local", "slurm", "submitit_local")
JOURNAL_SUFFIX = ".journal"
STALE_AFTER_S = 600  # a running trial of a journal study not seen alive for this long was killed: failed and retried
SPACE_TYPES = ("float", "int", "categorical")
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class TuneConfig:
    """``tune.*``: which studies, their budget and where they are stored (``configs/tune/default.yaml``)."""

    name: str = "tune"  # the database file outputs/tune/<name>.db, unless storage is given
    posteriors: list[str] = field(default_factory=lambda: ["diag", "rho", "fullcov", "planar", "iaf"])
    datasets: list[str] = field(default_factory=lambda: ["mnist"])
    n_trials: int = 12  # complete or pruned trials per study
    epochs: int = 5  # training epochs per trial
    n_jobs: int = 1  # worker processes (each one CPU thread unless trainer.threads says otherwise)
    # where the workers run: local (processes on this machine), slurm (one SLURM job per worker, through submitit),
    # submitit_local (submitit's local executor: separate processes as on a cluster, for trying a set-up out)
    launcher: str = "local"
    # submitit's executor parameters for the slurm launcher (timeout_min and cpus_per_task for submitit_local too)
    slurm: dict[str, Any] = field(default_factory=lambda: {"partition": None, "timeout_min": 240, "cpus_per_task": 1,
                                                           "mem_gb": 8})
    # an SQLAlchemy URL or a journal file (a path ending in .journal); None = outputs/tune/<name>.db with the local
    # launcher, outputs/tune/<name>.journal with the others (SQLite is unsafe on a shared network file system)
    storage: str | None = None
    seed: int = 0  # TPE's seed (worker i uses seed + i)
    pruner: str = "median"  # median | halving (successive halving), the same for every study
    startup_trials: int = 3  # trials before TPE and the median pruner act
    run: list[str] = field(default_factory=list)  # run overrides every trial starts from (e.g. experiment=...)
    # key -> {type: float | int | categorical, low, high, log, choices}; keys a posterior lacks are skipped for it
    space: dict[str, Any] = field(default_factory=dict)


def load_tune_config(tune_overrides: Sequence[str], path: Path = CONFIG_DIR / "tune" / "default.yaml") -> TuneConfig:
    """``configs/tune/default.yaml`` with ``tune.<key>=value`` overrides, typed (one-line errors on bad keys)."""
    cfg = OmegaConf.merge(OmegaConf.structured(TuneConfig), OmegaConf.load(path))
    for override in tune_overrides:
        key, _, value = override.partition("=")
        key = key.removeprefix("tune.")
        if key.startswith("space."):
            set_space_field(cfg, key.removeprefix("space."), value)
            continue
        if key.split(".")[0] not in cfg:
            raise ConfigError(f"tune.{key} is not a tuning key; accepted: "
                              + ", ".join(f"tune.{k}" for k in cfg))
        try:
            OmegaConf.update(cfg, key, OmegaConf.from_dotlist([f"v={value}"]).v, merge=False)
        except Exception as err:  # noqa: BLE001 - OmegaConf's validation errors say what is wrong in one line
            raise ConfigError(f"tune.{key}={value!r} is not valid: {str(err).splitlines()[0]}") from None
    tune_cfg: TuneConfig = OmegaConf.to_object(cfg)
    if tune_cfg.pruner not in PRUNERS:
        raise ConfigError(f"tune.pruner={tune_cfg.pruner!r} is not valid; accepted: {', '.join(PRUNERS)}")
    if tune_cfg.launcher not in LAUNCHERS:
        raise ConfigError(f"tune.launcher={tune_cfg.launcher!r} is not valid; accepted: {', '.join(LAUNCHERS)}")
    for key, least in (("n_trials", 1), ("epochs", 1), ("n_jobs", 1), ("startup_trials", 0)):
        if getattr(tune_cfg, key) < least:
            raise ConfigError(f"tune.{key}={getattr(tune_cfg, key)} is not valid; accepted: an integer >= {least}")
    if not tune_cfg.posteriors or not tune_cfg.datasets:
        raise ConfigError("tune.posteriors and tune.datasets must each name at least one option")
    from .data import DATASETS
    from .posteriors import POSTERIORS

    for key, names, known in (("posteriors", tune_cfg.posteriors, [*POSTERIORS, *POSTERIORS.settings]),
                              ("datasets", tune_cfg.datasets, list(DATASETS))):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(f"tune.{key} has {', '.join(map(repr, unknown))}; accepted: {', '.join(sorted(known))}")
    return tune_cfg


SPACE_FIELDS = ("type", "low", "high", "log", "choices")


def set_space_field(cfg: DictConfig, path: str, value: str) -> None:
    """``tune.space.<run key>.<field>=value``: the space's keys are dotted run keys (``trainer.kl_warmup_epochs``), so
    the last component is the field (``high``) and the rest the key, which may be new to the space."""
    key, _, spec_field = path.rpartition(".")
    if not key or spec_field not in SPACE_FIELDS:
        raise ConfigError(f"tune.space.{path}: expected tune.space.<run key>.<field> with a field of "
                          f"{', '.join(SPACE_FIELDS)}")
    parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={value}"]))["v"]
    spec = dict(cfg.space.get(key, {}))
    cfg.space[key] = {**spec, spec_field: parsed}


def storage_url(tune_cfg: TuneConfig, root: Path) -> str:
    """The studies' storage: ``tune.storage``, or ``<root>/outputs/tune/<name>.db`` (SQLite) with the local launcher
    and ``<root>/outputs/tune/<name>.journal`` (Optuna's journal file, safe on a shared file system) with the
    others."""
    if tune_cfg.storage:
        return tune_cfg.storage if is_journal(tune_cfg.storage) or "://" in tune_cfg.storage else \
            str(Path(tune_cfg.storage).expanduser().resolve())
    folder = (root / "outputs" / "tune").resolve()
    if tune_cfg.launcher == "local":
        return f"sqlite:///{folder / f'{tune_cfg.name}.db'}"
    return str(folder / f"{tune_cfg.name}{JOURNAL_SUFFIX}")


def is_journal(url: str) -> bool:
    return "://" not in url and url.endswith(JOURNAL_SUFFIX)


def database_url(path_or_url: str) -> str:
    """An SQLAlchemy URL or a journal file as given, or a path to an SQLite study database as its URL
    (``tuned=outputs/tune/x.db``)."""
    if "://" in path_or_url:
        return path_or_url
    path = Path(path_or_url).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"tuned={path_or_url!r}: no study database there; accepted: a file written by "
                          f"scripts/tune.py (outputs/tune/<name>.db or .journal) or an SQLAlchemy URL")
    return str(path) if is_journal(str(path)) else f"sqlite:///{path}"


def study_name(dataset: str, method: str) -> str:
    return f"{dataset}-{method}"


# ---- the search space --------------------------------------------------------------------------------------


class SearchSpace:
    """The keys to tune and their ranges, checked against the run config each posterior composes to."""

    def __init__(self, space: Mapping[str, Mapping[str, Any]]):
        if not space:
            raise ConfigError("tune.space is empty; accepted: at least one key with a range "
                              "(configs/tune/default.yaml)")
        self.space = {key: dict(spec) for key, spec in space.items()}
        for key, spec in self.space.items():
            kind = spec.get("type", "float")
            if kind not in SPACE_TYPES:
                raise ConfigError(f"tune.space.{key}.type={kind!r} is not valid; accepted: {', '.join(SPACE_TYPES)}")
            if kind == "categorical":
                if not spec.get("choices"):
                    raise ConfigError(f"tune.space.{key}: an empty list of choices; accepted: one value or more")
            elif not (spec.get("low") is not None and spec.get("high") is not None and spec["low"] < spec["high"]):
                raise ConfigError(f"tune.space.{key}: the range low={spec.get('low')!r}, high={spec.get('high')!r} "
                                  f"is empty; accepted: low < high")
            elif spec.get("log") and spec["low"] <= 0:
                raise ConfigError(f"tune.space.{key}: a log range needs low > 0, not {spec['low']!r}")

    def keys_for(self, run_cfg: DictConfig) -> list[str]:
        """The keys of the space that this run config has (a posterior's options exist only for that posterior)."""
        return [key for key in self.space if OmegaConf.select(run_cfg, key, default=_ABSENT) is not _ABSENT]

    def check_keys(self, configs: Sequence[DictConfig], defaults: Mapping[str, Any]) -> None:
        """Refuse keys that no composed run config has: a typo, or a key the command line set (differing from the
        ``defaults`` space) for an option no posterior being tuned has. A key of the default space that is an option
        of other posteriors (``posterior.flow_length`` when only diag and rho are tuned) is left out with a log line."""
        from .posteriors import POSTERIORS

        known = {key for cfg in configs for key in self.keys_for(cfg)}
        options = {f"posterior.{o}" for name in POSTERIORS for o in POSTERIORS.defaults(name)}
        unused = [key for key in self.space if key not in known]
        unknown = [key for key in unused if self.space[key] != defaults.get(key) or key not in options]
        if unknown:
            raise ConfigError(f"tune.space has {', '.join(unknown)}, which no run of these posteriors has; "
                              f"accepted: trainer.*, objective.*, posterior.<option> and other run keys")
        for key in unused:
            log.info("tune.space's %s is an option of none of the posteriors tuned here: left out", key)

    def suggest(self, trial: optuna.Trial, keys: Sequence[str]) -> dict[str, Any]:
        values = {}
        for key in keys:
            spec = self.space[key]
            kind = spec.get("type", "float")
            if kind == "categorical":
                values[key] = trial.suggest_categorical(key, list(spec["choices"]))
            elif kind == "int":
                values[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
            else:
                values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]),
                                                  log=bool(spec.get("log")))
        return values

    def as_json(self) -> str:
        return json.dumps(self.space, sort_keys=True)


_ABSENT = object()


# ---- studies -----------------------------------------------------------------------------------------------


def compose_run(overrides: Sequence[str]) -> DictConfig:
    """A run config composed from ``configs/`` exactly as ``train.py`` composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .config.hydra_run import check_override_keys  # importing it registers the typed schema and the components

    check_override_keys(overrides)  # a typo is named with the closest known key, before Hydra composes
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        try:
            return compose("config", overrides=list(overrides))
        except (HydraException, OmegaConfBaseException) as err:
            raise ConfigError(f"the run overrides {' '.join(overrides)} do not compose: "
                              f"{str(err).splitlines()[0]}") from None


# What a trial's value was in every study recorded before the value was part of the budget: tuning then reported
# the validation ELBO whatever the objective.
LEGACY_VALUE = "validation ELBO"


def trial_value(run_config: DictConfig) -> str:
    """What a trial's value is for runs composed to ``run_config``: the best validation value of the bound the run
    trains (``rhovae.trainer.selection_bound``): the ELBO, or the k-sample IWAE bound."""
    k = int(run_config.objective.iw_samples)
    return LEGACY_VALUE if k == 1 else f"validation IWAE bound, k = {k}"


def study_attributes(tune_cfg: TuneConfig, space: SearchSpace, run_config: DictConfig) -> dict[str, Any]:
    """What makes two studies' budgets equal, and what their values mean: recorded in each study, checked when a
    study is continued."""
    return {"space": space.as_json(), "epochs": tune_cfg.epochs, "pruner": tune_cfg.pruner,
            "startup_trials": tune_cfg.startup_trials, "run": json.dumps(list(tune_cfg.run)),
            "value": trial_value(run_config)}


def make_storage(url: str) -> optuna.storages.BaseStorage:
    """The studies' storage. A database (RDB) fails a trial whose process died after 60 s without a heartbeat and
    runs it again; a journal file has no heartbeat, so ``retry_stale_trials`` does the same from the time each trial
    last reported (``alive_at``)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():  # the heartbeat is marked experimental; it is what the budget relies on
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if is_journal(url):
            from optuna.storages.journal import JournalFileBackend

            Path(url).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(url))
        return optuna.storages.RDBStorage(url, heartbeat_interval=20, grace_period=60,
                                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))


def existing_studies(url: str) -> set[str]:
    """The names of the studies in ``url`` (none where nothing was written yet)."""
    if is_journal(url) and not Path(url).is_file():
        return set()
    try:
        return set(optuna.get_all_study_names(make_storage(url)))
    except Exception:  # noqa: BLE001 - a database that does not exist yet holds no study
        return set()


def load_study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=make_storage(url))


def retry_stale_trials(study: optuna.Study, stale_after: float = STALE_AFTER_S) -> list[int]:
    """For a storage without a heartbeat (a journal file): fail every running trial that has not reported for
    ``stale_after`` seconds (its worker was killed) and queue its parameters again, as Optuna's
    ``RetryHeartbeatStaleTrialCallback`` does for a database. Returns the failed trials' numbers."""
    if isinstance(study._storage, optuna.storages.RDBStorage):
        return []  # the heartbeat does it
    now = time.time()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        seen = trial.user_attrs.get("alive_at", trial.datetime_start.timestamp() if trial.datetime_start else now)
        if now - seen <= stale_after:
            continue
        try:
            changed = study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except RuntimeError:  # optuna's UpdateFinishedTrialError among them
            changed = False  # another worker failed it first, or it finished meanwhile
        if changed:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            failed.append(trial.number)
    return failed


def make_pruner(tune_cfg: TuneConfig) -> optuna.pruners.BasePruner:
    if tune_cfg.pruner == "median":
        # steps are epochs from 1: a trial can be stopped from its second epoch on, below the median of the others
        return optuna.pruners.MedianPruner(n_startup_trials=tune_cfg.startup_trials, n_warmup_steps=2)
    return optuna.pruners.SuccessiveHalvingPruner()


def open_study(storage, plan: "PlannedStudy", tune_cfg: TuneConfig, space: SearchSpace, seed: int,
               url: str | None = None) -> optuna.Study:
    """The study of ``plan``, created with this budget or continued if its recorded budget is the same (a study
    recorded before a key of the budget existed gets that key once it is found to agree)."""
    study = optuna.create_study(study_name=plan.name, storage=storage, direction="maximize", load_if_exists=True,
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=tune_cfg.startup_trials,
                                                                   constant_liar=True),
                                pruner=make_pruner(tune_cfg))
    wanted = study_attributes(tune_cfg, space, plan.config)
    if study.user_attrs:
        check_budget(plan.name, study.user_attrs, wanted, url or storage.url)
    for key, value in wanted.items():
        if key not in study.user_attrs:
            study.set_user_attr(key, value)
    return study


def check_budget(name: str, recorded: Mapping[str, Any], wanted: Mapping[str, Any], url: str) -> None:
    """Refuse to continue a study whose recorded budget (``study_attributes``) is not this command's; a study that
    recorded no ``value`` reported the validation ELBO (``LEGACY_VALUE``)."""
    recorded = {"value": LEGACY_VALUE, **recorded}
    differ = [k for k in wanted if recorded.get(k) != wanted[k]]
    if differ:
        raise ConfigError(f"study {name} in {url} was made with a different {', '.join(differ)}; nothing was "
                          f"changed. Use another tune.name (or tune.storage) for a new search")


def counted_trials(study: optuna.Study, states=COUNTED) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=states)


@dataclass
class PlannedStudy:
    """One (dataset, posterior) of a search: the run overrides its trials start from, the run config they compose
    to (before the sampled values), and the study's name, ``<dataset>-<method label>`` (what ``tuned=`` looks up)."""

    overrides: list[str]
    config: DictConfig
    name: str


def planned_studies(tune_cfg: TuneConfig) -> list[PlannedStudy]:
    """Every study of ``tune_cfg`` in order (datasets, then posteriors), each run config composed once."""
    from .posteriors import posterior_label

    plans = []
    for dataset in tune_cfg.datasets:
        for posterior in tune_cfg.posteriors:
            overrides = [*tune_cfg.run, f"dataset={dataset}", f"posterior={posterior}"]
            config = compose_run(overrides)
            method = posterior_label(OmegaConf.to_container(config.posterior, resolve=True))
            plans.append(PlannedStudy(overrides, config, study_name(dataset, method)))
    return plans


class Objective:
    """One trial: compose, train ``epochs`` epochs with the project's training code, report the validation bound the
    run trains (the ELBO, or the IWAE bound when ``objective.iw_samples`` > 1)."""

    def __init__(self, tune_cfg: TuneConfig, space: SearchSpace, plan: PlannedStudy):
        self.tune_cfg, self.space = tune_cfg, space
        self.base = [*plan.overrides, f"trainer.epochs={tune_cfg.epochs}", "trainer.patience=null",
                     "trainer.progress=false", "logger=none"]
        self.keys = space.keys_for(plan.config)

    def __call__(self, trial: optuna.Trial) -> float:
        from .config import load_config, validate_config
        from .experiment import prepare
        from .trainer import (NonFiniteLossError, TrainState, configured_optimizer, selection_bound, train_one_epoch,
                              validation_metrics)

        retry_stale_trials(trial.study)  # a killed worker's trial frees its slot (journal storage; RDB: heartbeat)
        slots = sorted(t.number for t in trial.study.get_trials(deepcopy=False, states=(*COUNTED, TrialState.RUNNING)))
        if trial.number not in slots[:self.tune_cfg.n_trials]:  # another worker took the last slot
            trial.set_user_attr("surplus", True)
            trial.study.stop()
            return math.nan  # recorded as failed, never counted
        trial.set_user_attr("alive_at", time.time())
        values = self.space.suggest(trial, self.keys)
        config = load_config(compose_run([*self.base, *(f"{k}={v}" for k, v in values.items())]))
        device = validate_config(config)
        data, model = prepare(config, device)
        optimizer = configured_optimizer(model, config.trainer)
        state = TrainState()
        data_rng = torch.Generator(device=device).manual_seed(config.seed)
        best = -math.inf
        for epoch in range(1, self.tune_cfg.epochs + 1):
            try:
                train_one_epoch(model, optimizer, data, config.trainer, config.objective, state, data_rng)
            except NonFiniteLossError as err:
                trial.set_user_attr("pruned_because", str(err))
                raise optuna.TrialPruned(str(err)) from None
            state.epoch = epoch
            val = selection_bound(validation_metrics(model, data, config))
            best = max(best, val)
            trial.report(val, epoch)
            trial.set_user_attr("alive_at", time.time())
            if trial.should_prune():
                raise optuna.TrialPruned(f"val bound {val:.2f} at epoch {epoch}")
        return best


def finished_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str | None:
    """The log line of a finished trial: its number, state, value and parameters."""
    if trial.user_attrs.get("surplus"):
        return None
    value = trial.value if trial.state == TrialState.COMPLETE else (
        max(trial.intermediate_values.values()) if trial.intermediate_values else math.nan)
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
    state = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned"}.get(trial.state, trial.state.name.lower())
    return f"{study.study_name} trial {trial.number}: {state}, best val bound {value:.2f} ({params})"


def run_study(study: optuna.Study, objective: Objective, n_trials: int, progress: bool) -> None:
    """Trials until ``n_trials`` are complete or pruned (a no-op for a finished study)."""
    from tqdm import tqdm

    done = len(counted_trials(study))
    if done >= n_trials:
        return
    bar = tqdm(total=n_trials, initial=done, desc=study.study_name, unit="trial", disable=not progress,
               dynamic_ncols=True, leave=False)

    def after(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        line = finished_line(study, trial)
        if line:
            (bar.write if progress else log.info)(line)
        bar.n = len(counted_trials(study))
        bar.refresh()
        if bar.n >= n_trials:
            study.stop()

    try:
        study.optimize(objective, callbacks=[after], catch=())
    finally:
        bar.close()


def worker(tune_cfg: TuneConfig, plans: Sequence[PlannedStudy], url: str, index: int, threads: int | None,
           progress: bool) -> None:
    """One worker process: every study in order, each until its budget is used (workers share studies)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # finished_line reports every trial, failed ones too
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][tune] %(message)s")
    torch.set_num_threads(threads or 1)
    space = SearchSpace(tune_cfg.space)
    storage = make_storage(url)
    for plan in plans:
        study = open_study(storage, plan, tune_cfg, space, tune_cfg.seed + index, url)
        run_study(study, Objective(tune_cfg, space, plan), tune_cfg.n_trials, progress)


def check_tuning(tune_cfg: TuneConfig, url: str, plans: Sequence[PlannedStudy]) -> None:
    """Everything a tuning command could refuse, checked before any study is created or changed: the space against
    the composed configs, and the budget recorded in studies that already exist."""
    space = SearchSpace(tune_cfg.space)
    space.check_keys([plan.config for plan in plans], load_tune_config([]).space)
    existing = existing_studies(url)
    for plan in plans:
        if plan.name in existing:
            check_budget(plan.name, load_study(url, plan.name).user_attrs,
                         study_attributes(tune_cfg, space, plan.config), url)


def tune(tune_cfg: TuneConfig, url: str, threads: int | None = None, progress: bool = True) -> list[str]:
    """Run every study to its budget with ``tune.n_jobs`` worker processes (one in this process when 1); return the
    studies' names."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plans = planned_studies(tune_cfg)
    check_tuning(tune_cfg, url, plans)
    storage, space = make_storage(url), SearchSpace(tune_cfg.space)
    for plan in plans:  # every study and its budget record exist before workers race to make them
        open_study(storage, plan, tune_cfg, space, tune_cfg.seed, url)
    if tune_cfg.launcher != "local":
        run_on_submitit(tune_cfg, plans, url, threads)
    elif tune_cfg.n_jobs == 1:
        worker(tune_cfg, plans, url, 0, threads, progress)
    else:
        from joblib import Parallel, delayed

        Parallel(n_jobs=tune_cfg.n_jobs, backend="loky")(
            delayed(worker)(tune_cfg, plans, url, i, threads, progress and i == 0) for i in range(tune_cfg.n_jobs))
    return [plan.name for plan in plans]


def submitit_folder(url: str) -> Path:
    """Where submitit keeps the workers' pickles and logs: beside the storage (which a cluster's nodes share)."""
    base = Path(url.removeprefix("sqlite:///")) if is_journal(url) or url.startswith("sqlite:///") else Path.cwd()
    return base.with_name(f"{base.stem}_workers") if base.suffix else base / "tune_workers"


def run_on_submitit(tune_cfg: TuneConfig, plans: Sequence[PlannedStudy], url: str, threads: int | None) -> None:
    """``tune.n_jobs`` workers as submitit jobs (SLURM, or submitit's local executor), each running every study as a
    local worker does; waits for all of them and raises the first worker's error, if any."""
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"tune.launcher={tune_cfg.launcher} needs submitit, which is not installed; accepted here: "
                          "tune.launcher=local (or pip install -e '.[slurm]')") from None
    folder = submitit_folder(url)
    params = {k: v for k, v in tune_cfg.slurm.items() if v is not None}
    if tune_cfg.launcher == "slurm":
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        executor.update_parameters(**{("slurm_partition" if k == "partition" else k): v for k, v in params.items()})
    else:
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(**{k: v for k, v in params.items() if k in ("timeout_min", "cpus_per_task")})
    with executor.batch():
        jobs = [executor.submit(worker, tune_cfg, list(plans), url, i, threads, False) for i in range(tune_cfg.n_jobs)]
    log.info("%d tuning workers submitted (%s): %s; logs in %s", len(jobs), tune_cfg.launcher,
             ", ".join(str(j.job_id) for j in jobs), folder)
    for job in jobs:
        job.result()


# ---- results -----------------------------------------------------------------------------------------------


def tuning_table(url: str, names: Sequence[str] | None = None) -> pd.DataFrame:
    """Per study: best parameters and value, trials complete, pruned and failed, and wall time."""
    rows = []
    for name in names or sorted(existing_studies(url)):
        study = load_study(url, name)
        trials = study.get_trials(deepcopy=False)
        counted = [t for t in trials if t.state in COUNTED]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        starts = [t.datetime_start for t in counted if t.datetime_start]
        ends = [t.datetime_complete for t in counted if t.datetime_complete]
        best = max(complete, key=lambda t: t.value, default=None)
        rows.append({
            "study": name, "best val bound": best.value if best else math.nan,
            "best parameters": ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in best.params.items()) if best else "",
            "trials": len(counted), "complete": len(complete), "pruned": len(counted) - len(complete),
            "failed": sum(t.state == TrialState.FAIL and not t.user_attrs.get("surplus") for t in trials),
            "epochs per trial": study.user_attrs.get("epochs"),
            "trial minutes": sum((e - s).total_seconds() for s, e in
                                 ((t.datetime_start, t.datetime_complete) for t in counted) if s and e) / 60,
            "wall minutes": (max(ends) - min(starts)).total_seconds() / 60 if starts and ends else math.nan,
        })
    return pd.DataFrame(rows)


def history_figure(url: str, names: Sequence[str], path: Path) -> Path:
    """Optuna's optimization history of the studies, best value so far against trial, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization.matplotlib import plot_optimization_history

    studies = [load_study(url, n) for n in names]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = plot_optimization_history(studies, target_name="val bound")
    ax.set_title("Equal-budget tuning: validation bound per trial (lines: best so far)")
    ax.figure.set_size_inches(9, 5)
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=100)
    return path


def best_settings(url: str, dataset: str, method: str) -> dict[str, Any]:
    """The best complete trial's parameters of the study for ``dataset`` and ``method``."""
    name = study_name(dataset, method)
    try:
        study = load_study(url, name)
    except KeyError:
        raise ConfigError(f"tuned: {url} has no study {name}; it has "
                          f"{', '.join(sorted(existing_studies(url))) or 'none'}") from None
    complete = counted_trials(study, (TrialState.COMPLETE,))
    if not complete:
        raise ConfigError(f"tuned: study {name} in {url} has no complete trial yet")
    return dict(max(complete, key=lambda t: t.value).params)


def apply_tuned(cfg: DictConfig, given: Sequence[str]) -> dict[str, Any]:
    """Set the best parameters of ``cfg.tuned``'s study for this run's dataset and posterior on ``cfg``; return them.
    A key the command also sets itself is refused (one line): the run would not be the tuned one."""
    from .posteriors import posterior_label

    if not cfg.get("tuned"):
        return {}
    url = database_url(cfg.tuned)
    method = posterior_label(OmegaConf.to_container(cfg.posterior, resolve=True))
    best = best_settings(url, cfg.dataset.name, method)
    clash = sorted(k for k in best if k in given)
    if clash:
        raise ConfigError(f"{', '.join(clash)} set on the command line and by tuned={cfg.tuned}; accepted: one of "
                          f"the two")
    for key, value in best.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return best
