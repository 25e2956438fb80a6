"""Patch size from the data and foreground oversampling (mssl.downstream.sampling)."""

from __future__ import annotations

import math

import pytest
import torch

from monai.data import Dataset

from mssl.downstream.sampling import automatic_roi, patch_sampler, training_loader


def test_automatic_roi_rounds_the_median_shape_up_to_the_stride() -> None:
    shapes = [(60, 46, 103), (65, 108, 111), (54, 119, 125)]  # median 60, 108, 111
    assert automatic_roi(shapes, stride=8, max_voxels=10**9) == (64, 112, 112)


def test_automatic_roi_shrinks_the_largest_axis_to_the_memory_budget() -> None:
    roi = automatic_roi([(64, 128, 96)], stride=16, max_voxels=64 * 96 * 96)
    assert roi == (64, 96, 96)
    assert math.prod(roi) <= 64 * 96 * 96 and all(r % 16 == 0 for r in roi)


def test_automatic_roi_refuses_a_budget_below_one_stride_cube() -> None:
    with pytest.raises(ValueError, match="max_roi_voxels"):
        automatic_roi([(64, 64, 64)], stride=16, max_voxels=100)


def _blob_case() -> dict[str, torch.Tensor]:
    """A 48³ volume whose only foreground is a 3³ blob of class 2 in the middle."""
    label = torch.zeros(1, 48, 48, 48)
    label[:, 22:25, 22:25, 22:25] = 2
    return {"image": torch.rand(1, 48, 48, 48), "label": label}


@pytest.mark.parametrize("fraction", [0.0, 1 / 3, 1.0])
def test_foreground_share_matches_the_setting(fraction: float) -> None:
    sampler = patch_sampler((8, 8, 8), num_classes=3, foreground_fraction=fraction)
    sampler.set_random_state(seed=0)
    case = _blob_case()
    draws = 1000
    hits = sum(int((sampler(case)[0]["label"] > 0).any()) for _ in range(draws))
    # a uniformly placed 8³ patch touches the 3³ blob with probability (3 + 7)³ / 41³
    by_chance = (10 / 41) ** 3
    expected = fraction + (1 - fraction) * by_chance
    assert abs(hits / draws - expected) <= 0.05


def test_patches_are_padded_to_the_roi_and_keep_image_and_label_aligned() -> None:
    sampler = patch_sampler((16, 16, 16), num_classes=2, foreground_fraction=1.0)
    sampler.set_random_state(seed=1)
    label = torch.zeros(1, 10, 12, 20)
    label[:, 4:6, 5:7, 8:12] = 1
    case = {"image": label.clone() * 5.0, "label": label}
    patch = sampler(case)[0]
    assert tuple(patch["image"].shape) == (1, 16, 16, 16)
    assert torch.equal(patch["image"] / 5.0, patch["label"])  # the same crop of both
    assert int(patch["label"].sum()) == 16  # the whole 2×2×4 organ inside the padded patch


def _draws(rank: int, done_steps: int = 0, steps: int = 4) -> list[tuple[list[int], torch.Tensor]]:
    """What one process of a 2-process run draws: per step, the cases (their image's marker value) and the patches."""
    torch.manual_seed(0)  # the same six volumes for every call
    cases = []
    for number in range(6):
        case = _blob_case()
        case["image"] = torch.full_like(case["image"], float(number)) + case["image"] * 1e-3  # the case is readable from its patch
        cases.append(case)
    dataset = Dataset(cases, transform=patch_sampler((8, 8, 8), num_classes=3, foreground_fraction=0.5))
    loader = training_loader(dataset, batch_size=2, total_steps=steps, done_steps=done_steps, seed=7, rank=rank)
    return [(batch["image"].flatten(1)[:, 0].floor().int().tolist(), batch["image"]) for batch in loader]


def test_each_rank_draws_its_own_cases_and_patches_reproducibly() -> None:
    """DDP: rank 1 must not train on rank 0's patches; each rank's stream is fixed by the seed."""
    rank0, rank1 = _draws(rank=0), _draws(rank=1)
    assert len(rank0) == len(rank1) == 4
    assert [cases for cases, _ in rank0] != [cases for cases, _ in rank1]
    assert all(not torch.equal(a, b) for (_, a), (_, b) in zip(rank0, rank1))  # no step has the same patches on both ranks
    again = _draws(rank=0)
    assert [cases for cases, _ in again] == [cases for cases, _ in rank0]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(again, rank0))


def test_a_resumed_loader_continues_the_case_order() -> None:
    full, resumed = _draws(rank=1), _draws(rank=1, done_steps=2)
    assert [cases for cases, _ in resumed] == [cases for cases, _ in full[2:]]
