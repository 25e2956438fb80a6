"""One differentiable resampler: an affine map composed with a dense flow, sampled once.

Conventions (shared by GVSL, its augmentation and the registration overlays):

- Arrays are ``(B, C, X, Y, Z)``; a point ``p = (x, y, z)`` is a voxel index along array axes 2, 3, 4.
- Pull-back: ``warp(image, affine, flow)(p) = image(T(p + u(p)))``. The output voxel ``p`` reads the
  input at ``T(p + u(p))``, so a translation ``t`` moves the image content by ``-t``.
- ``affine`` ``(B, 3, 4) = [M | t]`` acts on voxel coordinates centred on the volume, in voxel units:
  ``T(p) = M (p - c) + t + c`` with ``c = (size - 1) / 2``. Voxels count as isotropic, so a rotation is
  rigid on non-cubic volumes and ``t`` is a shift in voxels along (X, Y, Z).
- ``flow`` ``(B, 3, X, Y, Z)``: displacement in voxels, channels ordered like the array axes (X, Y, Z).
- Sampling uses ``align_corners=True``, which matches the normalisation ``2 p / (size - 1) - 1``: an
  identity affine with a zero flow reproduces the input up to the float32 rounding of that round trip
  (measured max error on U[0, 1) noise: 2e-6 at 16³, 1e-5 at 64³, 1.5e-5 at 96³; the official sampler's
  zero flow was off by up to 0.85 at 96³).
- Coordinates and sampling run in float32 even under autocast (bf16 cannot address voxels of a
  ~100-voxel axis to better than a few tenths of a voxel).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.nn import functional as F


def identity_grid(
    shape: Sequence[int], device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Voxel indices of a volume of ``shape`` (X, Y, Z): a ``(3, X, Y, Z)`` tensor, channel i = index on axis i."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def _centred_grid(shape: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(3, X, Y, Z)`` voxel coordinates relative to the volume centre ``(size - 1) / 2``."""
    centre = torch.tensor([(n - 1) / 2 for n in shape], device=device, dtype=dtype).view(3, 1, 1, 1)
    return identity_grid(shape, device, dtype) - centre


def affine_matrix(
    rotation: torch.Tensor, scale: torch.Tensor, shear: torch.Tensor, translation: torch.Tensor
) -> torch.Tensor:
    """Batched, differentiable ``[Sh · S · Rz · Ry · Rx | t]`` (the GVSL composition), shape (B, 3, 4).

    rotation (B, 3): angles in radians about X, Y, Z. scale (B, 3): per-axis factors. shear (B, 6): angles
    in radians entering the matrix as tangents at (x,y), (x,z), (y,x), (y,z), (z,x), (z,y).
    translation (B, 3): voxels along (X, Y, Z).
    """
    one = torch.ones_like(rotation[:, 0])
    zero = torch.zeros_like(one)
    cos, sin = rotation.cos(), rotation.sin()

    def matrix(*rows: Sequence[torch.Tensor]) -> torch.Tensor:  # 3 rows of 3 (B,) tensors -> (B, 3, 3)
        return torch.stack([torch.stack(list(row), dim=-1) for row in rows], dim=-2)

    rot_x = matrix((one, zero, zero), (zero, cos[:, 0], -sin[:, 0]), (zero, sin[:, 0], cos[:, 0]))
    rot_y = matrix((cos[:, 1], zero, sin[:, 1]), (zero, one, zero), (-sin[:, 1], zero, cos[:, 1]))
    rot_z = matrix((cos[:, 2], -sin[:, 2], zero), (sin[:, 2], cos[:, 2], zero), (zero, zero, one))
    tan = shear.tan()
    shear_m = matrix((one, tan[:, 0], tan[:, 1]), (tan[:, 2], one, tan[:, 3]), (tan[:, 4], tan[:, 5], one))
    linear = shear_m @ torch.diag_embed(scale) @ rot_z @ rot_y @ rot_x
    return torch.cat([linear, translation.unsqueeze(-1)], dim=-1)


def sampling_coordinates(
    affine: torch.Tensor | None, flow: torch.Tensor | None, shape: Sequence[int], batch: int = 1
) -> torch.Tensor:
    """Where each output voxel reads the input, ``T(p + u(p))``, as centred voxel coordinates (B, 3, X, Y, Z).

    Add ``(size - 1) / 2`` per axis to get voxel indices (e.g. to draw a deformed grid).
    """
    reference = affine if affine is not None else flow
    device = reference.device if reference is not None else torch.device("cpu")
    points = _centred_grid(shape, device, torch.float32).unsqueeze(0)  # (1, 3, X, Y, Z)
    if flow is not None:
        points = points + flow.float()
    if affine is not None:
        affine = affine.float()
        points = torch.einsum("bij,bj...->bi...", affine[:, :, :3], points) + affine[:, :, 3, None, None, None]
    if points.shape[0] != batch and points.shape[0] == 1:
        points = points.expand(batch, *points.shape[1:])
    return points


def warp(
    image: torch.Tensor,
    affine: torch.Tensor | None = None,
    flow: torch.Tensor | None = None,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Resample ``image`` (B, C, X, Y, Z) at ``T(p + u(p))`` with a single ``grid_sample`` (see module doc).

    affine: (B, 3, 4) or None (identity); flow: (B, 3, X, Y, Z) in voxels or None (zero). The output has
    the image's shape and dtype; the sampling itself runs in float32.
    """
    if image.ndim != 5:
        raise ValueError(f"warp expects an image of shape (B, C, X, Y, Z), got {tuple(image.shape)}")
    shape = image.shape[2:]
    if flow is not None and (flow.shape[1] != 3 or flow.shape[2:] != shape):
        raise ValueError(f"flow must have shape (B, 3, {', '.join(map(str, shape))}), got {tuple(flow.shape)}")
    if affine is not None and affine.shape[1:] != (3, 4):
        raise ValueError(f"affine must have shape (B, 3, 4), got {tuple(affine.shape)}")
    with torch.autocast(image.device.type, enabled=False):
        points = sampling_coordinates(affine, flow, shape, image.shape[0])  # (B, 3, X, Y, Z)
        to_unit = torch.tensor([2.0 / max(n - 1, 1) for n in shape], device=image.device).view(1, 3, 1, 1, 1)
        # grid_sample wants (B, X, Y, Z, 3) with the last array axis first.
        grid = (points * to_unit).flip(1).permute(0, 2, 3, 4, 1)
        out = F.grid_sample(image.float(), grid, mode=mode, padding_mode=padding_mode, align_corners=True)
    return out.to(image.dtype)
