"""MkDocs hook: the command line page's reference, generated from ``runner.cli._parser()`` at every build.

``docs/cli.md`` holds the marker below; the build replaces it with each command's usage and a table of
its options, read from the same argparse parser ``runner`` uses, so the page cannot drift from the code.
"""

from __future__ import annotations

import argparse
import html
from typing import Any

MARKER = "<!-- cli-reference -->"
WIDTH = 76  # usage lines are wrapped at a fixed width (the page's column), whatever terminal builds the site


def _commands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    """Each subcommand's name -> (its one-line help, its parser)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return {name: (helps.get(name, ""), sub) for name, sub in action.choices.items()}
    return {}


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(prog=parser.prog, width=WIDTH)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return formatter.format_help().strip()


def _cell(text: str) -> str:
    return html.escape(" ".join(text.split()), quote=False).replace("|", "\\|")


def _option(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest.upper()}`"
    if action.nargs == 0:
        value = ""
    elif action.choices:
        value = " " + "|".join(map(str, action.choices))
    else:
        value = f" {action.metavar or action.dest.upper()}"
    return ", ".join(f"`{name}{value}`" for name in action.option_strings)


def reference(parser: argparse.ArgumentParser) -> str:
    """The reference as Markdown: per command, its usage and its options, in the parser's own order."""
    out: list[str] = []
    for name, (summary, sub) in _commands(parser).items():
        out += [
            f"### `runner {name}`",
            "",
            summary[:1].upper() + summary[1:] + ".",
            "",
            "```text",
            _usage(sub),
            "```",
            "",
        ]
        for group in sub._action_groups:
            actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
            if not actions:
                continue
            title = group.title or ""
            if title not in ("positional arguments", "options", "optional arguments"):
                out += [f"*{title}*", ""]
            out += ["| argument | what it does |", "|---|---|"]
            out += [f"| {_option(a)} | {_cell(a.help or '')} |" for a in actions]
            out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """Put the generated reference where docs/cli.md has the marker."""
    if MARKER not in markdown:
        return markdown
    from runner.cli import _parser

    return markdown.replace(MARKER, reference(_parser()))
