"""The command line as a whole: every command is registered, documented and answers --help."""

import pytest
from typer.testing import CliRunner

from mssl import __version__
from mssl.cli import app

EXPECTED = {"demo", "prepare", "pretrain", "export", "inspect", "nnunet-plans", "finetune", "evaluate", "probe", "benchmark", "visualize"}
COMMANDS = [command.name for command in app.registered_commands]


def test_every_command_is_registered_once():
    assert sorted(COMMANDS) == sorted(EXPECTED)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_of_every_command(name):
    result = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert f"mssl {name}" in result.output and "--help" in result.output
    summary = next(c for c in app.registered_commands if c.name == name).callback.__doc__.strip().splitlines()[0]
    assert summary.split()[0] in result.output


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"mssl {__version__}"
