"""The results tables in README.md and docs/ are generated from the committed files under results/
(``rhovae.doc_tables``, ``scripts/doc_tables.py``): a table that drifts from its results fails here."""

from __future__ import annotations

import pytest

from helpers import REPO
from rhovae.doc_tables import PAIR_TABLES, TABLES, documents, orphan_figures, regenerate
from rhovae.errors import RhovaeError


@pytest.mark.slow  # reads every cited results folder and draws its figures: seconds
def test_every_generated_table_matches_its_committed_results():
    blocks, loaded = 0, {}
    for path in documents(REPO):
        text = path.read_text()
        blocks += text.count("<!-- table: ") + text.count("<!-- figure: ")
        new, changed = regenerate(text, REPO, path.parent, loaded)
        assert not changed, f"{path.relative_to(REPO)}: {changed} differ from their results; run scripts/doc_tables.py"
        assert new == text
    assert blocks >= 1  # the AIS comparison of docs/ais.md at least
    assert not orphan_figures(REPO), "figures no block draws; python scripts/doc_tables.py removes them"


def test_a_figure_no_block_draws_is_an_orphan(tmp_path):
    """docs/figures holds what the figure blocks draw; a PNG left by a removed or renamed block is named."""
    (tmp_path / "docs" / "figures").mkdir(parents=True)
    (tmp_path / "README.md").write_text("<!-- figure: differences results/a+results/b -->\n<!-- end figure -->\n")
    (tmp_path / "docs" / "results.md").write_text("<!-- table: differences results/c -->\n<!-- end table -->\n")
    for name in ("differences-a_and_b.png", "differences-a.png", "differences-c.png"):
        (tmp_path / "docs" / "figures" / name).write_bytes(b"\x89PNG")
    assert [p.as_posix() for p in orphan_figures(tmp_path)] == ["docs/figures/differences-a.png",
                                                                "docs/figures/differences-c.png"]


def test_a_table_is_rewritten_from_its_results_and_bad_blocks_are_one_line(tmp_path):
    folder = "results/paper_cpu_mnist_ais"
    stale = f"intro\n<!-- table: ais {folder} -->\n| old | table |\n<!-- end table -->\noutro\n"
    new, changed = regenerate(stale, REPO)
    assert changed == [f"ais {folder}"] and new.startswith("intro\n") and new.endswith("<!-- end table -->\noutro\n")
    assert "| mnist     | rho      |" in new and "| old |" not in new
    assert regenerate(new, REPO) == (new, [])  # generated once, stable
    with pytest.raises(RhovaeError, match=r"^table 'nope' is not known; accepted: " + ", ".join({**TABLES, **PAIR_TABLES})):
        regenerate(f"<!-- table: nope {folder} -->\n<!-- end table -->", REPO)
    with pytest.raises(RhovaeError, match=r"names results/none, which is not a folder"):
        regenerate("<!-- table: ais results/none -->\n<!-- end table -->", REPO)


def test_a_table_of_two_folders_pairs_their_runs_as_one_folder_would(tmp_path):
    """Seeds trained in two sweeps make one table: the runs of results/a+results/b, split by seed, give the table
    of the folder they came from, paired over all seeds."""
    import shutil

    source = REPO / "results" / "paper_cpu_mnist_ais"
    for run in source.glob("*_s[0-9]"):
        shutil.copytree(run, tmp_path / "results" / ("a" if int(run.name[-1]) < 3 else "b") / run.name)
    whole, _ = regenerate(f"<!-- table: differences {source.relative_to(REPO)} -->\n<!-- end table -->", REPO)
    joined, changed = regenerate("<!-- table: differences results/a+results/b -->\n<!-- end table -->", tmp_path)
    assert changed == ["differences results/a+results/b"]
    assert joined.split("\n", 1)[1] == whole.split("\n", 1)[1] and "|   5 |" in joined
    with pytest.raises(RhovaeError, match=r"names results/c, which is not a folder"):
        regenerate("<!-- table: differences results/a+results/c -->\n<!-- end table -->", tmp_path)


def test_a_pair_table_gives_each_runs_difference_from_its_counterpart_seed_by_seed(tmp_path):
    """``between A~B``: the runs of A minus those of B with the same method and seed, as a paired t interval. B is a
    copy of A whose NLLs are raised by known amounts per seed, so the table must show minus their mean and the t
    interval of their spread, computed here with scipy; a method B lacks is left out."""
    import json
    import shutil

    from scipy import stats

    source = REPO / "results" / "paper_cpu_mnist_ais"
    shifts = {0: 0.1, 1: 0.25, 2: 0.55}
    for run in source.glob("*_mnist_[df]*_s[0-2]"):  # diag and fullcov, seeds 0-2
        shutil.copytree(run, tmp_path / "results" / "a" / run.name)
        if "fullcov" in run.name:
            continue
        shutil.copytree(run, tmp_path / "results" / "b" / run.name)
        summary_path = tmp_path / "results" / "b" / run.name / "summary.json"
        summary = json.loads(summary_path.read_text())
        summary["test/nll"] += shifts[int(run.name[-1])]
        summary_path.write_text(json.dumps(summary))
    table, changed = regenerate("<!-- table: between results/a~results/b -->\n<!-- end table -->", tmp_path)
    assert changed == ["between results/a~results/b"]
    values = [-v for v in shifts.values()]
    half = stats.t.ppf(0.975, 2) * stats.tstd(values) / len(values) ** 0.5
    mean = sum(values) / 3
    nll_row = next(line for line in table.splitlines() if "| NLL" in line or "test NLL" in line)
    assert f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}]" in nll_row and "diag" in nll_row
    assert "fullcov" not in table  # no counterpart in results/b
    for folder in ("results/a", "results/a~results/b~results/a"):
        with pytest.raises(RhovaeError, match=rf"^table between names '{folder}'; accepted: FOLDER~REFERENCE$"):
            regenerate(f"<!-- table: between {folder} -->\n<!-- end table -->", tmp_path)
    with pytest.raises(RhovaeError, match=r"^table differences names 'results/a~results/b'; accepted: FOLDER or A\+B"):
        regenerate("<!-- table: differences results/a~results/b -->\n<!-- end table -->", tmp_path)


@pytest.mark.slow  # draws a figure three times: seconds
def test_a_figure_is_drawn_from_its_results_and_goes_stale_when_its_numbers_change(tmp_path):
    """A figure block in a copy of the repository's results: the PNG is drawn into docs/figures, the link is relative
    to the document, and changing one run's number changes the block (the hash of the numbers drawn)."""
    import json
    import shutil

    shutil.copytree(REPO / "results" / "paper_cpu_mnist_ais", tmp_path / "results" / "x")
    block = "<!-- figure: differences results/x -->\n<!-- end figure -->\n"
    new, changed = regenerate(block, tmp_path, tmp_path / "docs")
    png = tmp_path / "docs" / "figures" / "differences-x.png"
    assert changed == ["differences results/x"] and png.read_bytes().startswith(b"\x89PNG")
    assert "](figures/differences-x.png)" in new and "one dot per seed" in new
    assert regenerate(new, tmp_path, tmp_path / "docs") == (new, [])
    png.unlink()  # a figure file lost while its block is current: stale, and a check does not draw it
    assert regenerate(new, tmp_path, tmp_path / "docs", write_figures=False) == (
        new, ["differences results/x (docs/figures/differences-x.png was missing)"])
    assert not png.exists()
    assert regenerate(new, tmp_path, tmp_path / "docs")[1] and png.read_bytes().startswith(b"\x89PNG")
    summary = tmp_path / "results" / "x" / "0_mnist_diag_s0" / "summary.json"
    record = json.loads(summary.read_text())
    summary.write_text(json.dumps({**record, "test/nll": record["test/nll"] + 1}))
    assert regenerate(new, tmp_path, tmp_path / "docs")[1] == ["differences results/x"]
    with pytest.raises(RhovaeError, match=r"^figure 'nope' is not known; accepted: differences, milestones, gaps$"):
        regenerate("<!-- figure: nope results/x -->\n<!-- end figure -->", tmp_path)


@pytest.mark.slow  # scripts/collect_results.py in a subprocess
def test_collect_results_copies_the_small_files_of_each_run_and_no_checkpoint(tmp_path):
    import subprocess
    import sys

    from helpers import subprocess_env

    sweep = tmp_path / "sweep"
    for job in ("0_mnist_diag_s0", "1_mnist_rho_s0"):
        run = sweep / job
        (run / ".hydra").mkdir(parents=True)
        (run / "checkpoints").mkdir()
        (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
        for name in ("summary.json", "metrics.jsonl", "milestones.jsonl", "train.log", "evaluation_ais.json",
                     "bdmc.json", "gaps.json", "gaps_epoch_4.json", "checkpoints/last.pt", "samples.png", "gaps.npz",
                     "gaps_epoch_4.npz"):
            (run / name).write_text(name)
    dest = tmp_path / "results" / "tiny"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "collect_results.py"), str(sweep), str(dest)],
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert copied == sorted(f"{job}/{name}" for job in ("0_mnist_diag_s0", "1_mnist_rho_s0") for name in (
        ".hydra/config.yaml", "summary.json", "metrics.jsonl", "milestones.jsonl", "train.log",
        "evaluation_ais.json", "bdmc.json", "gaps.json", "gaps_epoch_4.json"))
    single = subprocess.run([sys.executable, str(REPO / "scripts" / "collect_results.py"),
                             str(sweep / "1_mnist_rho_s0"), str(tmp_path / "one")], env=subprocess_env(),
                            capture_output=True, text=True, timeout=120)
    assert single.returncode == 0 and (tmp_path / "one" / "1_mnist_rho_s0" / "summary.json").is_file()


def test_the_gaps_figure_draws_the_milestone_models_gaps_and_says_when_there_are_none(tmp_path):
    import json

    for method, approximation in (("diag", 1.5), ("iaf", 0.5)):
        run = tmp_path / "results" / "x" / method
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(json.dumps(
            {"seed": 0, "posterior": {"name": method}, "dataset": {"name": "mnist"}}))
        (run / "milestones.jsonl").write_text(json.dumps({"epoch": 364, "n_images": 2000, "test/nll": 88.0}) + "\n")
    block = "<!-- figure: gaps results/x -->\n<!-- end figure -->\n"
    with pytest.raises(RhovaeError, match=r"^figure gaps: no run below this folder has a gap analysis"):
        regenerate(block, tmp_path)
    for method, approximation in (("diag", 1.5), ("iaf", 0.5)):
        (tmp_path / "results" / "x" / method / "gaps_epoch_364.json").write_text(json.dumps(
            {"approximation_gap": approximation, "amortization_gap": 3.0, "n_images": 1000}))
    new, changed = regenerate(block, tmp_path)
    png = tmp_path / "docs" / "figures" / "gaps-x.png"
    assert changed == ["gaps results/x"] and png.read_bytes().startswith(b"\x89PNG")
    assert "![Approximation and amortization gaps" in new and "](docs/figures/gaps-x.png)" in new
    (tmp_path / "results" / "x" / "iaf" / "gaps_epoch_364.json").write_text(json.dumps(
        {"approximation_gap": 0.7, "amortization_gap": 3.0, "n_images": 1000}))
    assert regenerate(new, tmp_path)[1] == ["gaps results/x"]  # a new number makes the block stale


def test_without_milestone_gaps_the_gaps_figure_draws_the_runs_own(tmp_path):
    import json

    for method in ("diag", "iaf"):
        run = tmp_path / "results" / "y" / method
        run.mkdir(parents=True)
        config = {"seed": 0, "posterior": {"name": method}, "dataset": {"name": "mnist"}}
        (run / "summary.json").write_text(json.dumps({"status": "completed", "test/nll": 90.0, "config": config}))
        (run / "gaps.json").write_text(json.dumps({"approximation_gap": 1.0, "amortization_gap": 4.0,
                                                   "n_images": 1000, "overrides": []}))
    new, changed = regenerate("<!-- figure: gaps results/y -->\n<!-- end figure -->\n", tmp_path)
    assert changed == ["gaps results/y"] and (tmp_path / "docs" / "figures" / "gaps-y.png").is_file()


def test_a_milestone_table_says_which_groups_have_not_reached_an_epoch(tmp_path):
    """Runs still training stand in the milestone table beside longer ones: an epoch a group has not reached reads
    "not reached", never "nan", and every reached value keeps two decimals."""
    import json

    for method, nll in (("diag", {121: 89.894, 364: 88.5, 1093: 87.281}), ("fullcov", {121: 88.75, 364: 87.136})):
        run = tmp_path / "results" / "z" / method
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(json.dumps(
            {"seed": 0, "posterior": {"name": method}, "dataset": {"name": "mnist"}}))
        (run / "milestones.jsonl").write_text("".join(
            json.dumps({"epoch": epoch, "n_images": 2000, "test/nll": value}) + "\n" for epoch, value in nll.items()))
    new, changed = regenerate("<!-- table: milestones results/z -->\n<!-- end table -->\n", tmp_path)
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in new.splitlines() if line.startswith("|") and line.split("|")[1].strip().isdigit()}
    assert changed == ["milestones results/z"] and "nan" not in new
    assert rows == {"121": ["89.89", "88.75"], "364": ["88.50", "87.14"], "1093": ["87.28", "not reached"]}
