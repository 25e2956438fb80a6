"""Connected-component post-processing, chosen per class on validation (mssl.downstream.postprocess)."""

from __future__ import annotations

import numpy as np
import torch

from mssl.downstream.metrics import segmentation_metrics
from mssl.downstream.postprocess import (
    apply_postprocessing,
    choose_postprocessing,
    chosen_operations,
    keep_largest_component,
    remove_small_islands,
    stored_operations,
)


def _reference() -> torch.Tensor:
    """Class 1: one 6³ cube; class 2: two separate 4³ cubes (an organ in two pieces)."""
    label = torch.zeros(32, 32, 32, dtype=torch.long)
    label[2:8, 2:8, 2:8] = 1
    label[20:24, 20:24, 20:24] = 2
    label[20:24, 2:6, 20:24] = 2
    return label


def _prediction() -> torch.Tensor:
    """The reference plus a stray 2³ island of class 1; class 2's second piece predicted 1 voxel smaller."""
    prediction = _reference().clone()
    prediction[26:28, 26:28, 10:12] = 1
    prediction[20, 2:6, 20:24] = 0
    return prediction


def _dice_against(reference: torch.Tensor):
    def dice_of(p: torch.Tensor, i: int) -> np.ndarray:
        return segmentation_metrics(p, reference, 3, (1.0, 1.0, 1.0), with_hd95=False).dice

    return dice_of


def test_keep_largest_component_removes_islands_of_the_chosen_class_only() -> None:
    kept = keep_largest_component(_prediction(), [1])
    assert int((kept == 1).sum()) == 6**3  # the island is gone
    assert torch.equal(kept == 2, _prediction() == 2)  # class 2 untouched
    assert torch.equal(keep_largest_component(_prediction(), []), _prediction())


def test_removing_small_islands_keeps_an_organ_in_two_pieces() -> None:
    prediction = _prediction()
    prediction[28, 28, 28] = 2  # a stray voxel of class 2 too (1 < 0.1 × 64)
    cleaned = remove_small_islands(prediction, [2])
    assert torch.equal(cleaned == 2, _prediction() == 2)  # both pieces (64 and 48 voxels) stay, the island goes
    assert torch.equal(cleaned == 1, prediction == 1)  # class 1 untouched, its island included
    assert int((keep_largest_component(prediction, [2]) == 2).sum()) == 64  # keep-largest would halve the organ
    # the threshold is relative to the largest component: at 0.8 the 48-voxel piece is an island as well
    assert int((remove_small_islands(prediction, [2], fraction=0.8) == 2).sum()) == 64
    assert torch.equal(remove_small_islands(torch.zeros(4, 4, 4, dtype=torch.long), [1]), torch.zeros(4, 4, 4, dtype=torch.long))


def test_postprocessing_is_chosen_where_it_helps_and_never_lowers_validation_dice() -> None:
    reference, prediction = _reference(), _prediction()
    prediction[28, 28, 28] = 2  # class 2: two true pieces and a stray voxel
    dice_of = _dice_against(reference)

    decisions = choose_postprocessing([prediction], dice_of, [1, 2])
    chosen = chosen_operations(decisions)
    # class 1 (one piece): both operations remove its island equally, the milder one is kept; class 2 (two
    # pieces): keep-largest would lose the second piece, removing the island helps
    assert chosen == {1: "islands", 2: "islands"}
    assert decisions[2].operations["largest"].dice < decisions[2].without
    assert decisions[2].operations["islands"].dice > decisions[2].without
    before = dice_of(prediction, 0)
    after = dice_of(apply_postprocessing(prediction, chosen), 0)
    assert np.all(after >= before) and np.all(after[:2] > before[:2])


def test_keep_largest_is_chosen_where_a_false_blob_is_too_large_to_be_an_island() -> None:
    reference = _reference()
    prediction = reference.clone()
    prediction[12:15, 12:15, 12:15] = 1  # 27 false voxels: 0.125 of the true 216, not an island
    decisions = choose_postprocessing([prediction], _dice_against(reference), [1])
    assert decisions[1].operations["islands"].dice == decisions[1].without
    assert chosen_operations(decisions) == {1: "largest"}


def test_a_class_is_not_postprocessed_when_one_validation_case_loses_even_if_the_mean_rises() -> None:
    """Case 0: a stray island of class 1 (both operations help a little). Case 1: class 1 predicted as a small
    true piece plus a larger false blob, so the largest component is the wrong one (Dice falls to 0)."""
    reference = _reference()
    island = _prediction()
    wrong_side = reference.clone()
    wrong_side[reference == 1] = 0
    wrong_side[3:5, 3:5, 3:5] = 1  # 8 true voxels: an island of the false blob (8 < 0.1 × 125)
    wrong_side[10:15, 10:15, 10:15] = 1  # 125 false voxels: the largest component
    dice_of = _dice_against(reference)

    many_islands = [island] * 30
    decisions = choose_postprocessing([*many_islands, wrong_side], dice_of, [1])
    for evidence in decisions[1].operations.values():
        assert evidence.dice > decisions[1].without  # the mean over the 31 cases rises...
        assert evidence.worst_case_change < -0.04  # ...but the wrong-side case loses its Dice (0.046 → 0)
    assert chosen_operations(decisions) == {}
    assert chosen_operations(choose_postprocessing(many_islands, dice_of, [1])) == {1: "islands"}


def test_runs_written_before_the_islands_operation_keep_their_keep_largest_classes() -> None:
    names = ["background", "Brainstem", "SpinalCord", "Mandible"]
    assert stored_operations({"classes": ["Mandible", "Brainstem"], "validation": {}}, names) == {3: "largest", 1: "largest"}
    assert stored_operations({"operations": {"SpinalCord": "islands"}, "validation": {}}, names) == {2: "islands"}
    assert stored_operations({}, names) == {}
