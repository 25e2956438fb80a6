"""GVSL losses: local squared NCC (similarity), flow smoothness, restoration MSE.

All three run in float32 even under autocast: the NCC variances cancel badly in half precision (the
nnssl reimplementation saw NaNs with float16).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sum over a window³ neighbourhood (zero padding) as three 1-D passes; ~13× cheaper than a window³ conv3d."""
    half = window // 2
    for axis in range(3):
        kernel = [1, 1, 1]
        kernel[axis] = window
        padding = [0, 0, 0]
        padding[axis] = half
        x = F.avg_pool3d(x, kernel_size=kernel, stride=1, padding=padding, count_include_pad=True)
    return x * window**3


def _window_counts(shape: tuple[int, ...], window: int, device: torch.device) -> torch.Tensor:
    """Number of in-volume voxels in each window³ box, (1, 1, X, Y, Z): the product of the per-axis counts."""
    half = window // 2
    counts = []
    for axis, n in enumerate(shape):
        index = torch.arange(n, device=device)
        count = (index + half).clamp(max=n - 1) - (index - half).clamp(min=0) + 1
        counts.append(count.float().view([-1 if i == axis else 1 for i in range(3)]))
    return (counts[0] * counts[1] * counts[2]).view(1, 1, *shape)


def local_ncc_loss(x: torch.Tensor, y: torch.Tensor, window: int, eps: float) -> torch.Tensor:
    """1 − mean squared local normalised cross-correlation of (B, C, X, Y, Z) volumes over window³ boxes.

    Squared, so anti-correlation counts as similar (as in GVSL); 0 for y = a·x + b, ≈ 1 for unrelated
    volumes, and finite on constant regions (their correlation is 0 thanks to ``eps``). Box statistics
    use only the voxels inside the volume (the official code counted the zero padding as data, so even
    y = a·x + b scored badly along the borders).
    """
    if x.shape != y.shape:
        raise ValueError(f"local_ncc_loss needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    with torch.autocast(x.device.type, enabled=False):
        x, y = x.float(), y.float()
        channels = x.shape[1]
        sums = _box_sum(torch.cat([x, y, x * x, y * y, x * y], dim=1), window)
        sum_x, sum_y, sum_xx, sum_yy, sum_xy = sums.split(channels, dim=1)
        n = _window_counts(tuple(x.shape[2:]), window, x.device)
        cross = sum_xy - sum_x * sum_y / n
        var_x = (sum_xx - sum_x * sum_x / n).clamp_min(0)
        var_y = (sum_yy - sum_y * sum_y / n).clamp_min(0)
        cc = cross * cross / (var_x * var_y + eps)
        return 1 - cc.mean()


def smoothness_loss(flow: torch.Tensor) -> torch.Tensor:
    """Mean squared forward difference of a (B, 3, X, Y, Z) flow, averaged over the three axes; 0 for a constant flow."""
    with torch.autocast(flow.device.type, enabled=False):  # differences of nearby values: bf16 would cancel them
        flow = flow.float()
        diffs = [flow.diff(dim=axis) for axis in (2, 3, 4)]
        return sum(d.square().mean() for d in diffs) / 3


def restoration_loss(restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Voxel-wise mean squared error between the restored and the clean image, in float32."""
    with torch.autocast(restored.device.type, enabled=False):
        return F.mse_loss(restored.float(), target.float())
