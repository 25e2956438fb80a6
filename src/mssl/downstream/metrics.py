"""Segmentation metrics per case and class: Dice, HD95 and normalised surface Dice (MONAI), partial labels respected.

A class that was not contoured in a case gets NaN (excluded from every mean), never 0. A contoured
class the prediction misses entirely gets Dice 0 and, since a distance to nothing is undefined, HD95
equal to the volume's diagonal in millimetres (the worst possible value, stated in every summary) and
NSD 0. NSD is the share of both surfaces lying within a tolerance (mm) of the other surface.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric
from monai.networks.utils import one_hot


@dataclass
class CaseMetrics:
    """Dice, HD95 (mm) and NSD per foreground class of one case; NaN where the class is not evaluable
    (or the metric was not asked for)."""

    dice: np.ndarray  # (C - 1,)
    hd95: np.ndarray  # (C - 1,)
    nsd: np.ndarray  # (C - 1,)


def segmentation_metrics(
    prediction: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    spacing: Sequence[float],
    present: torch.Tensor | None = None,
    with_hd95: bool = True,
    nsd_tolerance_mm: float | None = None,
) -> CaseMetrics:
    """Dice and HD95 of one case.

    prediction, label: integer maps (*S) or (1, *S); num_classes counts background; spacing in mm per
    axis; present: (num_classes,) bool, absent classes are NaN. A present class with an empty reference
    (e.g. outside the field of view) is NaN as well. ``with_hd95=False`` skips the distance transform
    (validation during training needs Dice only); NSD is computed when ``nsd_tolerance_mm`` is given.
    """
    prediction = prediction.reshape(1, 1, *prediction.shape[-len(spacing) :]).long()
    label = label.reshape(1, 1, *label.shape[-len(spacing) :]).long()
    if prediction.shape != label.shape:
        raise ValueError(f"prediction shape {tuple(prediction.shape)} differs from label shape {tuple(label.shape)}")
    pred_1h = one_hot(prediction, num_classes)  # (1, C, *S)
    label_1h = one_hot(label, num_classes)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(pred_1h, label_1h)[0]
    hd95 = torch.full((num_classes - 1,), float("nan"))
    reference_present = label_1h[0, 1:].flatten(1).any(1)
    predicted = pred_1h[0, 1:].flatten(1).any(1)
    both = reference_present & predicted
    nsd = torch.full((num_classes - 1,), float("nan"))
    with warnings.catch_warnings():
        # empty classes are handled below, MONAI's warning about them is noise; MONAI ≥ 1.5 also warns, per case,
        # about a deprecated argument its own distance code passes
        warnings.filterwarnings("ignore", message=".* is all 0, this may result in nan/inf distance")
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        if with_hd95 and both.any():
            distances = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
                pred_1h, label_1h, spacing=[float(s) for s in spacing]
            )[0]
            hd95[both] = distances[both].float()
        if nsd_tolerance_mm is not None and both.any():
            thresholds = [nsd_tolerance_mm] * (num_classes - 1)
            surface_dice = SurfaceDiceMetric(class_thresholds=thresholds, include_background=False, reduction="none")
            nsd[both] = surface_dice(pred_1h, label_1h, spacing=[float(s) for s in spacing])[0][both].float()
    if nsd_tolerance_mm is not None:
        nsd[reference_present & ~predicted] = 0.0
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(label.shape[2:], spacing)))
    if with_hd95:
        hd95[reference_present & ~predicted] = diagonal
    dice = dice.float().cpu()
    if present is not None:
        absent = ~present.bool().cpu()[1:]
        dice[absent] = float("nan")
        hd95[absent] = float("nan")
        nsd[absent] = float("nan")
    return CaseMetrics(dice=dice.numpy(), hd95=hd95.numpy(), nsd=nsd.numpy())
