"""Axial, coronal and sagittal slices of RAS volumes, oriented for display.

Volumes are (X, Y, Z) arrays in RAS order (what ``mssl prepare`` writes): an axial slice is
``v[:, :, z]``, coronal ``v[:, y, :]``, sagittal ``v[x, :, :]``. Each slice is returned transposed so
that ``imshow(..., origin="lower")`` puts the second axis (anterior or superior) up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

VIEWS = ("axial", "coronal", "sagittal")
FOREGROUND_FRACTION = 0.05  # voxels above min + 5% of the range count as body for centring and masks


@dataclass(frozen=True)
class SliceSpec:
    """One plane: its name, the axis it cuts, and the aspect ratio of its displayed pixels."""

    view: str
    axis: int
    aspect: float


def foreground_mask(volume: np.ndarray) -> np.ndarray:
    low, high = float(volume.min()), float(volume.max())
    return volume > low + FOREGROUND_FRACTION * (high - low)


def slice_centre(volume: np.ndarray) -> tuple[int, int, int]:
    """Centre of mass of the foreground (the volume centre when it is empty)."""
    mask = foreground_mask(volume)
    if not mask.any():
        return tuple(n // 2 for n in volume.shape)  # type: ignore[return-value]
    return tuple(int(round(float(c.mean()))) for c in np.nonzero(mask))  # type: ignore[return-value]


def slice_specs(spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> list[SliceSpec]:
    """Planes in VIEWS order; aspect = vertical / horizontal voxel size of the displayed (transposed) slice."""
    sx, sy, sz = (float(s) for s in spacing)
    return [SliceSpec("axial", 2, sy / sx), SliceSpec("coronal", 1, sz / sx), SliceSpec("sagittal", 0, sz / sy)]


def take_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """``volume`` (X, Y, Z, ...) cut at ``index`` along ``axis`` (0–2), transposed for ``origin="lower"``.

    Trailing axes (e.g. RGB) are kept last.
    """
    plane = np.take(volume, index, axis=axis)  # (A, B, ...) with A < B the remaining spatial axes
    return np.swapaxes(plane, 0, 1)
