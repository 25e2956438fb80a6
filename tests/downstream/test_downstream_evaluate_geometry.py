"""Predictions go back to the input's own grid: predict-and-invert of a label map reproduces it."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mssl.data.sources import Case
from mssl.downstream.evaluate import predict_case
from mssl.downstream.metrics import segmentation_metrics

CLASSES = ["background", "box", "ball"]
INTENSITY_PER_CLASS = 100.0


class LabelOracle(nn.Module):
    """A 'network' that reads the class off the intensity (image = class × 100), as confident logits."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))  # predict_case asks for the device of a parameter

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        classes = (image[:, 0] / INTENSITY_PER_CLASS).round().long().clamp(0, len(CLASSES) - 1)
        return 20.0 * F.one_hot(classes, len(CLASSES)).permute(0, 4, 1, 2, 3).float() + 0 * self.anchor


def _synthetic_case(folder: Path) -> tuple[Case, np.ndarray]:
    """An anisotropic, flipped, offset grid (LPS-like) with a box and a ball, and an image encoding them."""
    label = np.zeros((48, 44, 26), dtype=np.uint8)
    label[6:42, 5:39, 3:23] = 1
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in label.shape), indexing="ij"))
    centre = np.array([24, 22, 13]).reshape(3, 1, 1, 1)
    label[(((grid - centre) * np.array([1.2, 0.9, 2.0]).reshape(3, 1, 1, 1)) ** 2).sum(0) < 11.0**2] = 2
    affine = np.diag([-1.2, -0.9, 2.0, 1.0])
    affine[:3, 3] = (40.0, -12.5, 7.0)
    image = label.astype(np.float32) * INTENSITY_PER_CLASS
    nib.save(nib.Nifti1Image(image, affine), str(folder / "image.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(folder / "label.nii.gz"))
    return Case("synthetic", folder / "image.nii.gz", folder / "label.nii.gz", {}), label


def test_predict_and_invert_reproduces_the_label_on_the_input_grid(tmp_path: Path) -> None:
    case, label = _synthetic_case(tmp_path)
    description = {
        "trained_classes": [True, True, True],
        # reorientation to RAS, a crop to the foreground box and resampling to 1.25 mm all get inverted
        "preset": {"name": "none", "spacing": (1.25, 1.25, 1.25), "foreground_crop": True},
        "roi": [32, 32, 32],
    }
    prediction, item = predict_case(LabelOracle(), case, description, CLASSES, overlap=0.25, mirror_axes=(0, 1, 2))
    assert tuple(item["image"].shape[1:]) != label.shape  # the network saw another grid
    assert prediction.shape == label.shape
    dice = segmentation_metrics(torch.from_numpy(prediction), torch.from_numpy(label.astype(np.int64)), 3, (1.2, 0.9, 2.0), with_hd95=False).dice
    assert np.all(dice >= 0.99), dice
