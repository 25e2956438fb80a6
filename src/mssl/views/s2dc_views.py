"""The three S²DC views of a field, built on the training device in a few batched tensor ops.

student:        the roi³ grid crops of the field as they are.
teacher_tokens: the same grid cut from the field after one random in-plane similarity warp
                (token losses; correspondences by the exact inverse of that warp).
teacher_global: each grid crop resampled from the field with its own mild affine (global loss), so
                shifted content comes from the neighbouring field instead of zero padding.
Both teacher views get the official random intensity shift: one per warped field (token view), one
per crop (global view).

Deviation from the official global-view affine (rotation ±20° about x and y, shift ±24 voxels at roi 96,
scale factors in (0, 2) by a MONAI range mix-up): ours rotates ±10° about z, shifts ±6.25 % of roi
(±6 voxels) in-plane and scales 0.95–1.05 (the intended scale). Measured over 2000 draws
(benchmarks/results/s2dc_global_view.md): a teacher crop reads 95.5 % its own student crop and 4.5 %
neighbouring crops, which are its negatives in L_g; with the official rotation and shift ranges it would
read 86.5 % its own crop and 13.5 % zero padding (up to 28.5 % at the 95th percentile), or 11.7 %
neighbouring crops when read from the field as here. We keep the positive pair mostly the same content;
the downstream effect of either choice has not been measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mssl.views.correspondence import token_correspondence
from mssl.views.similarity_warp import (
    apply_affine,
    random_crop_affines,
    random_similarity,
    sample_at,
    voxel_grid,
    warp_volume,
)


@dataclass
class S2DCViews:
    """Crops are (B·K, C, roi, roi, roi), crop k of sample b at row b·K + k (grid order x, y, z)."""

    student: torch.Tensor
    teacher_tokens: torch.Tensor
    teacher_global: torch.Tensor
    warped_field: torch.Tensor  # (B, C, X, Y, Z) the teacher's token field
    warp: torch.Tensor  # (B, 4, 4) float64, teacher_field(p) = field(warp p)
    match: torch.Tensor  # (B, N) teacher token index per student token, -1 when unmatched


@dataclass(frozen=True)
class S2DCViewParams:
    """The grid and the random ranges of the teacher views (``mssl.methods.s2dc.view_params`` maps the config)."""

    crop_side: int  # the cubic grid crops
    # token view: one in-plane similarity warp of the whole field
    rotation_deg: float
    scale_range: tuple[float, float]
    shift_fraction: float  # of the field side
    # global view: each crop with its own mild affine
    crop_rotation_deg: float
    crop_scale_range: tuple[float, float]
    crop_shift_fraction: float  # of the crop side
    # both teacher views: U(−intensity_shift, intensity_shift) added with probability intensity_shift_prob
    intensity_shift: float
    intensity_shift_prob: float


def crop_grid_shape(field_size: tuple[int, ...], roi: int) -> tuple[int, int, int]:
    """Crops along each axis; the field must be a multiple of ``roi``."""
    if any(s % roi for s in field_size):
        raise ValueError(f"field size {tuple(field_size)} is not a multiple of roi {roi} on every axis")
    return tuple(s // roi for s in field_size)  # type: ignore[return-value]


def grid_crops(field: torch.Tensor, roi: int) -> torch.Tensor:
    """(B, C, X, Y, Z) → (B·K, C, roi, roi, roi) non-overlapping crops tiling the field."""
    b, c = field.shape[:2]
    gx, gy, gz = crop_grid_shape(field.shape[2:], roi)
    tiles = field.reshape(b, c, gx, roi, gy, roi, gz, roi).permute(0, 2, 4, 6, 1, 3, 5, 7)
    return tiles.reshape(b * gx * gy * gz, c, roi, roi, roi)


def tokens_to_field(tokens: torch.Tensor, crops: tuple[int, int, int]) -> torch.Tensor:
    """Per-crop token maps (B·K, C, t, t, t) → (B, N, C) tokens of the whole field, row-major (x, y, z)."""
    gx, gy, gz = crops
    n_crops, c, t = tokens.shape[0], tokens.shape[1], tokens.shape[2]
    b = n_crops // (gx * gy * gz)
    mosaic = tokens.reshape(b, gx, gy, gz, c, t, t, t).permute(0, 1, 5, 2, 6, 3, 7, 4)  # (B, gx, t, gy, t, gz, t, C)
    return mosaic.reshape(b, gx * t * gy * t * gz * t, c)


def _intensity_shift(volumes: torch.Tensor, shift: float, prob: float) -> torch.Tensor:
    """Add U(−shift, shift) to each volume (a whole field or a crop) with probability ``prob``."""
    shape = (volumes.shape[0],) + (1,) * (volumes.dim() - 1)
    offset = (torch.rand(shape, device=volumes.device) * 2 - 1) * shift
    apply = torch.rand(shape, device=volumes.device) < prob
    return volumes + torch.where(apply, offset, torch.zeros_like(offset)).to(volumes.dtype)


def _global_view(field: torch.Tensor, params: S2DCViewParams) -> torch.Tensor:
    """Every grid crop resampled from the field through its own mild affine; one grid_sample."""
    b, c = field.shape[:2]
    roi = params.crop_side
    crops = crop_grid_shape(field.shape[2:], roi)
    k = crops[0] * crops[1] * crops[2]
    affines = random_crop_affines(
        (b, k), roi, params.crop_rotation_deg, params.crop_scale_range, params.crop_shift_fraction, field.device
    )
    origins = voxel_grid(crops, field.device, torch.float64).reshape(k, 3) * roi  # (K, 3) crop corners
    affines[..., :3, 3] += origins
    local = voxel_grid((roi,) * 3, field.device)  # (r, r, r, 3)
    points = apply_affine(affines.float(), local.expand(b, k, *local.shape))  # (B, K, r, r, r, 3)
    sampled = sample_at(field, points.reshape(b, k * roi, roi, roi, 3))  # (B, C, K·r, r, r)
    return sampled.reshape(b, c, k, roi, roi, roi).transpose(1, 2).reshape(b * k, c, roi, roi, roi)


@torch.no_grad()
def make_s2dc_views(field: torch.Tensor, params: S2DCViewParams, token_stride: int) -> S2DCViews:
    """Build the student and both teacher views of a (B, C, X, Y, Z) field, plus token correspondences."""
    size = tuple(field.shape[2:])
    warp = random_similarity(
        field.shape[0], size, params.rotation_deg, params.scale_range, params.shift_fraction, field.device
    )
    shift, prob = params.intensity_shift, params.intensity_shift_prob
    warped = _intensity_shift(warp_volume(field, warp), shift, prob)  # one shift per warped field, as officially
    teacher_tokens = grid_crops(warped, params.crop_side)
    teacher_global = _intensity_shift(_global_view(field, params), shift, prob)  # one per crop, as officially
    return S2DCViews(
        student=grid_crops(field, params.crop_side),
        teacher_tokens=teacher_tokens,
        teacher_global=teacher_global,
        warped_field=warped,
        warp=warp,
        match=token_correspondence(warp, size, token_stride),  # type: ignore[arg-type]
    )
