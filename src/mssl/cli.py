"""The ``mssl`` command line: a thin layer over the Python API; every command builds a validated config."""

from __future__ import annotations

import importlib
import pkgutil

import typer

from mssl import __version__, commands

app = typer.Typer(
    name="mssl",
    help="Self-supervised pre-training of 3D medical image encoders (S²DC, GVSL) and its downstream proof.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstring paragraphs wrap to the terminal instead of keeping source line breaks
)

# The order a user meets the commands in: data → pre-training → weights → downstream → pictures.
_ORDER = ["demo", "prepare", "pretrain", "export", "inspect", "nnunet_plans", "finetune", "evaluate", "probe", "benchmark", "visualize"]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mssl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """mssl: prepare data, pre-train, export, fine-tune, evaluate and visualise."""


def _register_commands() -> None:
    names = [m.name for m in pkgutil.iter_modules(commands.__path__)]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    for name in names:
        module = importlib.import_module(f"mssl.commands.{name}")
        app.command(name.replace("_", "-"))(module.command)


_register_commands()


def main() -> None:
    app()
