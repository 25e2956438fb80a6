"""Keep-largest-component, chosen per class on validation (mssl.downstream.postprocess)."""

from __future__ import annotations

import numpy as np
import torch

from mssl.downstream.metrics import segmentation_metrics
from mssl.downstream.postprocess import choose_postprocessing, keep_largest_component, selected_classes


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


def test_postprocessing_is_chosen_where_it_helps_and_never_lowers_validation_dice() -> None:
    reference, prediction = _reference(), _prediction()
    dice_of = _dice_against(reference)

    decisions = choose_postprocessing([prediction], dice_of, [1, 2])
    chosen = selected_classes(decisions)
    assert chosen == [1]  # the island of class 1 goes; class 2 keeps its second piece
    assert decisions[2].with_ < decisions[2].without  # keeping only one piece of class 2 would have cost Dice
    before = dice_of(prediction, 0)
    after = dice_of(keep_largest_component(prediction, chosen), 0)
    assert np.all(after >= before) and after[0] > before[0]


def test_a_class_is_not_postprocessed_when_one_validation_case_loses_much_even_if_the_mean_rises() -> None:
    """Case 0: a stray island of class 1 (keep-largest helps a little). Case 1: class 1 predicted as a true
    piece plus a larger false blob, so the largest component is the wrong one (Dice 0.32 falls to 0)."""
    reference = _reference()
    island = _prediction()
    wrong_side = reference.clone()
    wrong_side[reference == 1] = 0
    wrong_side[3:7, 3:7, 3:7] = 1  # 64 true voxels
    wrong_side[10:15, 10:15, 10:15] = 1  # 125 false voxels: the largest component
    dice_of = _dice_against(reference)

    many_islands = [island] * 30
    decisions = choose_postprocessing([*many_islands, wrong_side], dice_of, [1])
    assert decisions[1].with_ > decisions[1].without  # the mean over the 31 cases rises...
    assert decisions[1].worst_case_change < -0.3  # ...but the wrong-side case loses its Dice
    assert selected_classes(decisions) == []
    assert selected_classes(choose_postprocessing(many_islands, dice_of, [1])) == [1]


def test_a_small_loss_on_one_validation_case_does_not_block_postprocessing() -> None:
    """Three cases with a stray island of class 1; one where class 1 comes in two true pieces (144 and 12
    voxels): keep-largest drops the small piece (Dice 0.839 → 0.800), the benign loss of a split organ."""
    reference = _reference()
    split = reference.clone()
    split[6:8] = 0
    split[7, 2:4, 2:8] = 1  # a small true piece, apart from the 144-voxel main one
    dice_of = _dice_against(reference)
    decisions = choose_postprocessing([_prediction()] * 3 + [split], dice_of, [1])
    assert -0.05 < decisions[1].worst_case_change < -0.03
    assert selected_classes(decisions) == [1]
