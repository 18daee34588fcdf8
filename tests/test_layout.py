"""The package's layout: no import cycle between runner's subpackages, and no module too long to read in one sitting.

Every import counts, at the top of a module or inside a function (a lazy import is still an arrow),
except those under ``if TYPE_CHECKING:``, which only the type checker follows.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.support.files import ROOT

PACKAGE = ROOT / "runner"
LONGEST = 330  # non-blank lines; a module past ~300 is asking to be split


def _unit(path: Path) -> str:
    """The subpackage a module belongs to (``call``, ``run``, ...), or the top-level module's own name."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imported(tree: ast.AST) -> set[str]:
    """The runner units a module imports, leaving out ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for other in node.orelse:
                visit(other)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("runner."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("runner."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def graph() -> dict[str, set[str]]:
    """Unit -> the units it imports."""
    arrows: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        unit = _unit(path)
        arrows[unit] |= _imported(ast.parse(path.read_text())) - {unit}
    return arrows


def cycles(arrows: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle found by a depth-first walk (each once, from its first unit)."""
    found: list[list[str]] = []
    done: set[str] = set()

    def walk(unit: str, path: list[str]) -> None:
        for target in sorted(arrows.get(unit, ())):
            if target in path:
                cycle = path[path.index(target) :]
                if min(cycle) == cycle[0] and cycle not in found:
                    found.append(cycle)
            elif target not in done:
                walk(target, [*path, target])
        done.add(unit)

    for unit in sorted(arrows):
        walk(unit, [unit])
    return found


def test_no_import_cycle_between_subpackages() -> None:
    arrows = graph()
    assert cycles(arrows) == []
    assert "run" not in arrows["call"] and "executors" not in arrows["call"]  # the call layer knows no run


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_is_too_long() -> None:
    long = {}
    for path in PACKAGE.rglob("*.py"):
        lines = sum(1 for line in path.read_text().splitlines() if line.strip())
        if lines > LONGEST:
            long[str(path.relative_to(ROOT))] = lines
    assert long == {}


def test_run_options_defaults_are_the_flags_defaults(monkeypatch) -> None:
    """``RunOptions("x")`` is what ``runner run x`` parses to, so the Python side and the CLI agree."""
    from runner.cli import run_options
    from runner.options import RunOptions

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert run_options(["run", "x"]) == RunOptions("x")
