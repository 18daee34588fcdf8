"""The code's layout: no import cycle between runner's subpackages (or the test doubles' modules), and no module
too long to read in one sitting.

Every import counts, at the top of a module or inside a function (a lazy import is still an arrow),
except those under ``if TYPE_CHECKING:``, which only the type checker follows.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from tests.support.files import ROOT

PACKAGE = ROOT / "runner"
DOUBLES = ROOT / "tests" / "doubles"  # the fake provider and the other doubles, one concept a module
SUPPORT = ROOT / "tests" / "support"  # what the test modules share
LONGEST = 330  # non-blank lines; a module past ~300 is asking to be split


def _modules(package: Path) -> list[Path]:
    """The package's modules; an empty list would make every rule below pass without looking."""
    found = sorted(package.rglob("*.py"))
    assert found, f"no modules under {package}"
    return found


def _unit(path: Path, package: Path = PACKAGE) -> str:
    """The subpackage a module belongs to (``call``, ``run``, ...), or the top-level module's own name."""
    parts = path.relative_to(package).with_suffix("").parts
    return parts[0]


def _imported(tree: ast.AST, prefix: str = "runner.") -> set[str]:
    """The units of the package named ``prefix`` that a module imports, leaving out ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for other in node.orelse:
                visit(other)
            return
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(prefix):
            found.add(node.module.removeprefix(prefix).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module == prefix.removesuffix("."):
            found.update(a.name for a in node.names)  # from tests.doubles import server
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix(prefix).split(".")[0] for a in node.names if a.name.startswith(prefix))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Unit -> the units it imports."""
    prefix = ".".join(package.relative_to(ROOT).parts) + "."
    arrows: dict[str, set[str]] = defaultdict(set)
    for path in _modules(package):
        unit = _unit(path, package)
        arrows[unit] |= _imported(ast.parse(path.read_text()), prefix) - {unit}
    for unit in arrows:
        arrows[unit] &= set(arrows)  # ``from runner import __version__`` names no unit
    return arrows


def _reach(arrows: dict[str, set[str]], start: str) -> set[str]:
    """The units ``start`` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in arrows.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def cycles(arrows: dict[str, set[str]]) -> list[list[str]]:
    """Every group of units that import one another, around however long a loop (each group once, sorted)."""
    reach = {unit: _reach(arrows, unit) for unit in arrows}
    found: list[list[str]] = []
    for unit in sorted(arrows):
        group = sorted(other for other in reach[unit] if unit in reach.get(other, ()))
        if group and group not in found:
            found.append(group)
    return found


# The one arrow back up in runner/, seen once the cycle finder looked at every loop (the depth-first walk it
# replaced missed it): runner/run/__init__.py makes the subpackage callable as the Python API's runner.run(...)
# by importing runner.api in its __call__, which closes api -> export/launch/preflight/serve -> run -> api.
UNRESOLVED = {"run": {"api"}}


def test_no_import_cycle_between_subpackages() -> None:
    arrows = graph()
    for unit, targets in UNRESOLVED.items():
        assert targets <= arrows[unit], f"{unit} -> {targets} is gone: take it out of UNRESOLVED"
        arrows[unit] -= targets
    assert cycles(arrows) == []
    assert "run" not in arrows["call"] and "executors" not in arrows["call"]  # the call layer knows no run


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    # reached first from outside the loop, then from a unit the walk had already finished: the old walk saw neither
    assert cycles({"a": {"c"}, "b": {"c"}, "c": {"b"}}) == [["b", "c"]]
    assert cycles({"a": {"b", "c"}, "b": {"a"}, "c": {"d"}, "d": {"c"}}) == [["a", "b"], ["c", "d"]]


@pytest.mark.parametrize("package", [PACKAGE, DOUBLES, SUPPORT], ids=["runner", "doubles", "support"])
def test_no_module_is_too_long(package: Path) -> None:
    long = {}
    for path in _modules(package):
        lines = sum(1 for line in path.read_text().splitlines() if line.strip())
        if lines > LONGEST:
            long[str(path.relative_to(ROOT))] = lines
    assert long == {}


@pytest.mark.parametrize("package", [DOUBLES, SUPPORT], ids=["doubles", "support"])
def test_no_import_cycle_between_test_modules(package: Path) -> None:
    arrows = graph(package)
    assert cycles(arrows) == []


def test_doubles_import_no_test_code() -> None:
    """The doubles sit below the tests: no double imports a test module, conftest or tests/support."""
    for path in _modules(DOUBLES):
        tests = _imported(ast.parse(path.read_text()), "tests.") - {"doubles"}
        assert not tests, f"{path.relative_to(ROOT)} imports tests.{sorted(tests)}"


def test_the_top_of_tests_holds_test_modules_only() -> None:
    """Doubles go in tests/doubles, shared helpers in tests/support; nothing else sits loose beside the tests."""
    loose = [p.name for p in (ROOT / "tests").glob("*.py") if not p.name.startswith("test_")]
    assert sorted(loose) == ["__init__.py", "conftest.py"]


def test_the_double_server_is_split_by_responsibility() -> None:
    """The fake provider's server comes in its parts, the way the docs describe them."""
    arrows = graph(DOUBLES)
    assert {"provider", "server", "chat", "state", "config", "directives", "answers", "quota", "wire"} <= set(arrows)
    assert "server" not in arrows["endpoints"] and "server" not in arrows["chat"]  # mounted by the server, not back


@pytest.mark.parametrize("api", ["batches", "anthropic", "gemini"])
def test_each_batch_api_double_is_split_by_responsibility(api: str) -> None:
    """Each Batch API fake comes in three layers: its wire format (a request answered, error bodies), its state
    (the faults, the batches, the counters tests wait on) and its routes; each imports only the ones below it."""
    arrows = graph(DOUBLES)
    state, wire = f"{api}_state", f"{api}_wire"
    assert {state, wire} <= arrows[api]
    assert api not in arrows[state] and api not in arrows[wire] and state not in arrows[wire]


def test_run_options_defaults_are_the_flags_defaults(monkeypatch) -> None:
    """``RunOptions("x")`` is what ``runner run x`` parses to, so the Python side and the CLI agree."""
    from runner.cli import run_options
    from runner.options import RunOptions

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert run_options(["run", "x"]) == RunOptions("x")
