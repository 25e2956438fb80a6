"""Sliding-window prediction shared by validation, evaluation and the benchmark."""

from __future__ import annotations

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
