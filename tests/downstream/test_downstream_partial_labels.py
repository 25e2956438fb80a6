"""Partial labels: an organ a case does not contour contributes nothing to its loss or Dice."""

from __future__ import annotations

import math

import pytest
import torch
from monai.losses import DiceCELoss

from mssl.downstream.metrics import segmentation_metrics
from mssl.downstream.partial_labels import PartialDiceCELoss, contoured_classes, marginal_log_probs, present_mask, restrict_to

CLASSES = ["background", "Brainstem", "SpinalCord", "Mandible"]


def _batch(num_classes: int = 4, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(2, num_classes, size, size, size)
    labels = torch.randint(0, num_classes, (2, 1, size, size, size))
    return logits, labels


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("include_background", [False, True])
def test_all_present_equals_monai_dice_ce(include_background: bool, batch_dice: bool) -> None:
    logits, labels = _batch()
    present = torch.ones(2, 4, dtype=torch.bool)
    expected = DiceCELoss(include_background=include_background, to_onehot_y=True, softmax=True, batch=batch_dice)(logits, labels)
    loss = PartialDiceCELoss(include_background, batch_dice=batch_dice)(logits, labels, present)
    assert torch.allclose(loss, expected, atol=1e-5)


def test_batch_dice_pools_a_class_over_the_cases_that_contour_it() -> None:
    """Case 0 does not contour class 2: its class-2 channel is left out of the pooled overlap, so the batch
    Dice of class 2 is case 1's alone, and Brainstem/Mandible pool both cases."""
    logits, labels = _batch()
    labels[0][labels[0] == 2] = 0
    present = torch.ones(2, 4, dtype=torch.bool)
    present[0, 2] = False
    loss_fn = PartialDiceCELoss(batch_dice=True, lambda_ce=0.0)
    probs = marginal_log_probs(logits, present).exp()
    one_hot = torch.nn.functional.one_hot(labels[:, 0], 4).movedim(-1, 1).float()
    overlap, volume = (probs * one_hot).sum((2, 3, 4)), (probs + one_hot).sum((2, 3, 4))
    pooled = [1 - (2 * overlap[:, c].sum() + 1e-5) / (volume[:, c].sum() + 1e-5) for c in (1, 3)]
    alone = 1 - (2 * overlap[1, 2] + 1e-5) / (volume[1, 2] + 1e-5)
    assert torch.allclose(loss_fn(logits, labels, present), torch.stack([pooled[0], alone, pooled[1]]).mean(), atol=1e-6)


def test_absent_class_equals_loss_without_that_class() -> None:
    """With class 2 absent in case 0, the loss equals that of a network without class 2 whose
    background absorbs its probability: nothing about class 2 is ever taught for that case."""
    logits, labels = _batch()
    labels[0][labels[0] == 2] = 0  # nobody drew SpinalCord in case 0: its voxels read as 0
    present = torch.ones(2, 4, dtype=torch.bool)
    present[0, 2] = False
    loss = PartialDiceCELoss(include_background=True)(logits[:1], labels[:1], present[:1])

    merged = torch.cat([torch.logsumexp(logits[:1, [0, 2]], dim=1, keepdim=True), logits[:1, [1, 3]]], dim=1)
    relabelled = labels[:1].clone()
    relabelled[relabelled == 3] = 2
    reference = DiceCELoss(to_onehot_y=True, softmax=True)(merged, relabelled)
    assert torch.allclose(loss, reference, atol=1e-5)
    without_background = PartialDiceCELoss()(logits[:1], labels[:1], present[:1])
    reference = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)(merged, relabelled)
    assert torch.allclose(without_background, reference, atol=1e-5)


def test_absent_class_mass_can_move_freely_to_background() -> None:
    logits, labels = _batch()
    labels[labels == 3] = 0
    present = torch.ones(2, 4, dtype=torch.bool)
    present[:, 3] = False
    loss_fn = PartialDiceCELoss(include_background=True)
    swapped = logits.clone()
    swapped[:, [0, 3]] = logits[:, [3, 0]]  # background ↔ absent organ, everywhere
    assert torch.allclose(loss_fn(logits, labels, present), loss_fn(swapped, labels, present), atol=1e-5)
    # treating the absent organ as background (plain DiceCE) is not invariant: the test can fail
    plain = DiceCELoss(to_onehot_y=True, softmax=True)
    assert not torch.allclose(plain(logits, labels), plain(swapped, labels), atol=1e-3)


def test_marginal_log_probs_sum_to_one() -> None:
    logits, _ = _batch()
    present = torch.tensor([[True, False, True, False], [True, True, True, True]])
    probs = marginal_log_probs(logits, present).exp()
    assert torch.allclose(probs.sum(1), torch.ones_like(probs[:, 0]), atol=1e-5)
    assert probs[0, 1].max() == 0 and probs[0, 3].max() == 0


def test_absent_class_is_nan_in_dice_not_zero() -> None:
    label = torch.zeros(10, 10, 10, dtype=torch.long)
    label[2:5, 2:5, 2:5] = 1
    prediction = label.clone()
    prediction[6:9, 6:9, 6:9] = 2  # predicts an organ the case does not contour
    present = present_mask(["Brainstem"], CLASSES)
    metrics = segmentation_metrics(prediction, label, 4, (1.0, 1.0, 1.0), present)
    assert metrics.dice[0] == pytest.approx(1.0)
    assert math.isnan(metrics.dice[1]) and math.isnan(metrics.hd95[1])


def test_present_mask_names_unknown_labels() -> None:
    assert present_mask(None, CLASSES).all()
    assert present_mask(["Mandible"], CLASSES).tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="Parotid"):
        present_mask(["Parotid"], CLASSES)


def test_prediction_never_returns_a_class_no_training_case_contoured() -> None:
    logits, _ = _batch()
    logits[:, 2] += 10.0  # the uncontoured class would win everywhere
    allowed = contoured_classes([present_mask(["Brainstem"], CLASSES), present_mask(["Mandible"], CLASSES)])
    assert allowed.tolist() == [True, True, False, True]
    restricted = restrict_to(logits, allowed)
    assert not (restricted.argmax(1) == 2).any()
    assert torch.allclose(restricted[:, 0], torch.logsumexp(logits[:, [0, 2]], dim=1))
    assert torch.equal(restricted[:, [1, 3]], logits[:, [1, 3]])


def test_validation_dice_leaves_out_classes_no_training_case_contoured() -> None:
    """A validation case contours classes 1 and 2; the training cases contoured only class 1, so the network
    never predicts class 2: its Dice of 0 would halve the validation score of a perfect class-1 prediction."""
    from mssl.downstream.segmentation import dice_table, mean_dice

    label = torch.zeros(1, 8, 8, 8, dtype=torch.long)
    label[0, :4] = 1
    label[0, 4:, :4] = 2
    item = {"label": label, "present": torch.tensor([True, True, True])}
    prediction = torch.where(label[0] == 1, 1, 0)  # class 1 exactly, class 2 never predicted
    trained = torch.tensor([True, True, False])
    table = dice_table([prediction], [item], 3, trained)
    assert table[0, 0] == pytest.approx(1.0) and math.isnan(table[0, 1]) and mean_dice(table) == pytest.approx(1.0)
    assert mean_dice(dice_table([prediction], [item], 3)) == pytest.approx(0.5)  # every contoured class counted
