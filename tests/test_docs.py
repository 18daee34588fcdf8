"""The documentation: the site builds with ``mkdocs build --strict``, and every command line it shows parses.

A command line is a ``runner …`` (or ``python -m runner …``) command, or a ``make run|nightly|serve`` line
(turned into the ``runner`` command the Makefile runs), found in a fenced code block of README.md or a
page under docs/. Each is split as a shell would (shlex) and parsed by ``runner.cli._parser()``, the
command line's own parser, so a renamed flag or a value its type now refuses fails here, naming the file
and line. A line with a shell variable (``$X``) can't be resolved and is skipped; the test says which.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.cli import _parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FENCE = re.compile(r"^(\s*)(```|~~~)")
SEPARATORS = {"&&", "||", "|", ";", "&", "(", ")"}
MAKE_RUN = {"JOB": "classify", "NIGHTLY_DIR": "data/in"}


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def code_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, logical line) of every fenced code block, ``\\`` continuations joined."""
    inside, pending, start = False, "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            inside, pending = not inside, ""
            continue
        if not inside:
            continue
        text = line.strip()
        if text.startswith("$ "):
            text = text[2:]
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        yield start, pending + text
        pending = ""


def simple_commands(line: str) -> list[list[str]]:
    """The line's simple commands (split at &&, |, ; ...), each cut at its first redirection."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    cut = False
    for token in lexer:
        if token in SEPARATORS:
            commands.append([])
            cut = False
        elif cut:
            continue
        elif set(token) <= set("<>&|"):  # a redirection: the rest of this command is its target
            if commands[-1] and commands[-1][-1].isdigit():
                commands[-1].pop()  # the 2 of 2>&1
            cut = True
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def runner_argv(command: list[str]) -> list[str] | None:
    """The runner arguments a documented command amounts to, or None when it runs something else."""
    assignments = {}
    while command and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", command[0]):
        name, _, value = command.pop(0).partition("=")
        assignments[name] = value
    if not command:
        return None
    program = Path(command[0]).name
    if command[0] == "runner" or command[0].endswith("/runner"):  # not the runner/ folder of a layout
        return command[1:]
    if program.startswith("python") and command[1:3] == ["-m", "runner"]:
        return command[3:]
    if program == "make" and len(command) > 1:
        given = dict(assignments)
        targets = [word for word in command[1:] if "=" not in word]
        given |= dict(word.split("=", 1) for word in command[1:] if "=" in word)
        extra = shlex.split(given.get("ARGS", ""))
        flags = [*(["--model", given["MODEL"]] if "MODEL" in given else [])]
        if targets in (["run"], ["install", "run"]):
            return ["run", given.get("JOB", MAKE_RUN["JOB"]), *flags,
                    *(["--input", given["INPUT"]] if "INPUT" in given else []),
                    *(["--run-id", given["RUN_ID"]] if "RUN_ID" in given else []), *extra]  # fmt: skip
        if targets == ["nightly"]:
            return ["run", given.get("JOB", MAKE_RUN["JOB"]), "--input", given.get("NIGHTLY_DIR", "data/in"),
                    *flags, *extra]  # fmt: skip
        if targets == ["serve"]:
            return ["serve", *extra]
    return None


def documented_commands() -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(where, argv) of every documented runner command, and the lines skipped with why."""
    found, skipped = [], []
    for path in documents():
        for number, line in code_lines(path):
            where = f"{path.relative_to(ROOT)}:{number}"
            if not re.search(r"\brunner\b|\bmake\b", line):
                continue
            try:
                commands = simple_commands(line)
            except ValueError as exc:  # an unclosed quote: not shell (a JSON or log line, prose in a layout)
                if re.search(r"\brunner (run|status|serve|export|jobs)\b", line):
                    skipped.append(f"{where}: not a shell line ({exc}): {line}")
                continue
            for command in commands:
                argv = runner_argv(list(command))
                if argv is None:
                    continue
                if any("$" in word for word in argv):
                    skipped.append(f"{where}: a shell variable can't be resolved: {shlex.join(command)}")
                    continue
                found.append((where, argv))
    return found, skipped


def parse_error(argv: list[str]) -> str | None:
    """None when runner's parser takes ``argv``, else what it said."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            _parser().parse_args(argv)
    except SystemExit as exc:
        return None if exc.code == 0 else said.getvalue().strip() or f"exit {exc.code}"
    return None


@pytest.mark.filterwarnings("always:not checked:UserWarning")
def test_every_documented_command_line_parses() -> None:
    found, skipped = documented_commands()
    assert len(found) >= 30, f"only {len(found)} command lines found in the docs: is the extraction broken?"
    assert {argv[0] for _, argv in found} >= {"run", "status", "serve", "export"}
    bad = [f"{where}: runner {shlex.join(argv)}\n    {error}" for where, argv in found if (error := parse_error(argv))]
    for line in skipped:  # shown in pytest's warnings summary
        warnings.warn(f"not checked: {line}", UserWarning, stacklevel=1)
    assert not bad, "documented command lines that runner no longer parses:\n" + "\n".join(bad)


def test_a_broken_command_line_is_caught(tmp_path: Path) -> None:
    """The checker itself: a flag that does not exist, a bad value, and a good line next to them."""
    page = tmp_path / "page.md"
    page.write_text(
        "```sh\n$ .venv/bin/runner run classify --concurrency 0\n"
        "RAY_ADDRESS=x:1 runner run classify --no-such-flag >> log 2>&1\n"
        'make run JOB=classify ARGS="--workers 2"\nrunner status --json | jq .\n'
        "runner run classify --input $NIGHT\n```\nrunner run classify --bogus (prose, not a code block)\n"
    )
    commands = [(n, runner_argv(c)) for n, line in code_lines(page) for c in simple_commands(line)]
    argvs = [argv for _, argv in commands if argv is not None]
    assert argvs == [["run", "classify", "--concurrency", "0"], ["run", "classify", "--no-such-flag"],
                     ["run", "classify", "--workers", "2"], ["status", "--json"],
                     ["run", "classify", "--input", "$NIGHT"]]  # fmt: skip
    assert [parse_error(argv) is None for argv in argvs[:4]] == [False, False, True, True]


@pytest.mark.timeout(300)
def test_the_site_builds_strictly_and_the_cli_page_has_every_flag(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (it is in the dev extra: make install)")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=280, env=env)  # fmt: skip
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    page = (site / "cli" / "index.html").read_text(encoding="utf-8").partition('id="reference"')[2]
    parser = _parser()
    commands = [(name, sub) for a in parser._actions if isinstance(a, argparse._SubParsersAction)
                for name, sub in a.choices.items()]  # fmt: skip
    options = [(name, option) for name, sub in commands for action in sub._actions
               for option in action.option_strings if option not in ("-h", "--help")]  # fmt: skip
    missing = [f"{name} {option}" for name, option in options if f"<code>{option}" not in page]
    assert not missing, f"the command line reference (docs/hooks/cli.py) does not name: {missing}"
    api = (site / "python-api" / "index.html").read_text(encoding="utf-8")
    for name in ("RunResult", "arun", "RunOptions", "BudgetExhausted", "to_pandas"):
        assert name in api, f"the Python API page has nothing on {name}"
    assert 'href="../examples/notebook.ipynb"' in api  # the example notebook, linked and shipped with the site
    assert (site / "examples" / "notebook.ipynb").read_bytes() == (ROOT / "examples" / "notebook.ipynb").read_bytes()


def test_the_matrix_and_the_front_page() -> None:
    architecture = (DOCS / "architecture.md").read_text(encoding="utf-8")
    assert architecture.count("<!-- matrix -->") == 2, "tests/test_matrix.py reads the table between these markers"
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) < 10 * 1024, f"README.md is {len(readme)} bytes: keep it a front page, details go in docs/"
