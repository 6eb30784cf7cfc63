"""Train one VAE, or sweep many with Hydra's multirun: ``python train.py posterior=rho dataset=fmnist``.

Thin entry point: Hydra composes ``configs/`` and picks the run folder; ``rhovae.experiment`` does the work.
Errors caused by the input (a bad config value, missing data) end the run with one line on stderr; in a
multirun they are re-raised so Hydra records the job as failed and carries on with the others. SIGTERM
checkpoints the exact position and exits with status 143 (128 + SIGTERM); ``trainer.resume=true`` with
``hydra.run.dir=<run folder>`` continues the run.
"""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from rhovae.errors import RhovaeError
from rhovae.experiment import run_experiment
from rhovae.trainer import TrainingInterrupted

EXIT_TERMINATED = 143

log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    sweep = Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else None
    try:
        summary = run_experiment(cfg, Path(hydra_cfg.runtime.output_dir), sweep=sweep)
    except TrainingInterrupted as err:
        log.warning("%s", err)
        print(f"interrupted: {err}", file=sys.stderr)
        sys.exit(EXIT_TERMINATED)
    except RhovaeError as err:
        log.error("%s", err)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    return summary["test/elbo"]


if __name__ == "__main__":
    main()
