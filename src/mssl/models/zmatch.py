"""GVSL's Z-matching head: an affine branch on global features, a deformable branch on local features.

Direction (as in the official code): B is the moving image, A the fixed one. The head predicts the
transform that pulls B into A's space, ``warp(B, affine, flow)`` (see ``mssl.models.warp``).

Fixes over the official head: the affine matrix is built with differentiable batched ops (the official
one cut the graph, so the affine branch never trained, and crashed for batch > 1); parameters are
bounded with tanh (clamp has no gradient once saturated); the affine heads and the flow layer start
near zero, so the initial transform is the identity instead of a random constant warp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mssl.models.backbones import DoubleConv
from mssl.models.warp import affine_matrix, warp

AFFINE_HIDDEN = 256  # width of the affine conv block (official DoubleConv(1024 -> 256))
FLOW_HIDDEN = 16  # width of the deformable conv block (official DoubleConv(64 -> 16))
NEAR_ZERO_STD = 1e-5  # init of the last layers: near-identity start, gradients still flow


def _near_zero_(layer: nn.Module) -> None:
    nn.init.normal_(layer.weight, std=NEAR_ZERO_STD)
    nn.init.zeros_(layer.bias)


@dataclass(frozen=True)
class AffineBounds:
    """tanh bounds of the predicted transform: rotation ±rotation_deg, scale 1 ± scale_delta, shear ±shear_deg,
    shift ±shift_fraction of the half extent ``(size - 1) / 2`` per axis (normalised coordinates)."""

    rotation_deg: float
    scale_delta: float
    shear_deg: float
    shift_fraction: float


class AffineBranch(nn.Module):
    """cat(f^g_B, f^g_A) → DoubleConv → global average pool → rotation / scale / shear / shift heads → (B, 3, 4)."""

    def __init__(self, global_channels: int, bounds: AffineBounds) -> None:
        super().__init__()
        self.conv = DoubleConv(2 * global_channels, AFFINE_HIDDEN)
        self.rotation = nn.Linear(AFFINE_HIDDEN, 3)
        self.scale = nn.Linear(AFFINE_HIDDEN, 3)
        self.shear = nn.Linear(AFFINE_HIDDEN, 6)
        self.shift = nn.Linear(AFFINE_HIDDEN, 3)
        for head in (self.rotation, self.scale, self.shear, self.shift):
            _near_zero_(head)
        self.max_rotation = math.radians(bounds.rotation_deg)
        self.max_scale_delta = bounds.scale_delta
        self.max_shear = math.radians(bounds.shear_deg)
        self.max_shift_fraction = bounds.shift_fraction

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor, spatial_size: tuple[int, ...]) -> torch.Tensor:
        """moving, fixed: (B, C_g, *S/stride) global features; spatial_size: image size (X, Y, Z) in voxels."""
        hidden = self.conv(torch.cat([moving, fixed], dim=1)).mean(dim=(2, 3, 4))  # (B, 256)
        half_extent = torch.tensor([(n - 1) / 2 for n in spatial_size], device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):  # the matrix needs float32 precision
            hidden = hidden.float()
            return affine_matrix(
                rotation=self.max_rotation * torch.tanh(self.rotation(hidden)),
                scale=1 + self.max_scale_delta * torch.tanh(self.scale(hidden)),
                shear=self.max_shear * torch.tanh(self.shear(hidden)),
                translation=self.max_shift_fraction * half_extent * torch.tanh(self.shift(hidden)),
            )


class DeformableBranch(nn.Module):
    """cat(affine-warped f^l_B, f^l_A) → DoubleConv → 3³ conv → flow (B, 3, X, Y, Z) in voxels."""

    def __init__(self, local_channels: int) -> None:
        super().__init__()
        self.conv = DoubleConv(2 * local_channels, FLOW_HIDDEN)
        self.flow = nn.Conv3d(FLOW_HIDDEN, 3, kernel_size=3, padding=1)
        _near_zero_(self.flow)

    def forward(self, moving_warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        return self.flow(self.conv(torch.cat([moving_warped, fixed], dim=1)))


class ZMatchHead(nn.Module):
    """Predicts ``(affine (B, 3, 4), flow (B, 3, X, Y, Z))`` that pull B into A's space."""

    def __init__(self, global_channels: int, local_channels: int, bounds: AffineBounds) -> None:
        super().__init__()
        self.affine = AffineBranch(global_channels, bounds)
        self.deformable = DeformableBranch(local_channels)

    def forward(
        self,
        moving_global: torch.Tensor,
        fixed_global: torch.Tensor,
        moving_local: torch.Tensor,
        fixed_local: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Global features (B, C_g, ...) and full-resolution local features (B, C_l, X, Y, Z) of B and A."""
        affine = self.affine(moving_global, fixed_global, tuple(fixed_local.shape[2:]))
        flow = self.deformable(warp(moving_local, affine), fixed_local)
        return affine, flow
