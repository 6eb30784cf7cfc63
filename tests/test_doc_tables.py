"""The results tables in README.md and docs/ are generated from the committed files under results/
(``rhovae.doc_tables``, ``scripts/doc_tables.py``): a table that drifts from its results fails here."""

from __future__ import annotations

import pytest

from helpers import REPO
from rhovae.doc_tables import TABLES, documents, regenerate
from rhovae.errors import RhovaeError


def test_every_generated_table_matches_its_committed_results():
    blocks = 0
    for path in documents(REPO):
        text = path.read_text()
        blocks += text.count("<!-- table: ")
        new, changed = regenerate(text, REPO)
        assert not changed, f"{path.relative_to(REPO)}: {changed} differ from their results; run scripts/doc_tables.py"
        assert new == text
    assert blocks >= 1  # the AIS comparison of docs/ais.md at least


def test_a_table_is_rewritten_from_its_results_and_bad_blocks_are_one_line(tmp_path):
    folder = "results/paper_cpu_mnist_ais"
    stale = f"intro\n<!-- table: ais {folder} -->\n| old | table |\n<!-- end table -->\noutro\n"
    new, changed = regenerate(stale, REPO)
    assert changed == [f"ais {folder}"] and new.startswith("intro\n") and new.endswith("<!-- end table -->\noutro\n")
    assert "| mnist     | rho      |" in new and "| old |" not in new
    assert regenerate(new, REPO) == (new, [])  # generated once, stable
    with pytest.raises(RhovaeError, match=r"^table 'nope' is not known; accepted: " + ", ".join(TABLES)):
        regenerate(f"<!-- table: nope {folder} -->\n<!-- end table -->", REPO)
    with pytest.raises(RhovaeError, match=r"names results/none, which is not a folder"):
        regenerate("<!-- table: ais results/none -->\n<!-- end table -->", REPO)
