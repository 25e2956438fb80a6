"""The bad-input corpus: what a hostile or unlucky user feeds mssl, written at small sizes.

Each writer puts its files under a folder and returns ``{name: what mssl must say about it}``; the
suite (tests/test_bad_inputs.py, tests/data/test_data_errors.py) runs every item, so none regresses. Run
it by hand to get the files: ``python tests/bad_inputs.py OUT`` writes every group under OUT/<group>
and prints each item with its expected message.

Rows that are events during a run rather than files, each with its test in tests/test_bad_inputs.py
(built on :func:`synthetic_cache` and :data:`TINY_GVSL`): weights turning NaN under a finite loss
(``test_a_diverged_run_...``), a NaN checkpoint exported (``test_export_refuses_...``), two writers of
one run folder and a killed holder (``test_a_run_folder_has_one_writer_...``, ``test_finetune_into_...``),
a truncated or planted ``last.ckpt`` on ``--resume`` (``test_resume_falls_back_...``), a crop the
backbone cannot take (``test_a_crop_...``), an unwritable or full output folder
(``test_prepare_or_pretrain_into_...``, ``test_a_full_disk_...``), a deleted source (``test_a_deleted_source_...``).
"""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path

import numpy as np
import torch
from data_helpers import synthetic_ct, write_dicom_series, write_nifti

from conftest import TINY_UNET_CHANNELS, TINY_UNET_FLAGS
from mssl.models.backbones import UNetBackbone
from mssl.weights.safe_io import write_safetensors

# `mssl pretrain` flags of a GVSL run on a (8, 16, 32) U-Net with 32³ pairs: a step takes well under a second.
TINY_GVSL = [
    "--method", "gvsl", *TINY_UNET_FLAGS, "--roi", "32", "--workers", "0", "--no-progress",
]


def synthetic_cache(root: Path, cases: int = 3) -> Path:
    """A small CT cache (``cases`` synthetic volumes through the real prepare) for runs that need no real data."""
    from mssl.data.prepare import prepare
    from mssl.data.preprocess import PresetConfig

    for number in range(cases):
        write_nifti(root / "source" / f"case{number}.nii.gz", synthetic_ct((56, 52, 48), seed=number)[0])
    report = prepare(root / "source", root / "cache", PresetConfig(name="ct"))
    assert len(report.written) == cases, report.failed
    return root / "cache"


class PlantsMarker:
    """A pickle payload that creates ``marker`` when unpickled (so a test sees whether it ran)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def unet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return UNetBackbone(1, TINY_UNET_CHANNELS).state_dict()


def weight_files(root: Path) -> dict[str, str]:
    """U-Net weight files that must be refused by ``load_pretrained`` / ``inspect`` / fine-tuning."""
    root.mkdir(parents=True, exist_ok=True)
    state = unet_state()
    first, second = list(state)[:2]
    nan = {**state, first: torch.full_like(state[first], float("nan"))}
    inf = {**state, second: state[second].clone().index_fill_(0, torch.tensor([0]), float("inf"))}
    write_safetensors(nan, root / "nan.safetensors", {})
    torch.save(inf, root / "inf.pt")
    write_safetensors({k: v != 0 for k, v in state.items()}, root / "bool.safetensors", {})
    torch.save({k: v.to(torch.int64) for k, v in state.items()}, root / "int64.pt")
    torch.save({"state_dict": state, "evil": PlantsMarker(str(root / "pwned"))}, root / "pickle.pt")
    good = write_safetensors(state, root / "good.safetensors", {})
    (root / "truncated.safetensors").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    write_safetensors(state, root / "huge" / "encoder.safetensors", {})  # its sidecar claims 10⁶ channels
    args = {"in_channels": 1, "channels": [10**6, *TINY_UNET_CHANNELS[1:]]}
    (root / "huge" / "encoder.json").write_text(json.dumps({"method": "gvsl", "backbone": {"name": "unet", "args": args}}), encoding="utf-8")
    return {
        "huge": "the backbone description says channels=[1000000, 16, 32] but the weights have channels=[8, 16, 32]",
        "nan.safetensors": f"NaN/inf values in 1 tensor ({first})",
        "inf.pt": f"NaN/inf values in 1 tensor ({second})",
        "bool.safetensors": "integer/bool values in",
        "int64.pt": "integer/bool values in",
        "pickle.pt": "refused to load",
        "truncated.safetensors": "not a readable safetensors file",
    }


def sidecar_files(root: Path) -> dict[str, str]:
    """Good U-Net weights, each folder with a damaged or hostile ``encoder.json`` (what builds the network)."""
    unet = {"name": "unet", "args": {"in_channels": 1, "channels": list(TINY_UNET_CHANNELS)}}
    sidecars = {
        "list": ([1, 2], "a sidecar must be a JSON object, got list"),
        "string_backbone": ({"backbone": "unet"}, "'backbone' must look like"),
        "unknown_backbone": ({"backbone": {"name": "evil", "args": {}}}, "'backbone' must look like"),
        "negative_channels": ({"backbone": {"name": "unet", "args": {"in_channels": -1, "channels": list(TINY_UNET_CHANNELS)}}}, "in_channels"),
        "bad_preset": ({"backbone": unet, "preset": {"name": "zzz"}}, "preset.name: Input should be 'ct', 'mri' or 'none'"),
    }
    state = unet_state()
    for name, (sidecar, _) in sidecars.items():
        write_safetensors(state, root / name / "encoder.safetensors", {})
        (root / name / "encoder.json").write_text(json.dumps(sidecar), encoding="utf-8")
    return {name: message for name, (_, message) in sidecars.items()}


def image_files(root: Path, shape: tuple[int, int, int] = (24, 20, 16)) -> dict[str, str]:
    """A datalist (``list.json``) of one good case, used with and without a label, and every kind of bad
    image or label; returns {bad path: expected problem}."""
    hu, label = synthetic_ct(shape)
    write_nifti(root / "good.nii.gz", hu)
    write_nifti(root / "labels" / "good.nii.gz", label)
    raw = (root / "good.nii.gz").read_bytes()
    damaged = bytearray(raw)
    damaged[len(raw) // 3 : len(raw) // 3 + 64] = bytes(64)
    (root / "corrupt.nii.gz").write_bytes(bytes(damaged))
    (root / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    write_nifti(root / "plain.nii", hu)
    (root / "truncated.nii").write_bytes((root / "plain.nii").read_bytes()[:-500])
    (root / "plain.nii").unlink()
    write_nifti(root / "flat2d.nii.gz", hu[:, :, 0])
    write_nifti(root / "oneslice.nii.gz", hu[:, :, :1])
    write_nifti(root / "fourd.nii.gz", np.stack([hu, hu], axis=-1))
    nan = hu.astype(np.float32)
    nan[3, 4, 5], nan[6, 7, 8] = np.nan, np.inf
    write_nifti(root / "nan.nii.gz", nan)
    write_nifti(root / "constant.nii.gz", np.full(shape, 7, np.int16))
    write_nifti(root / "tiny.nii.gz", hu[:3, :3, :3])
    write_nifti(root / "labels" / "short.nii.gz", label[:-1])
    write_nifti(root / "labels" / "shifted.nii.gz", label, np.diag([1.5, 1.5, 2.0, 1.0]))
    (root / "dicom").mkdir()
    for number in range(3):
        (root / "dicom" / f"slice{number}.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"garbage" * 20)
    datalist = [{"image": name} for name in ("good.nii.gz", "corrupt.nii.gz", "truncated.nii.gz", "truncated.nii", "flat2d.nii.gz", "oneslice.nii.gz", "fourd.nii.gz", "nan.nii.gz", "constant.nii.gz", "tiny.nii.gz")]
    datalist += [
        {"image": "good.nii.gz", "label": "labels/good.nii.gz"},
        {"image": "good.nii.gz", "label": "labels/short.nii.gz"},
        {"image": "good.nii.gz", "label": "labels/shifted.nii.gz"},
        {"image": "missing.nii.gz"},
        {"image": "dicom"},
    ]
    (root / "list.json").write_text(json.dumps({"training": datalist}), encoding="utf-8")
    return {
        "corrupt.nii.gz": "corrupt gzip",
        "truncated.nii.gz": "truncated file",
        "truncated.nii": "truncated file",
        "flat2d.nii.gz": "expected a 3D volume, got 2D",
        "oneslice.nii.gz": "a 2D image stored as 3D",
        "fourd.nii.gz": "expected a 3D volume, got 4D",
        "nan.nii.gz": "2 NaN/inf voxels",
        "constant.nii.gz": "constant volume",
        "tiny.nii.gz": "too small: shape (3, 3, 3); a volume needs at least 4 voxels along every axis",
        "labels/short.nii.gz": f"label shape {(shape[0] - 1, *shape[1:])} does not match image shape {shape}",
        "labels/shifted.nii.gz": "label affine does not match",
        "missing.nii.gz": "does not exist",
        "dicom": "unreadable DICOM series",
    }


def label_files(root: Path, shape: tuple[int, int, int] = (24, 20, 16)) -> dict[str, str]:
    """A datalist (``list.json``, classes 0..2) of one good labelled case and labels that are not class numbers."""
    hu, label = synthetic_ct(shape)
    write_nifti(root / "image.nii.gz", hu)
    write_nifti(root / "good.nii.gz", label)
    write_nifti(root / "half.nii.gz", label + np.float32(0.5))  # rounding would turn class 1 into 2
    write_nifti(root / "negative.nii.gz", label.astype(np.int16) - 7)
    write_nifti(root / "unknown.nii.gz", np.where(label == 2, 9, label).astype(np.uint8))
    names = ("good", "half", "negative", "unknown")
    entries = [{"image": "image.nii.gz", "label": f"{name}.nii.gz"} for name in names]
    datalist = {"labels": {"0": "background", "1": "body", "2": "bone"}, "training": entries}
    (root / "list.json").write_text(json.dumps(datalist), encoding="utf-8")
    return {
        "half.nii.gz": "label values must be integers; ",
        "negative.nii.gz": "label values must be non-negative; found -7, -6, -5",
        "unknown.nii.gz": "label values 9 are not among the datalist's classes [0, 1, 2]",
    }


def dicom_series_folders(root: Path, shape: tuple[int, int, int] = (24, 20, 16)) -> dict[str, str]:
    """One folder per DICOM series: a good one, and ones with a damaged or missing slice (must never become a shorter volume)."""
    hu, _ = synthetic_ct(shape)
    damage = {
        "truncated_header": lambda f: f.write_bytes(f.read_bytes()[:300]),  # GDCM leaves it out of the series
        "truncated_pixels": lambda f: f.write_bytes(f.read_bytes()[:-200]),
        "missing_slice": lambda f: f.unlink(),
    }
    write_dicom_series(root / "good", hu)
    for name, spoil in damage.items():
        slices = sorted(write_dicom_series(root / name, hu).iterdir())
        spoil(slices[len(slices) // 2])
    return {
        "truncated_header": "unreadable DICOM series: 1 DICOM files belong to no readable series",
        "truncated_pixels": "unreadable DICOM series",
        "missing_slice": f"irregular DICOM slice spacing: steps of 6 mm where 3 mm is usual ({shape[2] - 1} slices)",
    }


def symlink_loops(root: Path, shape: tuple[int, int, int] = (24, 20, 16)) -> dict[str, str]:
    """Two images under a folder with two symlinks back up the tree: a naive ``**`` walk branches forever."""
    hu, _ = synthetic_ct(shape)
    write_nifti(root / "top.nii.gz", hu)
    write_nifti(root / "nested" / "deep.nii.gz", hu)
    (root / "nested" / "up").symlink_to("..")
    (root / "nested" / "again").symlink_to("../nested")
    return {"nested/up": "followed once: 2 cases, top and deep", "nested/again": "followed once: 2 cases, top and deep"}


WRITERS = {"images": image_files, "weights": weight_files, "sidecars": sidecar_files, "labels": label_files, "dicom": dicom_series_folders, "loops": symlink_loops}


def main(out: Path) -> None:
    for group, writer in WRITERS.items():
        for name, expected in writer(out / group).items():
            print(f"{group}/{name}: {expected}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
