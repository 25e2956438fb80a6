"""Sliding-window prediction shared by validation, evaluation and the benchmark."""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

import torch
from monai.inferers import sliding_window_inference
from torch import nn


@torch.no_grad()
def predict_logits(
    network: nn.Module, image: torch.Tensor, roi: Sequence[int], overlap: float = 0.25, sw_batch_size: int = 2
) -> torch.Tensor:
    """Logits (B, C, *S) of ``image`` (B, 1, *S) from roi-sized windows blended with Gaussian weights.

    The volume is padded to at least the roi (MONAI pads and crops back), so any input size works.
    """
    was_training = network.training
    network.eval()
    try:
        logits = sliding_window_inference(
            image, roi_size=tuple(roi), sw_batch_size=sw_batch_size, predictor=network, overlap=overlap, mode="gaussian"
        )
    finally:
        network.train(was_training)
    return torch.as_tensor(logits)


def mirror_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of the spatial ``axes`` (the empty one first): 2**len(axes) mirrored views."""
    return [subset for n in range(len(axes) + 1) for subset in combinations(axes, n)]


@torch.no_grad()
def predict_log_probs(
    network: nn.Module, image: torch.Tensor, roi: Sequence[int], overlap: float = 0.25, mirror_axes: Sequence[int] = ()
) -> torch.Tensor:
    """Log of the class probabilities (B, C, *S), averaged over the mirrored views of ``mirror_axes``
    (test-time augmentation as in nnU-Net: each view predicted, flipped back, softmax averaged)."""
    views = mirror_sets(mirror_axes)
    probabilities = None
    for axes in views:
        dims = [2 + a for a in axes]
        flipped = image.flip(dims) if dims else image
        p = predict_logits(network, flipped, roi, overlap).float().softmax(1)
        p = p.flip(dims) if dims else p
        probabilities = p if probabilities is None else probabilities + p
    return (probabilities / len(views)).clamp_min(torch.finfo(torch.float32).tiny).log()
