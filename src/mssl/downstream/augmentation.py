"""On-the-fly augmentation of segmentation patches, after nnU-Net's default recipe, from MONAI transforms.

Spatial: rotation (±30° about each axis) and scaling (0.7–1.4) with probability 0.2 each, optional elastic
deformation; intensity: Gaussian noise (p 0.1), Gaussian blur (p 0.2), brightness (×0.75–1.25, p 0.15),
contrast (×0.75–1.25 about the mean, p 0.15), gamma (0.7–1.5, p 0.3); mirroring (p 0.5 per axis). Labels follow every spatial step
with nearest-neighbour interpolation. Deterministic under ``set_random_state``.

Mirroring along the left-right axis would swap a left and a right organ; ``default_mirror_axes`` leaves
that axis out when the class names say Left or Right. Which axis is left-right is read from the labels, not
the header: OpenKBP's headers claim RAS while its left-right axis is array axis 1, and trusting them made
every mirrored patch teach the network that a right parotid is a left one.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import torch
from monai import transforms as mt

HEADER_LEFT_RIGHT_AXIS = 0  # after RAS orientation (mssl.data.preprocess), if the header is right
SIDES = ("left", "right")


def is_sided(name: str) -> bool:
    return any(side in name.lower() for side in SIDES)


def side_pairs(class_names: Sequence[str]) -> list[tuple[int, int]]:
    """(left, right) class indices whose names differ only in the side word, e.g. LeftParotid / RightParotid."""
    def organ(name: str) -> str:
        return re.sub("|".join(SIDES), "", name.lower()).strip(" _-")

    left = {organ(n): i for i, n in enumerate(class_names) if "left" in n.lower()}
    right = {organ(n): i for i, n in enumerate(class_names) if "right" in n.lower()}
    return [(left[o], right[o]) for o in sorted(left.keys() & right.keys())]


def left_right_axis(labels: Sequence[torch.Tensor], class_names: Sequence[str]) -> int | None:
    """The array axis along which paired left and right organs lie apart, from label maps (*S) on one grid
    orientation: the axis of the largest summed |centroid difference| over every case contouring both of a
    pair. None when no case contours both organs of a pair."""
    spread = torch.zeros(3, dtype=torch.float64)
    for label in labels:
        for left, right in side_pairs(class_names):
            where_left, where_right = torch.nonzero(label == left), torch.nonzero(label == right)
            if len(where_left) and len(where_right):
                spread += (where_left.double().mean(0) - where_right.double().mean(0)).abs()
    return int(spread.argmax()) if spread.any() else None


def default_mirror_axes(class_names: Sequence[str], sided_axis: int | None = None) -> tuple[int, ...]:
    """All three axes, minus the left-right one (``sided_axis``, else the header's) when a class name says
    Left or Right."""
    if not any(is_sided(name) for name in class_names):
        return (0, 1, 2)
    skip = HEADER_LEFT_RIGHT_AXIS if sided_axis is None else sided_axis
    return tuple(a for a in range(3) if a != skip)


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
