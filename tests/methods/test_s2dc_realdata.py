"""A short S²DC run on real OpenKBP CT fields makes student tokens match better across views."""

import copy
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from mssl.config import BackboneConfig, S2DCConfig
from mssl.methods.s2dc import S2DCMethod
from mssl.models.backbones import build_backbone
from mssl.models.ema import ema_update

HU_WINDOW = (-1000.0, 1000.0)
FIELD = (64, 64, 32)  # at 2× the stored voxel size: 4 crops of 32³, 4×4×2 tokens of stride 16
STEPS = 20


def _volumes(root, split, count):
    entries = [e for e in json.loads((root / "dataset.json").read_text(encoding="utf-8"))["training"] if e["split"] == split][:count]
    volumes = []
    for entry in entries:
        hu = torch.from_numpy(np.asarray(nib.load(root / entry["image"]).dataobj, dtype=np.float32))
        scaled = ((hu - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0])).clamp(0, 1)
        volumes.append(F.interpolate(scaled[None, None], scale_factor=0.5, mode="trilinear")[0])  # (1, 64, 64, 64)
    return volumes


def _random_field(volume, generator):
    starts = [int(torch.randint(0, s - f + 1, (1,), generator=generator)) for s, f in zip(volume.shape[1:], FIELD)]
    return volume[:, starts[0] : starts[0] + FIELD[0], starts[1] : starts[1] + FIELD[1], starts[2] : starts[2] + FIELD[2]]


def _student_matching_accuracy(method, volumes):
    """Top-1 token matching of the student against itself on the two views, same warps every call."""
    probe = copy.deepcopy(method).eval()
    ema_update(probe.teacher, probe._student(), momentum=0.0)  # teacher := student
    torch.manual_seed(1)
    with torch.no_grad():
        accuracies = [probe({"field": volume[None, None]}).metrics["match_acc"] for volume in volumes for _ in range(2)]
    return torch.stack(accuracies).mean().item()


@pytest.mark.realdata
def test_short_training_improves_token_matching_on_held_out_volumes(openkbp_dir):
    train, held_out = _volumes(openkbp_dir, "train", 4), _volumes(openkbp_dir, "validation", 3)
    held_out = [_random_field(volume, torch.Generator().manual_seed(5)) for volume in held_out]
    method = S2DCMethod(
        build_backbone(BackboneConfig(name="swin", feature_size=12, window_size=4)),
        S2DCConfig(
            field_size=FIELD, roi=32, token_stage=-2, head_hidden=128, head_out=64, queue_size=8, ema_start=0.99, ema_end=0.99
        ),
    )
    before = _student_matching_accuracy(method, held_out)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(2)
    for step in range(STEPS):
        fields = _random_field(train[step % len(train)], generator)[None]  # one volume per step
        optimizer.zero_grad()
        method({"field": fields[:, None]}).loss.backward()
        optimizer.step()
        method.after_optimizer_step(step + 1, STEPS)
    after = _student_matching_accuracy(method, held_out)
    assert after > before + 0.05, f"token matching {before:.3f} → {after:.3f}"
