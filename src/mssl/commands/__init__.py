"""One module per ``mssl`` command, each defining ``command`` (a Typer-annotated function).

Command modules import torch, MONAI and the rest inside the function body so that ``mssl --help``
stays fast; ``mssl.cli`` discovers and registers them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NoReturn, Sequence

import typer

if TYPE_CHECKING:
    from pydantic import BaseModel


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


# --config, --set and --print-config: the same three options, in the same order of precedence, on every
# command that builds a config.
PRECEDENCE = "Values: built-in defaults < --config file < flags < --set."


def config_option() -> Any:
    return typer.Option(None, "--config", "-c", exists=True, dir_okay=False, help=f"YAML file with any config keys (see --print-config). {PRECEDENCE}")


def set_option() -> Any:
    return typer.Option(None, "--set", "-s", help=f"Any config key, dotted, its value read as YAML: --set key=value (repeatable). {PRECEDENCE}")


def print_config_option() -> Any:
    return typer.Option(False, "--print-config", help="Print the resolved config (every key with its value and meaning) as YAML and exit.")


def chosen_options(flags: Mapping[str, Any], assignments: Sequence[str] | None) -> dict[str, Any]:
    """The options a user set, in the one order of precedence: the flags given (not None), then each --set key=value."""
    from mssl.config import parse_assignment

    chosen = {key: value for key, value in flags.items() if value is not None}
    chosen.update(parse_assignment(item) for item in assignments or [])
    return chosen


def show_config(model: type[BaseModel], values: Mapping[str, Any]) -> None:
    """``--print-config``: every key of ``model`` with its resolved value and description."""
    from mssl.config import config_yaml

    typer.echo(config_yaml(model, values))


def resolve_and_show(model: type[BaseModel], config: Path | None, options: Mapping[str, Any]) -> None:
    """``--print-config`` of a command whose config may still lack its required keys (shown as required)."""
    from mssl.config import build_config, lenient

    show_config(model, build_config(lenient(model), config, **options).model_dump(mode="json"))


def per_axis(kind: Any, text: str | None, option: str) -> Any:
    """An option that is no config key but a size or spacing (``mssl.config.Size3`` / ``Spacing3``): the
    same one reader, e.g. ``1.5`` or ``1.5,1.5,2``; None stays None."""
    from pydantic import TypeAdapter, ValidationError

    from mssl.config import one_line_errors

    if text is None:
        return None
    try:
        return TypeAdapter(kind).validate_python(text)
    except ValidationError as error:
        raise typer.BadParameter(f"{text!r}: {one_line_errors(error).removeprefix('(top level): ')}", param_hint=option) from None
