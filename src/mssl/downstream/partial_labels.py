"""Partial labels: a class that was not contoured in a case is unknown there, never background.

OpenKBP lists per case the organs that were contoured (``present_labels``). Where an organ is absent,
its voxels carry label 0 although they are not background. We use the *marginal* formulation: for a
case, the probabilities of its absent classes are merged into background before the loss, so the
network is never told "this voxel is not organ c" for an organ nobody drew, and absent classes are
left out of the Dice terms. With every class present this is exactly MONAI's ``DiceCELoss``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def present_mask(present_labels: Sequence[str] | None, class_names: Sequence[str]) -> torch.Tensor:
    """(C,) bool over ``class_names`` (index 0 = background, always present); None means all contoured."""
    if present_labels is None:
        return torch.ones(len(class_names), dtype=torch.bool)
    unknown = sorted(set(present_labels) - set(class_names))
    if unknown:
        raise ValueError(f"present_labels names {unknown} that are not in the dataset labels {list(class_names)}")
    mask = torch.tensor([name in present_labels for name in class_names], dtype=torch.bool)
    mask[0] = True
    return mask


def contoured_classes(presents: Sequence[torch.Tensor]) -> torch.Tensor:
    """(C,) bool: classes contoured in at least one of the cases (background always).

    Under the marginal loss a class no training case contours is never told apart from background, so
    its channel may soak up background; predictions must be restricted to the contoured classes.
    """
    return torch.stack([p.bool() for p in presents]).any(0)


def restrict_to(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Logits (B, C, *S) for prediction among the ``allowed`` (C,) classes only.

    The channels of the other classes are merged into background (log-sum-exp), as the marginal loss
    trained them, and set to -inf, so an argmax never returns a class no training case contoured.
    """
    allowed = allowed.to(logits.device).bool().clone()
    allowed[0] = True
    view = (1, -1, *([1] * (logits.ndim - 2)))
    into_background = ~allowed
    into_background[0] = True
    background = torch.logsumexp(logits.masked_fill(~into_background.view(view), float("-inf")), dim=1, keepdim=True)
    restricted = logits.masked_fill(~allowed.view(view), float("-inf"))
    return torch.cat([background, restricted[:, 1:]], dim=1)


def marginal_log_probs(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Log-probabilities with every absent class's mass merged into background.

    logits: (B, C, *S); present: (B, C) bool. Returns (B, C, *S); absent channels hold -inf
    (probability 0) and channel 0 holds log(p_background + Σ_absent p_c).
    """
    present = present.to(device=logits.device, dtype=torch.bool)
    if present.shape != logits.shape[:2]:
        raise ValueError(f"present mask has shape {tuple(present.shape)}, expected {tuple(logits.shape[:2])}")
    log_probs = torch.log_softmax(logits.float(), dim=1)
    view = (*present.shape, *([1] * (logits.ndim - 2)))
    merged_into_background = (~present).clone()
    merged_into_background[:, 0] = True
    background = torch.logsumexp(log_probs.masked_fill(~merged_into_background.view(view), float("-inf")), dim=1)
    out = log_probs.masked_fill(~present.view(view), float("-inf"))
    return torch.cat([background.unsqueeze(1), out[:, 1:]], dim=1)


class PartialDiceCELoss(nn.Module):
    """Dice + cross-entropy that ignores each case's absent classes (the marginal loss).

    Call with logits (B, C, *S), integer labels (B, 1, *S) and present (B, C) bool. Dice leaves out
    background by default (as nnU-Net does: with organs of a few hundred voxels in a million the
    background term dominates and the foreground emerges late). ``batch_dice`` pools each class's
    overlap over the cases of the batch that contour it (nnU-Net's default for 3D), so a patch that
    misses a small organ does not push its Dice to 0 on its own; otherwise Dice is per (case, class)
    and averaged over the present pairs. With every class present this equals MONAI's
    ``DiceCELoss(include_background=..., batch=batch_dice)``; the overlaps are summed here rather than in
    MONAI's ``DiceLoss`` because the presence mask is per (case, class).
    """

    def __init__(
        self, include_background: bool = False, batch_dice: bool = False, lambda_dice: float = 1.0, lambda_ce: float = 1.0, smooth: float = 1e-5
    ) -> None:
        super().__init__()
        self.include_background = include_background
        self.batch_dice = batch_dice
        self.lambda_dice = lambda_dice
        self.lambda_ce = lambda_ce
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        present = present.to(device=logits.device, dtype=torch.bool)
        log_probs = marginal_log_probs(logits, present)  # (B, C, *S)
        target = labels.long()
        if target.ndim == logits.ndim:
            target = target[:, 0]
        # NLL picks one channel per voxel; labels of absent classes cannot occur (they were never drawn)
        ce = F.nll_loss(log_probs.clamp_min(torch.finfo(log_probs.dtype).min), target)
        probs = log_probs.exp()
        one_hot = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
        spatial = tuple(range(2, logits.ndim))
        overlap = (probs * one_hot).sum(spatial) * present  # (B, C); absent pairs contribute nothing
        volume = (probs.sum(spatial) + one_hot.sum(spatial)) * present
        scored = present.clone()
        if self.batch_dice:
            overlap, volume, scored = overlap.sum(0), volume.sum(0), scored.any(0)  # (C,)
        scored[..., 0] = self.include_background
        dice_loss = 1 - (2 * overlap + self.smooth) / (volume + self.smooth)
        dice = dice_loss[scored].mean() if scored.any() else dice_loss.new_zeros(())
        return self.lambda_dice * dice + self.lambda_ce * ce
