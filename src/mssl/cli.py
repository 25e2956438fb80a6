"""The ``mssl`` command line: a thin layer over the Python API; every command builds a validated config."""

from __future__ import annotations

import typer

from mssl import __version__

app = typer.Typer(
    name="mssl",
    help="Self-supervised pre-training of 3D medical image encoders (S²DC, GVSL) and its downstream proof.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mssl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """mssl: prepare data, pre-train, export, fine-tune, evaluate and visualise."""


def main() -> None:
    app()
