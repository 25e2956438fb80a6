"""``mssl.finetune``: one entry point for segmentation and classification fine-tuning."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from mssl.config import build_config

from mssl.downstream.config import FinetuneConfig

if TYPE_CHECKING:
    from mssl.train.cost import Projection


def finetune(config: FinetuneConfig | None = None, console: Console | None = None, **overrides: Any) -> Path | Projection:
    """Fine-tune on k labelled cases (``task="seg"`` or ``"cls"``); returns the run folder.

    ``mssl.finetune(data="dataset.json", weights="runs/s2dc", labels=5)`` ≡
    ``mssl finetune --data dataset.json --weights runs/s2dc --labels 5``. ``resume=True`` continues the
    run in ``out`` from its last.ckpt; ``dry_run=True`` runs a few steps in a temporary folder, prints the
    projection of the whole run and returns it (nothing is written to ``out``).
    """
    config = build_config(FinetuneConfig, config, **overrides)
    if config.dry_run:
        with tempfile.TemporaryDirectory(prefix="mssl-dry-run-") as scratch:
            return _run(config.model_copy(update={"out": Path(scratch), "resume": False}), console)
    return _run(config, console)


def _run(config: FinetuneConfig, console: Console | None) -> Path | Projection:
    if config.task == "seg":
        from mssl.downstream.segmentation import finetune_segmentation

        return finetune_segmentation(config, console)
    from mssl.downstream.classification import finetune_classification

    return finetune_classification(config, console)
