"""Dice and HD95 against values worked out by hand."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from mssl.downstream.metrics import segmentation_metrics
from mssl.viz.tables import format_mean_std, mean_std


def test_dice_of_shifted_cubes() -> None:
    label = torch.zeros(12, 12, 12, dtype=torch.long)
    prediction = torch.zeros_like(label)
    label[2:6, 2:6, 2:6] = 1
    prediction[3:7, 2:6, 2:6] = 1  # overlap 3×4×4 = 48 of 64 + 64 voxels
    metrics = segmentation_metrics(prediction, label, 2, (1.0, 1.0, 1.0))
    assert metrics.dice[0] == pytest.approx(2 * 48 / 128)


def test_hd95_uses_the_spacing() -> None:
    label = torch.zeros(12, 12, 12, dtype=torch.long)
    prediction = torch.zeros_like(label)
    label[5, 5, 5] = 1
    prediction[5, 5, 8] = 1  # 3 voxels apart along z, 2 mm each
    assert segmentation_metrics(prediction, label, 2, (1.0, 1.0, 2.0)).hd95[0] == pytest.approx(6.0)
    prediction = torch.zeros_like(label)
    prediction[8, 9, 5] = 1  # (3, 4) voxels in-plane at 0.5 mm: 2.5 mm
    assert segmentation_metrics(prediction, label, 2, (0.5, 0.5, 2.0)).hd95[0] == pytest.approx(2.5)


def test_identical_maps_and_missed_organs() -> None:
    label = torch.zeros(8, 10, 12, dtype=torch.long)
    label[1:4, 1:4, 1:4] = 1
    label[5:7, 5:8, 5:9] = 2
    perfect = segmentation_metrics(label, label, 3, (1.0, 1.0, 1.0))
    assert perfect.dice.tolist() == pytest.approx([1.0, 1.0]) and perfect.hd95.tolist() == pytest.approx([0.0, 0.0])
    missed = label.clone()
    missed[missed == 2] = 0
    metrics = segmentation_metrics(missed, label, 3, (1.0, 2.0, 3.0))
    assert metrics.dice[1] == 0.0
    assert metrics.hd95[1] == pytest.approx(math.sqrt(8**2 + 20**2 + 36**2))  # the volume diagonal in mm


def test_empty_reference_is_not_scored() -> None:
    label = torch.zeros(8, 8, 8, dtype=torch.long)
    label[1:3, 1:3, 1:3] = 1
    metrics = segmentation_metrics(label, label, 3, (1.0, 1.0, 1.0))
    assert math.isnan(metrics.dice[1]) and math.isnan(metrics.hd95[1])


def test_mean_std_ignores_nan() -> None:
    assert mean_std([0.5, float("nan"), 0.7]) == pytest.approx((0.6, math.sqrt(0.02), 2))
    assert format_mean_std([float("nan")]) == "–"


def test_nsd_is_one_on_identical_maps_zero_on_a_miss_and_quiet() -> None:
    label = torch.zeros(10, 10, 10, dtype=torch.long)
    label[2:6, 2:6, 2:6] = 1
    label[7:9, 7:9, 7:9] = 2
    missed = label.clone()
    missed[missed == 2] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # MONAI's per-case deprecation notice must not reach the user
        perfect = segmentation_metrics(label, label, 3, (1.0, 1.0, 1.0), nsd_tolerance_mm=1.0)
        metrics = segmentation_metrics(missed, label, 3, (1.0, 1.0, 1.0), nsd_tolerance_mm=1.0)
    assert perfect.nsd.tolist() == pytest.approx([1.0, 1.0])
    assert metrics.nsd.tolist() == pytest.approx([1.0, 0.0])
