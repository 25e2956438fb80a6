"""One module per ``mssl`` command, each defining ``command`` (a Typer-annotated function).

Command modules import torch, MONAI and the rest inside the function body so that ``mssl --help``
stays fast; ``mssl.cli`` discovers and registers them.
"""
