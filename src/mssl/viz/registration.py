"""GVSL registration overlays: fixed, moving and warped images with the deformation grid.

The grid shows where each output voxel reads the moving image, ``T(p + u(p))`` (affine and
deformable parts together, from :func:`mssl.models.warp.sampling_coordinates`), drawn in the
slice plane every few voxels; a straight grid means no motion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from mssl.models.warp import sampling_coordinates
from mssl.viz.slices import slice_centre, slice_specs, take_slice

GRID_SPACING = 4  # voxels between drawn grid lines
FIGURE_DPI = 110
COLUMNS = ("fixed (A)", "moving (B)", "warped B", "|warped B − A|", "deformation grid")


def deformation_grid(affine: torch.Tensor | None, flow: torch.Tensor | None, shape: Sequence[int]) -> np.ndarray:
    """Voxel index each output voxel samples, (X, Y, Z, 3), for the first item of the batch."""
    points = sampling_coordinates(affine, flow, shape)[0]  # (3, X, Y, Z), centred
    centre = torch.tensor([(n - 1) / 2 for n in shape], device=points.device).view(3, 1, 1, 1)
    return (points + centre).permute(1, 2, 3, 0).cpu().numpy()


def _draw_grid(axis, coordinates: np.ndarray, in_plane: tuple[int, int], aspect: float) -> None:
    """Lines through every GRID_SPACING-th row and column of a displayed slice of sampling coordinates."""
    horizontal, vertical = coordinates[..., in_plane[0]], coordinates[..., in_plane[1]]  # (rows, cols)
    for row in range(0, horizontal.shape[0], GRID_SPACING):
        axis.plot(horizontal[row], vertical[row], color="tab:orange", linewidth=0.6)
    for col in range(0, horizontal.shape[1], GRID_SPACING):
        axis.plot(horizontal[:, col], vertical[:, col], color="tab:orange", linewidth=0.6)
    axis.set_xlim(-0.5, horizontal.shape[1] - 0.5)
    axis.set_ylim(-0.5, horizontal.shape[0] - 0.5)
    axis.set_aspect(aspect)


def plot_registration(visuals: dict[str, torch.Tensor], path: str | Path, spacing: Sequence[float] = (1.0, 1.0, 1.0), title: str = "") -> Path:
    """One row per plane: fixed, moving, warped, absolute difference, and the deformation grid.

    ``visuals`` as returned by ``GVSLMethod``: "fixed", "moving", "warped" (B, C, X, Y, Z), "flow"
    (B, 3, X, Y, Z) in voxels, "affine" (B, 3, 4); the first item and channel are shown.
    """
    fixed, moving, warped = (visuals[k][0, 0].float().cpu().numpy() for k in ("fixed", "moving", "warped"))
    shape = fixed.shape
    coordinates = deformation_grid(visuals.get("affine")[:1] if "affine" in visuals else None, visuals["flow"][:1], shape)
    centre = slice_centre(fixed)
    specs = slice_specs(spacing)
    low, high = float(min(fixed.min(), moving.min())), float(max(fixed.max(), moving.max()))
    figure = Figure(figsize=(3 * len(COLUMNS), 3 * len(specs)), dpi=FIGURE_DPI, layout="constrained")
    axes = figure.subplots(len(specs), len(COLUMNS))
    for row, spec in enumerate(specs):
        index = centre[spec.axis]
        in_plane = tuple(a for a in range(3) if a != spec.axis)  # (horizontal, vertical) array axes
        panels = (fixed, moving, warped, np.abs(warped - fixed))
        for column, volume in enumerate(panels):
            limits = (0.0, high - low) if column == 3 else (low, high)
            axes[row, column].imshow(take_slice(volume, spec.axis, index), cmap="gray", vmin=limits[0], vmax=limits[1], origin="lower", aspect=spec.aspect)
        grid_axis = axes[row, len(panels)]
        grid_axis.imshow(take_slice(moving, spec.axis, index), cmap="gray", vmin=low, vmax=high, origin="lower", aspect=spec.aspect)
        _draw_grid(grid_axis, take_slice(coordinates, spec.axis, index), in_plane, spec.aspect)  # type: ignore[arg-type]
        axes[row, 0].set_ylabel(f"{spec.view} ({'xyz'[spec.axis]}={index})")
    for column, name in enumerate(COLUMNS):
        axes[0, column].set_title(name)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    flow = visuals["flow"][0].float()
    figure.suptitle(f"{title} — mean |flow| {flow.abs().mean():.2f} voxels, max {flow.abs().max():.2f}".strip(" —"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
