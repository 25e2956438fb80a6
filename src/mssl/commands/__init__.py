"""One module per ``mssl`` command, each defining ``command`` (a Typer-annotated function).

Command modules import torch, MONAI and the rest inside the function body so that ``mssl --help``
stays fast; ``mssl.cli`` discovers and registers them.
"""

from typing import NoReturn

import typer


def fail(problem: object, exit_code: int = 2) -> NoReturn:
    """End a command with one plain ``error: ...`` line on stderr: no traceback, no markup parsing of
    the message (paths may contain brackets). Exit code 2 for bad input, 1 for a run that failed."""
    typer.secho(f"error: {problem}", fg=typer.colors.RED, err=True)
    raise typer.Exit(exit_code) from None


def fail_environment(error: OSError, where: object = None) -> NoReturn:
    """End a command that the machine stopped (permission denied, read-only or full disk) with one
    line naming the path (the error's, else ``where``), exit code 1: the input was fine, the environment was not."""
    path = error.filename or where
    reason = error.strerror or str(error)
    fail(f"{path}: {reason}" if path else reason, exit_code=1)
