"""Write the ``scetm-mnn`` help texts into ``docs/cli.md`` (or check that they are current).

The help is kept in the page itself, so that it reads on GitHub too, between the markers
``<!-- cli-help: NAME -->`` and ``<!-- /cli-help -->``. ``tests/test_docs.py`` fails when
it no longer matches the parser; then run ``make docs-cli`` (this script) and commit.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

CLI_PAGE = Path(__file__).resolve().parents[1] / "cli.md"
WIDTH = "92"
_BLOCK = re.compile(
    r"(<!-- cli-help: (?P<name>[\w-]+) -->\n```text\n)(?P<text>.*?)(```\n<!-- /cli-help -->)",
    re.S,
)


def help_texts() -> dict[str, str]:
    """``scetm-mnn --help`` and each subcommand's ``--help``, wrapped at 92 columns."""
    from scetm_mnn.cli import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH  # argparse wraps to the terminal width
    try:
        parser = build_parser()
        texts = {"scetm-mnn": parser.format_help()}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                texts.update({name: sub.format_help() for name, sub in action.choices.items()})
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    return texts


def render(page: str) -> str:
    """``page`` with every help block replaced by the parser's current text."""
    texts = help_texts()

    def replace(match: re.Match) -> str:
        return match.group(1) + texts[match.group("name")] + match.group(4)

    return _BLOCK.sub(replace, page)


def blocks(page: str) -> dict[str, str]:
    """The help blocks of ``page``: name → text."""
    return {m.group("name"): m.group("text") for m in _BLOCK.finditer(page)}


if __name__ == "__main__":
    page = CLI_PAGE.read_text()
    new = render(page)
    if "--check" in sys.argv[1:]:
        sys.exit(0 if new == page else f"{CLI_PAGE} is out of date; run make docs-cli")
    CLI_PAGE.write_text(new)
