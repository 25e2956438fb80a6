"""On-the-fly augmentation of segmentation patches, after nnU-Net's default recipe, from MONAI transforms.

Spatial: rotation (±30° about each axis) and scaling (0.7–1.4) with probability 0.2 each, optional elastic
deformation; intensity: Gaussian noise (p 0.1), Gaussian blur (p 0.2), brightness (×0.75–1.25, p 0.15),
contrast (×0.75–1.25 about the mean, p 0.15), gamma (0.7–1.5, p 0.3); mirroring (p 0.5 per axis). Labels follow every spatial step
with nearest-neighbour interpolation. Deterministic under ``set_random_state``.

Mirroring along the left-right axis would swap a left and a right organ; ``default_mirror_axes`` leaves
that axis out when the class names come in Left/Right pairs (after RAS orientation axis 0 is left-right).
"""

from __future__ import annotations

import math
from typing import Sequence

from monai import transforms as mt

LEFT_RIGHT_AXIS = 0  # RAS orientation (mssl.data.preprocess)


def default_mirror_axes(class_names: Sequence[str]) -> tuple[int, ...]:
    """All three axes, minus the left-right one when some class names say Left or Right."""
    sided = any(word in name.lower() for name in class_names for word in ("left", "right"))
    return tuple(a for a in range(3) if not (sided and a == LEFT_RIGHT_AXIS))


def training_augmentation(mirror_axes: Sequence[int], elastic: bool = False) -> mt.Compose:
    """Spatial then intensity augmentation of ``{"image", "label"}`` patches (channel-first, 3D)."""
    keys = ["image", "label"]
    angle = math.radians(30)
    spatial: list[mt.Transform] = [
        mt.RandAffined(
            keys,
            prob=0.2,
            rotate_range=(angle, angle, angle),
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        mt.RandZoomd(keys, prob=0.2, min_zoom=0.7, max_zoom=1.4, mode=("trilinear", "nearest"), keep_size=True),
    ]
    if elastic:
        spatial.append(
            mt.Rand3DElasticd(keys, sigma_range=(9, 13), magnitude_range=(0, 900), prob=0.2, mode=("bilinear", "nearest"), padding_mode="zeros")
        )
    intensity = [
        mt.RandGaussianNoised("image", prob=0.1, std=0.1),
        mt.RandGaussianSmoothd("image", prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
        mt.RandScaleIntensityd("image", factors=0.25, prob=0.15),
        mt.RandScaleIntensityFixedMeand("image", factors=0.25, prob=0.15, preserve_range=True),
        mt.RandAdjustContrastd("image", prob=0.3, gamma=(0.7, 1.5)),
    ]
    mirroring = [mt.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in mirror_axes]
    return mt.Compose([*spatial, *intensity, *mirroring])
