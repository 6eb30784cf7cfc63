"""What ``train.py`` needs from Hydra beyond composing the config: Hydra glue, kept out of the rest of the package.

* ``register_configs``, run when this module is imported (by ``train.py``, the tests, and every job process of a
  sweep): the typed configuration of ``rhovae.config.schema`` in Hydra's ConfigStore, as the schema ``rhovae_schema``
  that ``configs/config.yaml`` starts from, and one option per registered posterior and named setting of one
  (group ``posterior``), network pair (``networks``), dataset (``dataset``) and logger (``logger``).
* ``accept_renamed``: a command line that uses a group's old name (``decoder=conv``) under its new one, with a
  warning.
* ``sweep_record_kept``: a sweep started again in its folder keeps the folder's ``multirun.yaml``.
* ``failed_jobs_summarized`` and ``note_failed_job``: a sweep whose jobs fail on the user's input ends with one
  line naming them and exit status 1, instead of Hydra's report of the first failure with a traceback.
* ``with_saved_choices``: a single-run resume composes with the run's own group choices.
* ``given_keys``: the config keys this command set (overrides, group choices, experiments), so that a resumed run
  takes everything else from its checkpoint.
* ``check_override_keys``: a key on the command line that no option has (``trainer.epoch=3``) is refused before
  Hydra composes, with the closest known key.
* ``check_known_keys``: a key added with ``+`` (or ``++``) that the configuration does not have is refused with
  one line naming the closest known key, instead of being silently ignored.
* ``write_hydra_record``: ``.hydra/{config,hydra,overrides}.yaml``, written by the run once it is accepted
  (``hydra.output_subdir`` is null, so Hydra itself writes nothing into a folder the run may refuse).
* ``file_logs_held``: ``train.log`` receives nothing until the run is accepted, and nothing after it ends;
  ``log_to_file`` puts a line there that the user already sees on stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from hydra import compose
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from ..interrupt import sweep_stop, sweep_stop_signal
from .components import component_config, group_registries, setting_config
from .keys import flatten, reject_unknown_keys
from .load import COMPONENT_GROUPS
from .saved import RENAMED_SECTIONS
from .schema import GROUP_SCHEMAS, LOGGER_CONFIGS, RunConfig

_MISSING = object()


def register_configs() -> None:
    """Store the typed configuration and every registered component as a config group option."""
    store = ConfigStore.instance()
    store.store(name="rhovae_schema", node=RunConfig)
    registries = group_registries()
    for group in ("posterior", "networks"):
        registry = registries[group]
        for name in registry:
            store.store(group=group, name=name, node=component_config(registry, name))
        for label in registry.settings:
            store.store(group=group, name=label, node=setting_config(registry, label))
    for group, schema in GROUP_SCHEMAS.items():
        for name in registries[group]:
            store.store(group=group, name=name, node=schema(name=name))
    for name, node in LOGGER_CONFIGS.items():
        store.store(group="logger", name=name, node=node)


register_configs()


def accept_renamed(argv: Sequence[str]) -> list[str]:
    """``argv`` with every override of a renamed group or section under today's name (``decoder=conv`` becomes
    ``networks=conv``, ``+decoder.hidden=[64]`` becomes ``+networks.hidden=[64]``), each rename warned about
    once on stderr. Flags (``-m``, ``--cfg``) and everything else pass through unchanged."""
    renamed = []
    for arg in argv:
        match = re.fullmatch(r"([+~]{0,2})(\w+)([.=@].*)?", arg)
        if match is None or match.group(2) not in RENAMED_SECTIONS or match.group(3) is None:
            renamed.append(arg)
            continue
        prefix, old, rest = match.groups()
        new = f"{prefix}{RENAMED_SECTIONS[old]}{rest}"
        print(f"warning: {arg!r} is read as {new!r}: the {old} group is now called {RENAMED_SECTIONS[old]}; "
              f"{old} is accepted until the next release", file=sys.stderr)
        renamed.append(new)
    return renamed


def _group_keys(group: str) -> set[str]:
    """Every key any option of ``group`` has (a key none has is a typo whatever the option chosen)."""
    if group in GROUP_SCHEMAS:
        return {f.name for f in dataclasses.fields(GROUP_SCHEMAS[group])}
    if group == "logger":
        return {f.name for node in LOGGER_CONFIGS.values() for f in dataclasses.fields(node)}
    registry = group_registries()[group]
    return {"name", *(option for name in registry for option in registry.defaults(name))}


def known_keys() -> set[str]:
    """The dotted keys a command line may set without ``+``: the schema's, and those of any group option."""
    sections = flatten(OmegaConf.to_container(OmegaConf.structured(RunConfig), resolve=False))
    fixed = {k for k in sections if k.split(".")[0] not in COMPONENT_GROUPS}
    return fixed | {f"{group}.{key}" for group in COMPONENT_GROUPS for key in _group_keys(group)}


def check_override_keys(argv: Sequence[str]) -> None:
    """Refuse, before Hydra composes anything, an override of a key that no option has (``trainer.epoch=3``), with
    the closest known key: Hydra's own message would suggest adding the typo with ``+``. Additions (``+``, ``++``),
    deletions, group choices and ``hydra.*`` keys are left to Hydra."""
    keys = set()
    for arg in argv:
        match = re.fullmatch(r"(\w+(?:\.\w+)+)=.*", arg, flags=re.DOTALL)
        if match and not match.group(1).startswith("hydra."):
            keys.add(match.group(1))
    reject_unknown_keys(keys, known_keys())


def with_saved_choices(argv: Sequence[str]) -> list[str]:
    """``argv`` of a single-run resume (``trainer.resume=true hydra.run.dir=RUN``) with the run's own dataset,
    posterior and networks choices (from ``RUN/.hydra/hydra.yaml``) and its seed (``RUN/.hydra/config.yaml``) wherever
    the command line names none, so that a key of the run's own posterior (``posterior.flow_length=4`` on an iaf run)
    composes as it did for the run, and every log line names the run (``[mnist_iaf_s2]``), not the defaults."""
    argv = list(argv)
    if not any(a.lower() == "trainer.resume=true" for a in argv) or {"-m", "--multirun"} & set(argv):
        return argv
    run_dirs = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    record = Path(run_dirs[-1]) / ".hydra" / "hydra.yaml" if run_dirs else None
    if record is None or not record.is_file():
        return argv
    choices = OmegaConf.load(record).hydra.runtime.choices
    missing = [g for g in ("dataset", "posterior", "networks") if g in choices and
               not any(a.startswith(f"{g}=") for a in argv)]
    IMPLIED_CHOICES[:] = [f"{g}={choices[g]}" for g in missing]
    saved = record.parent / "config.yaml"
    if saved.is_file() and not any(a.startswith("seed=") for a in argv):
        seed = OmegaConf.load(saved).get("seed")
        IMPLIED_CHOICES.extend([] if seed is None else [f"seed={seed}"])
    return [*IMPLIED_CHOICES, *argv]


# Group choices and the seed that this command did not name but took from the run it resumes
# (``with_saved_choices``): the baseline of ``given_keys``, not keys the user set.
IMPLIED_CHOICES: list[str] = []


@contextlib.contextmanager
def sweep_record_kept(argv: Sequence[str]) -> Iterator[None]:
    """A sweep started again in a folder that has a ``multirun.yaml`` (``-m hydra.sweep.dir=SWEEP``, to resume it or
    by mistake) keeps that record of how the sweep was started: Hydra rewrites it, and on the way out the original is
    put back. The new record is kept beside it as ``multirun.<date>_<time>.yaml`` when the command succeeded (a
    resume), and dropped when it failed (a rerun refused job by job leaves the folder as it was)."""
    dirs = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.sweep.dir=")]
    record = Path(dirs[-1]) / "multirun.yaml" if dirs and {"-m", "--multirun"} & set(argv) else None
    before = record.read_bytes() if record is not None and record.is_file() else None
    succeeded = False
    try:
        yield
        succeeded = True
    except SystemExit as done:
        succeeded = not done.code
        raise
    finally:
        if before is not None and record.is_file() and record.read_bytes() != before:
            if succeeded:
                os.replace(record, record.with_name(f"multirun.{time.strftime('%Y-%m-%d_%H-%M-%S')}.yaml"))
            record.write_bytes(before)


FAILED_JOBS_ENV = "RHOVAE_FAILED_JOBS"


@contextlib.contextmanager
def sweep_stopped_as_one(argv: Sequence[str]) -> Iterator[None]:
    """For a multirun: Ctrl-C or SIGTERM stops the whole sweep cleanly (``rhovae.interrupt.sweep_stop``): every
    running job saves its position, no queued job starts, the launcher waits for them, and the command ends with
    one line and exit status 128 + the signal. The same command with ``trainer.resume=true`` continues every job."""
    if not {"-m", "--multirun"} & set(argv):
        yield
        return
    with sweep_stop():
        yield
        stopped = sweep_stop_signal()
    if stopped is not None:
        print(f"interrupted: the sweep was stopped by {stopped.name}; every running job saved its position and no "
              "other job started. Continue with the same command and trainer.resume=true", file=sys.stderr)
        sys.exit(128 + int(stopped))


@contextlib.contextmanager
def failed_jobs_summarized(argv: Sequence[str]) -> Iterator[None]:
    """For a multirun: collect the names of the jobs that ``note_failed_job`` reports (in this process or in the
    joblib launcher's worker processes, through a file named by an environment variable they inherit), and end with
    one line naming them and exit status 1. Each job has printed its own one-line error when it failed."""
    if not {"-m", "--multirun"} & set(argv):
        yield
        return
    fd, name = tempfile.mkstemp(prefix="rhovae-failed-jobs-", suffix=".txt")
    os.close(fd)
    os.environ[FAILED_JOBS_ENV] = name
    try:
        yield
        failed = Path(name).read_text().split()
    finally:
        os.environ.pop(FAILED_JOBS_ENV, None)
        Path(name).unlink(missing_ok=True)
    if failed:
        print(f"error: {len(failed)} job(s) of this sweep failed: {', '.join(failed)} (each one's error is above)",
              file=sys.stderr)
        sys.exit(1)


def note_failed_job(job: str) -> None:
    """Record a multirun job that failed on the user's input, for ``failed_jobs_summarized`` to report at the end."""
    with open(os.environ[FAILED_JOBS_ENV], "a") as record:
        record.write(job + "\n")


def _flat(cfg: DictConfig) -> dict[str, Any]:
    return flatten(OmegaConf.to_container(cfg, resolve=False))


def _parsed(overrides: Sequence[str]):
    return OverridesParser.create().parse_overrides(list(overrides))


def _is_key_addition(override, groups) -> bool:
    return (override.is_add() or override.is_force_add()) and override.key_or_group not in groups


def check_known_keys(cfg: DictConfig, overrides: Sequence[str], config_name: str = "config") -> None:
    """Refuse keys that exist only because an override added them (``+trainer.epoch=3``), naming the closest key."""
    groups = set(HydraConfig.get().runtime.choices)
    parsed = _parsed(overrides)
    if not any(_is_key_addition(o, groups) for o in parsed):
        return
    reference = compose(config_name, overrides=[o.input_line for o in parsed if not _is_key_addition(o, groups)])
    reject_unknown_keys(_flat(cfg), _flat(reference))


def given_keys(cfg: DictConfig, overrides: Sequence[str], config_name: str = "config") -> set[str]:
    """The flattened keys this command set: named by an override, inside an overridden group, or changed from the
    defaults by any override (an experiment sets many keys at once)."""
    flat = _flat(cfg)
    defaults = _flat(compose(config_name, overrides=list(IMPLIED_CHOICES)))
    named = [o.key_or_group for o in _parsed(overrides) if o.input_line not in IMPLIED_CHOICES]
    given = {k for k in flat if any(k == n or k.startswith(f"{n}.") for n in named)}
    return given | {k for k, v in flat.items() if defaults.get(k, _MISSING) != v}


def write_hydra_record(cfg: DictConfig, run_dir: Path) -> None:
    """What Hydra writes to ``.hydra/`` when it is allowed to: the composed config, its own config, the overrides."""
    hydra_cfg = HydraConfig.get()
    folder = run_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hydra_cfg)}), folder / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, folder / "overrides.yaml")


def log_to_file(logger: logging.Logger, level: int, message: str) -> None:
    """Record ``message`` in ``train.log`` only: for a line the user is shown once, on stderr, by the caller."""
    record = logger.makeRecord(logger.name, level, "(train.py)", 0, message, None, None)
    for handler in _file_handlers():
        handler.handle(record)


def _file_handlers() -> list[logging.FileHandler]:
    return [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]


@contextlib.contextmanager
def file_logs_held() -> Iterator[Callable[[], None]]:
    """Detach the root logger's file handlers (``train.log``) until the returned ``release()`` is called.

    On leaving, the handlers are detached and closed for good: Hydra logs the next job's launch, and a failed job,
    after this job returned, and those lines must not land in this run's folder (it may be a finished run).
    """
    held = _file_handlers()
    root = logging.getLogger()
    for handler in held:
        root.removeHandler(handler)

    def release() -> None:
        for handler in held:
            if handler not in root.handlers:
                root.addHandler(handler)

    try:
        yield release
    finally:
        for handler in held:
            root.removeHandler(handler)
            handler.close()
