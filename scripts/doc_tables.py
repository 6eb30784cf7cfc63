"""Regenerate the results tables and figures in README.md, docs/ and results/*/README.md from the committed results.

    python scripts/doc_tables.py            # rewrite every generated table in place, remove figures no block draws
    python scripts/doc_tables.py --check    # exit 1, naming each table that differs from its results (CI's test)

A generated table sits between two comment lines that name what it is made of, for example

    <!-- table: ais results/paper_cpu_mnist_ais -->
    | dataset | method | ... |
    <!-- end table -->

and is ``rhovae.doc_tables.TABLES[name]`` of the runs under that folder; ``<!-- figure: NAME FOLDER -->`` blocks
draw ``docs/figures/NAME-FOLDER.png`` the same way. Nothing outside the markers changes, so the prose around a table
stays written by hand while its numbers cannot go stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rhovae.doc_tables import documents, orphan_figures, regenerate  # noqa: E402
from rhovae.errors import RhovaeError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is stale")
    args = parser.parse_args(argv)
    stale, loaded = [], {}
    try:
        for path in documents(REPO):
            text = path.read_text()
            new, changed = regenerate(text, REPO, path.parent, loaded, write_figures=not args.check)
            stale += [f"{path.relative_to(REPO)}: {name}" for name in changed]
            if changed and not args.check:
                path.write_text(new)
    except RhovaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for orphan in orphan_figures(REPO):  # a generated figure no block draws any more
        stale.append(f"{orphan}: drawn by no figure block" + ("" if args.check else ", removed"))
        if not args.check:
            (REPO / orphan).unlink()
    if stale:
        print(("stale: " if args.check else "regenerated: ") + "; ".join(stale), file=sys.stderr if args.check else sys.stdout)
        return 1 if args.check else 0
    print("every generated table matches its results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
