"""GVSL's self-restoration head ("fundament"): rebuild the clean image from the local features of the damaged one."""

from __future__ import annotations

import torch
from torch import nn

RESTORE_HIDDEN = 16
RESTORE_GROUPS = 4  # official GroupNorm(4 groups) on 16 channels


class RestorationHead(nn.Module):
    """Conv3d 3³ → GroupNorm → LeakyReLU 0.2 → Conv3d 1³ (the official layout; the paper draws a 3³ last conv)."""

    def __init__(self, local_channels: int, out_channels: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv3d(local_channels, RESTORE_HIDDEN, kernel_size=3, padding=1),
            nn.GroupNorm(RESTORE_GROUPS, RESTORE_HIDDEN),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv3d(RESTORE_HIDDEN, out_channels, kernel_size=1),
        )

    def forward(self, local: torch.Tensor) -> torch.Tensor:
        """local: (B, C_l, X, Y, Z) → restored image (B, out_channels, X, Y, Z)."""
        return self.layers(local)
