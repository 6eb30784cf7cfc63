"""Equal-budget tuning: the same Optuna search for every posterior, in one study database (``rhovae.tuning``).

    python scripts/tune.py                                    # configs/tune/default.yaml as it is
    python scripts/tune.py tune.posteriors=[diag,iaf] tune.n_trials=12 tune.epochs=5 tune.n_jobs=2 \\
        dataset.root=../shared/data
    python scripts/tune.py tune.name=smoke trainer.max_batches=5 tune.epochs=2   # a smoke search
    python scripts/tune.py tune.name=long tune.epochs=20 tune.space.trainer.kl_warmup_epochs.high=10  # one range
    python scripts/tune.py tune.launcher=slurm tune.n_jobs=20 tune.slurm.partition=cpu dataset.root=/shared/data

``tune.<key>=value`` sets a tuning key (``configs/tune/default.yaml``); any other ``key=value`` is a run key that
every trial starts from. ``tune.launcher=slurm`` runs the ``tune.n_jobs`` workers as SLURM jobs through submitit
(``tune.slurm.*``: partition, timeout_min, cpus_per_task, mem_gb) against Optuna's journal file
``outputs/tune/<name>.journal`` (on the shared file system; ``tune.storage`` takes a database URL instead), and waits
for them; ``tune.launcher=submitit_local`` does the same with local processes. Rerunning the same command continues every study where it stopped. At the end it prints
the table (best parameters and value, trials complete and pruned, wall time) and writes it with Optuna's
optimization history beside the storage: ``outputs/tune/<name>.md`` and ``<name>.png``. A comparison with the
best settings: ``python train.py -m experiment=paper_cpu tuned=outputs/tune/<name>.db``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rhovae.errors import RhovaeError  # noqa: E402
from rhovae.tuning import (history_figure, is_journal, load_tune_config, storage_url, tune,  # noqa: E402
                           tuning_table)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="tune.<key>=value (tuning) or key=value (every trial's run)")
    args = parser.parse_args(argv)
    tune_overrides = [o for o in args.overrides if o.startswith("tune.")]
    run_overrides = [o for o in args.overrides if not o.startswith("tune.")]
    try:
        tune_cfg = load_tune_config(tune_overrides)
        tune_cfg.run = [*tune_cfg.run, *run_overrides]
        url = storage_url(tune_cfg, REPO)
        print(f"tuning {', '.join(tune_cfg.posteriors)} on {', '.join(tune_cfg.datasets)}: {tune_cfg.n_trials} trials "
              f"of {tune_cfg.epochs} epochs each, {tune_cfg.pruner} pruner, {tune_cfg.n_jobs} worker(s); studies in "
              f"{url}", flush=True)
        names = tune(tune_cfg, url)
    except RhovaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the trial that was running is recorded as failed and is not counted; rerun the same "
              "command to continue", file=sys.stderr)
        return 130
    table = tuning_table(url, names)
    text = table.to_markdown(index=False, floatfmt=".2f")
    print(text)
    if url.startswith("sqlite:///") or is_journal(url):
        base = Path(url.removeprefix("sqlite:///")).with_suffix("")
        base.with_suffix(".md").write_text(f"# Tuning: {base.name}\n\n{text}\n")
        figure = history_figure(url, names, base.with_suffix(".png"))
        print(f"table and figure: {base.with_suffix('.md')}, {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
