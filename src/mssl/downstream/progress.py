"""What a fine-tuning run says while it runs: its plan and cost (:mod:`mssl.train.cost`) and one plain
progress line every N steps or S seconds, readable in a terminal and in a log file alike."""

from __future__ import annotations

from typing import Sequence

import torch
from rich.console import Console
from torch import nn

from mssl.downstream.config import FinetuneConfig
from mssl.train.cost import CostReporter, ParameterCount, RunPlan


def finetune_reporter(
    config: FinetuneConfig,
    network: nn.Module,
    patch: Sequence[int],
    patches_per_step: int,
    planned_steps: int,
    device: torch.device,
    console: Console,
    validating: bool,
) -> CostReporter:
    """The reporter of a fine-tuning loop; ``validating``: the run validates every ``config.val_every`` steps."""
    plan = RunPlan(ParameterCount.of(network), {tuple(patch): patches_per_step}, planned_steps, config.devices)
    return CostReporter(
        plan,
        device,
        lines=True,
        every_steps=config.line_every_steps,
        every_seconds=config.line_every_s,
        validate_every=config.val_every if validating else None,
        emit=lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True),  # one line, never wrapped
    )


def planned_validations(reporter: CostReporter, initial: bool) -> int:
    """Validations of the whole planned run (``initial``: one more of the untrained network at step 0)."""
    return reporter.validations_after(0) + int(initial)
