"""Turn a sweep folder into the paper table: per-run CSV, per-method Markdown/LaTeX tables and an NLL figure.

    python scripts/summarize.py outputs/multirun/<sweep>
    python scripts/summarize.py outputs/multirun/<sweep> --baseline rho
    python scripts/summarize.py outputs/multirun/<sweep> --baseline trainer.precision=float32
    python scripts/summarize.py outputs/multirun/<tuned sweep> --against outputs/multirun/<untuned sweep>

Writes into the sweep folder:

    results.csv   one row per run (status, summary numbers, full config)
    results.md    one row per dataset x method: n seeds, mean +- sd of test ELBO, NLL, KL, active units,
                  the inference gaps (when computed), seconds per epoch; then each method minus the baseline (paired over seeds, 95% t interval);
                  with --against, each method minus its counterpart in the other sweep (same dataset and
                  seed; a tuned option such as planar[flow_length=8] meets plain planar);
                  then the runs left out (failed, interrupted, unfinished)
    results.tex   the same two tables for a paper (booktabs)
    results.png   NLL (or -ELBO when no NLL was computed) per method with sd error bars, a panel per dataset
    gaps.png      when runs have a gaps.json: approximation and amortization gaps stacked per method
    budget.png    when runs have milestones (trainer.milestones): test NLL against epochs trained per method and
                  any other key the runs vary, runs still training included (and the same numbers as a table in
                  results.md); beside it, where diag runs share seeds and recipe with the others, each one minus
                  diag trained the same way, a dot per seed

When runs were re-scored by AIS (``scripts/evaluate.py RUN --estimator ais``), results.md also pairs AIS with the
importance-weighted estimate on the same images (``rhovae.results.ais_table``) and, where the re-scorings kept
each image's values, each model against the baseline's of the same checkpoint image for image
(``rhovae.results.ais_image_pairs``).

results.md opens with the budget the runs share (epochs, batches, K, gap images), says when they differ, marks a
smoke run (trainer.max_batches), and names what the runs ran on wherever that differs (torch, CPU, threads, commit).

Groups are (dataset, method) plus any other config key the sweep varied; ``method`` is the posterior option
with the options that differ from it (``rho_published_code``, ``planar[flow_length=32]``), labelled from each
run's config. Runs that did not complete are listed, never averaged in.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's rhovae, not another copy pip installed

from rhovae import results  # noqa: E402
from rhovae.plots import budget_curves, gap_bars, likelihood_comparison, save_figure  # noqa: E402


def summarize_sweep(sweep_dir: Path, baseline: str = results.BASELINE, strict: bool = False,
                    against: Path | None = None) -> dict[str, Path]:
    """Write the tables and figures; ``strict`` (a baseline the user named) refuses a baseline no completed run has;
    ``against``, another sweep, adds each method's paired difference from its counterpart there."""
    runs = results.load_runs(sweep_dir)
    between = (results.paired_between(runs, results.load_runs(against), against.name) if against is not None
               else None)
    keys = results.group_keys(runs)
    table = results.summarize(runs, keys)
    if strict:
        results.require_baseline(runs, keys, baseline)
    diffs = results.paired_differences(runs, keys, baseline=baseline)
    left_out = results.not_completed(runs)
    shown, shown_diffs = results.display_table(table), results.display_differences(diffs)

    paths = {name: sweep_dir / f"results.{name}" for name in ("csv", "md", "tex", "png")}
    runs.to_csv(paths["csv"], index=False)
    settings, smoke = results.budget(runs)
    md = [f"# Results: {sweep_dir.name}", ""]
    if smoke:
        md += ["**Smoke run**: trainer.max_batches was set, so every epoch saw a fraction of the training set; these "
               "numbers test the code, not the posteriors.", ""]
    md += ["Budget: " + "; ".join(f"{k} {v}" for k, v in settings.items()) + ".", ""] if settings else []
    differences = results.provenance_differences(runs)
    if differences:
        md += ["The runs ran on different installs or machines, which moves numbers by about a seed's spread: "
               + "; ".join(f"{k.removeprefix(results.PROVENANCE)} {', '.join(v)}" for k, v in differences.items())
               + ".", ""]
    md += [f"{len(results.completed(runs))} of {len(runs)} runs completed; mean ± sd over seeds, nats per image. "
           "s/epoch is wall time per training epoch, which doubles when two jobs share the cores.", "",
           shown.to_markdown(index=False), ""]
    single = not diffs.empty and diffs["n"].max() < 2
    if not shown_diffs.empty and single:
        md += [f"## Differences against {baseline} (one seed: no interval; a difference may be noise)", "",
               shown_diffs.to_markdown(index=False), ""]
    elif not shown_diffs.empty:
        md += [f"## Paired differences against {baseline} (same dataset and seed; 95% t interval)", "",
               "Negative NLL differences and positive ELBO differences favour the method.", "",
               shown_diffs.to_markdown(index=False), ""]
    if between is not None:
        md += [f"## Paired differences against the sweep {against.name} (same dataset and seed; 95% t interval)", "",
               f"The other sweep: {against}. Negative NLL and positive ELBO differences favour this one.", "",
               results.display_differences(between).to_markdown(index=False) if not between.empty
               else "No method and seed completed in both sweeps.", ""]
    ais_baseline = baseline if baseline in set(runs["method"]) else results.BASELINE
    ais = results.ais_table(runs, ais_baseline)
    if not ais.empty:
        md += ["## Annealed importance sampling beside the importance-weighted estimate (same images)", "",
               "Over the runs re-scored by AIS (`n`); nats per image. IW - AIS is the importance-weighted estimate's "
               "bias (up to AIS's own, which the BDMC gap bounds on data simulated from the model).", "",
               ais.to_markdown(index=False), ""]
    pairs = results.display_image_pairs(results.ais_image_pairs(runs, ais_baseline), ais_baseline)
    if not pairs.empty:
        md += [f"## AIS and IW against {ais_baseline}, image for image (same checkpoint, seed, recipe and images)", "",
               "Each model minus its baseline's, mean over the images with a 95% t interval over them (which images, "
               "and each image's Monte Carlo noise; one seed's models, so not the spread over seeds).", "",
               pairs.to_markdown(index=False, disable_numparse=True), ""]
    milestones = results.load_milestones(runs)  # grouped by what varies among all runs: some may still train
    has_budget = not milestones.empty and "test/nll" in milestones
    if has_budget:
        images, k = milestones["n_images"].max(), milestones["test/iw_samples"].max()
        budget = results.budget_table(milestones)
        formats = ["g", *[".2f"] * (budget.shape[1] - 1)]  # epochs as integers, NLLs to two decimals
        md += [f"## Test NLL at each milestone (first {images} test images, K = {k}; mean over seeds, runs still "
               "training included)", "", budget.to_markdown(index=False, floatfmt=formats), ""]
    if not left_out.empty:
        md += ["## Runs not included", "", left_out.to_markdown(index=False), ""]
    paths["md"].write_text("\n".join(md))
    tex = [results.to_latex(shown)]
    if not shown_diffs.empty:
        tex.append(results.to_latex(shown_diffs))
    paths["tex"].write_text("\n".join(tex))
    if table.empty:  # nothing completed: no figure to draw
        del paths["png"]
    else:
        save_figure(likelihood_comparison(table, results.iw_samples_used(runs)), paths["png"])
    if "gaps/approximation_gap mean" in table and table["gaps/approximation_gap mean"].notna().any():
        paths["gaps"] = sweep_dir / "gaps.png"
        save_figure(gap_bars(table[table["gaps/approximation_gap mean"].notna()]), paths["gaps"])
    if has_budget:
        paths["budget"] = sweep_dir / "budget.png"
        save_figure(budget_curves(milestones), paths["budget"])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun folder written by train.py -m (or any folder of runs)")
    parser.add_argument("--baseline", default=None,
                        help=f"what the paired differences are taken against: a method (default {results.BASELINE}) "
                             "or KEY=VALUE for a config key the sweep varied (each method against itself at VALUE)")
    parser.add_argument("--against", type=Path, default=None,
                        help="another sweep to pair with, method by method and seed by seed (tuned against untuned)")
    args = parser.parse_args(argv)
    for folder in (args.sweep_dir, args.against):
        if folder is not None and not folder.is_dir():
            print(f"error: {folder} is not a folder", file=sys.stderr)
            return 1
    try:
        paths = summarize_sweep(args.sweep_dir, args.baseline or results.BASELINE, strict=args.baseline is not None,
                                against=args.against)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (results.UnknownBaseline, results.AmbiguousPairing) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(paths["md"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
