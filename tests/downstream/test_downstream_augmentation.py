"""Left-right handling of the fine-tuning augmentation (mssl.downstream.augmentation)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import torch

from mssl.data.demo import demo_datalist
from mssl.downstream.augmentation import default_mirror_axes, left_right_axis, side_pairs

NAMES = ["background", "Brainstem", "RightParotid", "LeftParotid", "Mandible"]


def _two_parotids(axis: int) -> torch.Tensor:
    """A 20³ label map: a midline organ, and right/left parotids 10 voxels apart along ``axis``."""
    label = torch.zeros(20, 20, 20, dtype=torch.long)
    label[8:12, 8:12, 8:12] = 1
    right, left = [slice(8, 12)] * 3, [slice(8, 12)] * 3
    right[axis], left[axis] = slice(2, 6), slice(12, 16)
    label[tuple(right)], label[tuple(left)] = 2, 3
    return label


def test_side_pairs_match_organs_by_name_without_the_side_word() -> None:
    assert side_pairs(NAMES) == [(3, 2)]
    assert side_pairs(["background", "kidney_left", "kidney_right", "left_lung"]) == [(1, 2)]
    assert side_pairs(["background", "Brainstem"]) == []


def test_the_left_right_axis_is_where_paired_organs_lie_apart_whatever_the_header_says() -> None:
    for axis in range(3):
        assert left_right_axis([_two_parotids(axis)], NAMES) == axis
        assert default_mirror_axes(NAMES, left_right_axis([_two_parotids(axis)], NAMES)) == tuple(a for a in range(3) if a != axis)


def test_without_a_case_contouring_both_sides_the_header_axis_is_kept() -> None:
    one_sided = _two_parotids(1)
    one_sided[one_sided == 3] = 0
    assert left_right_axis([one_sided], NAMES) is None
    assert default_mirror_axes(NAMES, None) == (1, 2)  # RAS: axis 0
    assert default_mirror_axes(["background", "Brainstem", "Mandible"], 1) == (0, 1, 2)  # nothing sided: mirror all


def test_openkbp_left_right_lies_along_array_axis_1_despite_its_ras_header(tmp_path) -> None:
    """The embedded demo CTs (OpenKBP): headers say RAS, but the parotids lie apart along axis 1; mirroring
    axis 1 would teach the network to swap them."""
    path = demo_datalist(tmp_path / "demo.json")
    meta = json.loads(path.read_text(encoding="utf-8"))
    names = [meta["labels"][str(i)] for i in range(len(meta["labels"]))]
    entry = meta["training"][0]
    image = nib.load(path.parent / entry["label"])
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    label = torch.as_tensor(np.asarray(image.dataobj).astype(np.int64))
    assert left_right_axis([label], names) == 1
