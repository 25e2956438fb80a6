"""Projection MLPs that map backbone features to the embedding space of a self-supervised loss."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ProjectionHead(nn.Module):
    """Linear → BN → ReLU → Linear → BN → ReLU → Linear, L2-normalised output.

    Input (…, in_features): every leading axis is flattened into one batch, so BatchNorm always
    normalises each *feature* over all tokens/crops (the official token head normalised the wrong
    axis). BN uses batch statistics in train and eval alike (no running buffers), as the VoCo/S²DC
    heads do, so student and EMA teacher behave the same whatever their mode.
    """

    def __init__(self, in_features: int, hidden_features: int, out_features: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_features, hidden_features),
            nn.BatchNorm1d(hidden_features, track_running_stats=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_features, hidden_features),
            nn.BatchNorm1d(hidden_features, track_running_stats=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_features, out_features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])  # (B·N, in_features)
        projected = self.mlp(flat)
        with torch.autocast(projected.device.type, enabled=False):  # unit vectors for the fp32 cosine / InfoNCE logits
            return F.normalize(projected.float(), dim=-1).reshape(*x.shape[:-1], -1)
