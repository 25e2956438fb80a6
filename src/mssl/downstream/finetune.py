"""``mssl.finetune``: one entry point for segmentation and classification fine-tuning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from mssl.downstream.config import FinetuneConfig, build_config


def finetune(config: FinetuneConfig | None = None, console: Console | None = None, **overrides: Any) -> Path:
    """Fine-tune on k labelled cases (``task="seg"`` or ``"cls"``); returns the run folder.

    ``mssl.finetune(data="dataset.json", weights="runs/s2dc", labels=5)`` ≡
    ``mssl finetune --data dataset.json --weights runs/s2dc --labels 5``.
    """
    config = build_config(FinetuneConfig, config, **overrides)
    if config.task == "seg":
        from mssl.downstream.segmentation import finetune_segmentation

        return finetune_segmentation(config, console)
    from mssl.downstream.classification import finetune_classification

    return finetune_classification(config, console)
