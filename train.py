"""Train one VAE, or sweep many with Hydra's multirun: ``python train.py posterior=rho dataset=fmnist``.

Thin entry point: Hydra composes ``configs/`` and picks the run folder; ``rhovae.experiment`` does the work.
Before anything is written, the command is checked: unknown keys, bad values, and whether the folder already
holds a run (continue it with ``trainer.resume=true``, replace it with ``trainer.overwrite=true``); a refused
command leaves the folder byte-identical. Errors caused by the input end the run with one line on stderr; in a
multirun the sweep carries on with the other jobs and ends with one line naming the jobs that failed (exit
status 1). SIGTERM and Ctrl-C checkpoint the exact position and exit with 128 + the signal (143, 130); a second
Ctrl-C exits at once. In a multirun they stop the whole sweep: every running job checkpoints its position, no other
job starts, and the sweep exits with 128 + the signal once the running jobs have saved. ``trainer.stop_at_epoch=N``
ends a working stretch after epoch N the same way, saved and resumable, but as planned: exit status 0, and a sweep
goes on with its other jobs.
``python train.py trainer.resume=true hydra.run.dir=<run folder>`` continues a run with the config it saved.
"""

import contextlib
import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from rhovae.errors import ConfigError, RhovaeError
from rhovae.experiment import run_experiment
from rhovae.config.hydra_run import (accept_renamed, check_known_keys, check_override_keys, failed_jobs_summarized,
                              file_logs_held, given_keys, log_to_file, note_failed_job, sweep_record_kept,
                              sweep_stopped_as_one, with_saved_choices, write_hydra_record)
from rhovae.interrupt import request_sweep_stop, sweep_job, sweep_stop_signal
from rhovae.trainer import TrainingInterrupted, TrainingPaused

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    sweep = Path(hydra_cfg.sweep.dir).name if multirun else None
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)

    def on_start(plan) -> None:
        release_file_log()
        if plan.checkpoint is None or not (run_dir / ".hydra").is_dir():
            write_hydra_record(cfg, run_dir)

    if multirun and sweep_stop_signal() is not None:  # a job queued before the sweep was stopped: start nothing
        print(f"not started: {run_dir.name} (the sweep was stopped)", file=sys.stderr)
        with contextlib.suppress(OSError):
            run_dir.rmdir()
        return float("nan")
    with file_logs_held() as release_file_log, sweep_job() if multirun else contextlib.nullcontext():
        try:
            check_known_keys(cfg, overrides)
            if cfg.get("tuned"):  # tuned=<study database>: the best settings its study found for this run
                from rhovae.tuning import apply_tuned  # Optuna is imported only by runs that need it

                apply_tuned(cfg, [o.split("=", 1)[0].lstrip("+~") for o in overrides])
            summary = run_experiment(cfg, run_dir, sweep=sweep, given=given_keys(cfg, overrides), on_start=on_start)
        except TrainingPaused as err:  # the stretch the user asked for is done: the sweep goes on
            log_to_file(log, logging.INFO, f"paused: {err}")
            print(f"paused: {err}", file=sys.stderr)
            return float("nan")
        except TrainingInterrupted as err:
            log_to_file(log, logging.WARNING, f"interrupted: {err}")
            print(f"interrupted: {err}", file=sys.stderr)
            if multirun:  # the other jobs save too, and the sweep ends with the signal's status once they have
                request_sweep_stop(err.exit_code - 128)
                return float("nan")
            sys.exit(err.exit_code)
        except RhovaeError as err:
            log_to_file(log, logging.ERROR, f"error: {err}")  # only once the run was accepted (train.log is held)
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # the folder Hydra made for a refused run, if nothing was written into it
            if multirun:  # the sweep runs the other jobs and names the failed ones at the end
                print(f"error in {run_dir.name}: {err}", file=sys.stderr)
                note_failed_job(run_dir.name)
                return float("nan")
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
    return summary["test/elbo"]


if __name__ == "__main__":
    sys.argv[1:] = with_saved_choices(accept_renamed(sys.argv[1:]))  # decoder=conv is read as networks=conv
    try:
        check_override_keys(sys.argv[1:])
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    with sweep_record_kept(sys.argv[1:]), failed_jobs_summarized(sys.argv[1:]), sweep_stopped_as_one(sys.argv[1:]):
        main()
