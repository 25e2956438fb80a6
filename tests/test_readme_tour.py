"""The README's tour: every `mssl` line names a command and options that exist (the tour itself is run end to
end by hand before a release; see the issue notes)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from mssl.cli import app

README = Path(__file__).resolve().parents[1] / "README.md"


def tour_lines() -> list[str]:
    """The `mssl ...` lines of the bash blocks of the README's "A tour" section."""
    section = README.read_text(encoding="utf-8").split("## A tour", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("mssl ")]


def test_the_tour_has_the_whole_flow() -> None:
    commands = {shlex.split(line, comments=True)[1] for line in tour_lines()}
    assert {"demo", "prepare", "pretrain", "export", "inspect", "finetune", "evaluate", "probe", "visualize", "benchmark"} <= commands


@pytest.mark.parametrize("line", tour_lines())
def test_every_tour_line_parses_against_the_cli(line: str) -> None:
    words = shlex.split(line, comments=True)
    command = typer.main.get_command(app).commands[words[1]]  # type: ignore[attr-defined]
    context = command.make_context(words[1], [], resilient_parsing=True)  # no value is checked (the paths don't exist yet)...
    context.resilient_parsing = False  # ...but an unknown option is an error
    opts, arguments, _ = command.make_parser(context).parse_args(words[2:])  # an unknown option raises here
    assert arguments == []  # no stray word beyond the command's arguments
