"""The fine-tuning recipe end to end on the embedded demo CTs (no ../shared/data needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import TINY_UNET_OPTIONS
from mssl.data.demo import demo_datalist

COARSE = (8.0, 8.0, 8.0)  # mm: demo CTs become ~30×50×40 voxels, seconds per step on one core


def _datalist(tmp_path: Path, validation_is_training: bool = False) -> Path:
    """Two demo training cases and one validation case (the first training case itself when asked)."""
    path = demo_datalist(tmp_path / "source.json")
    meta = json.loads(path.read_text(encoding="utf-8"))
    train = [e for e in meta["training"] if e["split"] == "train"]
    validation = dict(train[0] if validation_is_training else train[2], split="validation")
    entries = [train[0], train[1], validation] if not validation_is_training else [train[0], validation]
    out = tmp_path / "dataset.json"
    out.write_text(json.dumps({**meta, "training": entries}), encoding="utf-8")
    return out


def test_steps_auto_stops_on_a_plateau(tmp_path: Path) -> None:
    from mssl.downstream.finetune import finetune

    # a learning rate of 1e-12 leaves the network as it is: validation Dice is flat from the start
    out = finetune(
        data=_datalist(tmp_path), backbone=TINY_UNET_OPTIONS, spacing=COARSE, roi=(16, 16, 16), lr=1e-12, steps="auto",
        max_steps=30, val_every=1, plateau_window=2, augment=False, postprocess=False, out=tmp_path / "run",
    )
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert result["steps"] == 2 and result["stopped_on_plateau"] and result["converged"]
    assert len(result["validation_history"]) == 3  # step 0 (initial network), 1, 2
    rows = (out / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + 3  # header, the step-0 validation, steps 1 and 2
    assert (out / "curve.png").stat().st_size > 0 and any((out / "tensorboard").iterdir())


def test_fixed_steps_report_whether_they_converged(tmp_path: Path) -> None:
    from mssl.downstream.finetune import finetune

    out = finetune(
        data=_datalist(tmp_path), backbone=TINY_UNET_OPTIONS, spacing=COARSE, roi=(16, 16, 16), lr=1e-12, steps=3,
        val_every=1, plateau_window=2, augment=False, postprocess=False, out=tmp_path / "run",
    )
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert result["steps"] == 3 and not result["stopped_on_plateau"] and result["converged"]


@pytest.mark.slow
def test_a_short_finetune_beats_its_initial_network(tmp_path: Path) -> None:
    from mssl.downstream.finetune import finetune

    out = finetune(
        data=_datalist(tmp_path, validation_is_training=True), backbone=TINY_UNET_OPTIONS, spacing=COARSE, steps=STEPS,
        val_every=STEPS, labels=1, out=tmp_path / "run", seed=0,
    )
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    initial, final = result["validation_history"][0], result["validation_history"][-1]
    assert math.isfinite(initial) and final > initial + 0.1, result["validation_history"]
    description = json.loads((out / "model.json").read_text(encoding="utf-8"))
    assert description["roi"] == [32, 52, 28]  # from the data
    assert description["left_right_axis"] == 1 and description["mirror_axes"] == [0, 2]  # OpenKBP: left-right is array axis 1


STEPS = 60


def test_a_label_value_outside_the_datalist_classes_is_refused_by_name(tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    from mssl.downstream.finetune import finetune

    path = _datalist(tmp_path)
    meta = json.loads(path.read_text(encoding="utf-8"))
    source = nib.load(meta["training"][0]["label"])
    label = np.asarray(source.dataobj).copy()
    label[label == 7] = 9  # the datalist names classes 0..7
    bad = tmp_path / "bad_label.nii.gz"
    nib.save(nib.Nifti1Image(label, source.affine), str(bad))
    meta["training"][0]["label"] = str(bad)
    path.write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ValueError, match="bad_label.nii.gz"):
        finetune(data=path, backbone=TINY_UNET_OPTIONS, spacing=COARSE, roi=(16, 16, 16), steps=1, out=tmp_path / "run")
    assert not (tmp_path / "run" / "best.safetensors").exists()
