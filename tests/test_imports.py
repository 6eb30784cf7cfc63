"""The package's import graph, read from the source with ``ast``: no module imports another that imports it back, and
the model side never imports the configuration package (which collects the model side's registries). And every
command (train.py, scripts/*.py) runs the rhovae of the checkout it lives in, not another copy on the path."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import REPO, subprocess_env

PACKAGE = REPO / "rhovae"
# the modules whose components are config options: they register in a rhovae.registry.Registry, and the config
# package (rhovae.config.components) imports them to collect the registries
MODEL_SIDE = ("rhovae.registry", "rhovae.data", "rhovae.networks", "rhovae.posteriors")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported(module: str, path: Path, node: ast.AST, known: dict[str, Path]) -> set[str]:
    """The project modules one import statement loads (a module's packages included), besides its own packages."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = base[:len(base) - node.level + 1]
            target = ".".join([*base, *([node.module] if node.module else [])])
        else:
            target = node.module or ""
        names = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known] or [target]
    else:
        return set()
    loaded = set()
    for name in names:
        parts = name.split(".")
        loaded |= {".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in known}
    return {m for m in loaded if m != module and not module.startswith(m + ".")}


def module_level_statements(tree: ast.Module) -> list[ast.AST]:
    """Imports run when the module is imported, and those under a module-level ``if`` (``TYPE_CHECKING``)."""
    out = []
    for node in tree.body:
        out.append(node)
        if isinstance(node, (ast.If, ast.Try)):
            out.extend(ast.walk(node))
    return out


def import_graph(function_level: bool) -> dict[str, set[str]]:
    known = modules()
    graph = {}
    for module, path in known.items():
        tree = ast.parse(path.read_text())
        nodes = ast.walk(tree) if function_level else module_level_statements(tree)
        graph[module] = set().union(*(imported(module, path, n, known) for n in nodes))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as a list of modules, or [] (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return []


def test_no_module_imports_one_that_imports_it_back():
    """Counting what a module imports at its top (type-checking imports included): no circle."""
    graph = import_graph(function_level=False)
    assert "rhovae.trainer" in graph["rhovae.experiment"]  # the graph is read, not empty
    assert find_cycle(graph) == []


def test_the_model_side_never_imports_the_configuration_package():
    """Not even inside a function: the configuration side imports the registries, never the reverse, so the two can
    never form a circle however the imports are arranged."""
    graph = import_graph(function_level=True)
    model = [m for m in graph if any(m == s or m.startswith(s + ".") for s in MODEL_SIDE)]
    offending = {m: sorted(t for t in graph[m] if t == "rhovae.config" or t.startswith("rhovae.config."))
                 for m in model}
    assert {m: t for m, t in offending.items() if t} == {}
    assert "rhovae.posteriors.base" in model and "rhovae.registry" in graph["rhovae.posteriors.base"]


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


COMMANDS = [REPO / "train.py", *sorted((REPO / "scripts").glob("*.py"))]


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=lambda p: p.name)
def test_every_command_runs_its_own_checkouts_package(command, tmp_path):
    """A decoy ``rhovae`` first on PYTHONPATH (another clone, or a stale install) must not be what a command imports:
    with two clones, a script would otherwise run the other clone's code without a word."""
    decoy = tmp_path / "rhovae"
    decoy.mkdir()
    (decoy / "__init__.py").write_text('raise ImportError("the decoy rhovae was imported")\n')
    env = {**subprocess_env(), "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(command), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "decoy" not in proc.stderr
