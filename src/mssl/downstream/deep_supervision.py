"""Deep supervision: the loss over a segmenter's outputs at full and coarser resolutions.

nnU-Net weights the output at 1/2**i resolution by 1/2**i (normalised to sum 1) and compares each with
the label map downsampled by nearest neighbour. MONAI's ``DeepSupervisionLoss`` does the same for
two-argument losses; ours also takes the per-case presence mask of the partial-label loss.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F


def deep_supervision_weights(outputs: int) -> torch.Tensor:
    """(outputs,) weights 1, 1/2, 1/4, … normalised to sum 1."""
    weights = 0.5 ** torch.arange(outputs, dtype=torch.float64)
    return (weights / weights.sum()).float()


def deep_supervised_loss(
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    outputs: torch.Tensor | list[torch.Tensor],
    labels: torch.Tensor,
    present: torch.Tensor,
) -> torch.Tensor:
    """``loss_fn(logits, labels, present)`` for one output; the weighted sum over [full, 1/2, …] outputs."""
    if isinstance(outputs, torch.Tensor):
        return loss_fn(outputs, labels, present)
    weights = deep_supervision_weights(len(outputs))
    total = outputs[0].new_zeros(())
    for weight, logits in zip(weights, outputs):
        target = labels if logits.shape[2:] == labels.shape[2:] else F.interpolate(labels.float(), size=logits.shape[2:], mode="nearest").long()
        total = total + weight * loss_fn(logits, target, present)
    return total
