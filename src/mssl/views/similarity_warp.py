"""Random affine warps in voxel coordinates and the one resampler that applies them.

Convention used everywhere in S²DC: a warp is a (B, 4, 4) homogeneous matrix ``A`` in voxel-index
coordinates (voxel centres at integers, axes in tensor order x, y, z) that maps an *output* voxel
to the *input* point it samples: ``warped(p) = volume(A p)``. Content found at ``q`` in the input
therefore lands at ``A⁻¹ q`` in the output; correspondences use that exact inverse.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _uniform(shape: tuple[int, ...], low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, device=device, dtype=torch.float64) * (high - low) + low


def _rotation_z(angle: torch.Tensor) -> torch.Tensor:
    """(…,) radians → (…, 3, 3) rotation about the z axis (in-plane, x-y)."""
    cos, sin = angle.cos(), angle.sin()
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack(
        [torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1), torch.stack([zero, zero, one], -1)], -2
    )


def _about_centre(linear: torch.Tensor, centre: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Homogeneous (…, 4, 4) matrix of ``p ↦ centre + linear (p − centre) + shift``."""
    matrix = torch.zeros(*linear.shape[:-2], 4, 4, dtype=linear.dtype, device=linear.device)
    matrix[..., :3, :3] = linear
    matrix[..., :3, 3] = centre - (linear @ centre.unsqueeze(-1)).squeeze(-1) + shift
    matrix[..., 3, 3] = 1.0
    return matrix


def random_similarity(
    batch: int,
    size: tuple[int, int, int],
    rotation_deg: float,
    scale_range: tuple[float, float],
    shift_fraction: float,
    device: torch.device,
) -> torch.Tensor:
    """(B, 4, 4) float64 warps of a field: rotation about z, isotropic scale, in-plane shift, about the centre."""
    angle = torch.deg2rad(_uniform((batch,), -rotation_deg, rotation_deg, device))
    scale = _uniform((batch, 1, 1), *scale_range, device)
    shift = torch.zeros(batch, 3, dtype=torch.float64, device=device)
    for axis in range(2):  # in-plane only; z stays aligned
        bound = shift_fraction * size[axis]
        shift[:, axis] = _uniform((batch,), -bound, bound, device)
    centre = torch.tensor([(s - 1) / 2 for s in size], dtype=torch.float64, device=device)
    return _about_centre(_rotation_z(angle) * scale, centre, shift)


def random_crop_affines(
    shape: tuple[int, ...],
    roi: int,
    rotation_deg: float,
    scale_range: tuple[float, float],
    shift_fraction: float,
    device: torch.device,
) -> torch.Tensor:
    """(*shape, 4, 4) float64 mild affines of roi³ crops: rotation about z, per-axis scale, in-plane shift."""
    angle = torch.deg2rad(_uniform(shape, -rotation_deg, rotation_deg, device))
    scale = torch.diag_embed(_uniform((*shape, 3), *scale_range, device))
    bound = shift_fraction * roi
    shift = _uniform((*shape, 3), -bound, bound, device)
    shift[..., 2] = 0.0
    centre = torch.full((3,), (roi - 1) / 2, dtype=torch.float64, device=device)
    return _about_centre(_rotation_z(angle) @ scale, centre, shift)


def voxel_grid(size: tuple[int, int, int], device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(X, Y, Z, 3) voxel-index coordinates of every voxel of a volume of ``size``."""
    axes = [torch.arange(s, device=device, dtype=dtype) for s in size]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def apply_affine(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map (*batch, *spatial, 3) points with (*batch, 4, 4) matrices (one matrix per batch entry)."""
    batch_dims = matrix.dim() - 2
    flat = points.reshape(*points.shape[:batch_dims], -1, 3)  # (*batch, P, 3)
    mapped = flat @ matrix[..., :3, :3].transpose(-1, -2) + matrix[..., :3, 3].unsqueeze(-2)
    return mapped.reshape(points.shape)


def sample_at(volume: torch.Tensor, points: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample (B, C, X, Y, Z) at (B, *out, 3) voxel coordinates → (B, C, *out); zeros outside.

    One ``grid_sample`` call for the whole batch; ``align_corners=True`` matches voxel-index coordinates.
    """
    extent = torch.tensor([s - 1 for s in volume.shape[2:]], device=points.device, dtype=points.dtype)
    normalised = (2 * points / extent.clamp(min=1) - 1).flip(-1)  # grid_sample wants (z, y, x)
    normalised = normalised.to(volume.dtype)
    return F.grid_sample(volume, normalised, mode=mode, padding_mode="zeros", align_corners=True)


def warp_volume(volume: torch.Tensor, matrix: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``warped(p) = volume(A p)`` for (B, C, X, Y, Z) volumes and (B, 4, 4) warps."""
    grid = voxel_grid(tuple(volume.shape[2:]), volume.device)  # (X, Y, Z, 3)
    points = apply_affine(matrix.to(grid.dtype), grid.expand(volume.shape[0], *grid.shape))
    return sample_at(volume, points, mode=mode)

