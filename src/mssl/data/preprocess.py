"""Intensity/spacing presets built from MONAI transforms, and ``load_case`` used by ``mssl prepare``.

Every preset runs: load (stacking an image stored as one file per channel) → validate (dimensions,
finite, not constant, label matches image) → channel first → RAS orientation → foreground crop
(optional; the box is found on channel 0) → resample to ``spacing`` (optional) → intensity, channel by
channel:

- ``ct``: HU window [a_min, a_max] → [0, 1] (clipped), the same window for every channel;
- ``mri``: per-volume, per-channel clip to the [lower, upper] percentiles, then z-score;
- ``none``: intensities unchanged.

Labels take the same spatial steps with nearest-neighbour interpolation. ``build_transforms`` is usable
on its own (dict keys ``"image"``/``"label"``, MetaTensors out with the affine kept), so fine-tuning and
evaluation preprocess labelled volumes exactly like the pre-training cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mssl.data.config import PresetConfig
from mssl.data.dicom import series_files
from mssl.data.errors import DataError
from mssl.data.readers import CHANNEL_FILES, ChannelFiles, LoadVolumed
from mssl.data.sources import Case

CT_BODY_HU = -500.0  # foreground for the CT crop: denser than lung/air, so the box is the body
FOREGROUND_FRACTION = 0.05  # mri/none foreground: above min + 5% of the (min, 99th percentile) range
FOREGROUND_PERCENTILE = 99.0
PERCENTILE_SAMPLE = 1_000_000  # voxels sampled to estimate the foreground percentile
AFFINE_TOLERANCE_MM = 1e-3  # image/label affines further apart than this do not describe the same grid
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # axis codes of the RAS target orientation
EXAMPLE_VALUES = 5  # offending label values quoted in an error
MIN_SIDE = 4  # voxels along every axis, before and after preprocessing: less is no volume to learn from


class ForegroundSelect:
    """``select_fn`` for ``CropForegroundd``; a class (not a lambda) so a Compose pickles for spawn workers.
    Falls back to the whole volume when nothing passes, instead of an empty crop."""

    def __init__(self, hu_threshold: float | None) -> None:
        self.hu_threshold = hu_threshold

    def __call__(self, image):
        if self.hu_threshold is not None:
            mask = image > self.hu_threshold
        else:
            values = image.reshape(-1)
            sample = values[:: max(1, values.numel() // PERCENTILE_SAMPLE)].float()
            low, high = sample.min(), sample.quantile(FOREGROUND_PERCENTILE / 100)
            mask = image > low + FOREGROUND_FRACTION * (high - low)
        return mask if bool(mask.any()) else mask | True


class ValidateVolumed:
    """Rejects what would silently poison training: wrong dimensionality, NaN/inf, constant volumes,
    labels whose grid (shape or affine) differs from the image's, and label values that are not class
    numbers (fractional, negative, or outside ``classes`` when given). Runs right after loading."""

    def __init__(self, channel_axis: int | None, with_label: bool, classes: Sequence[int] | None = None) -> None:
        self.channel_axis = channel_axis
        self.with_label = with_label
        self.classes = classes

    def __call__(self, data: dict) -> dict:
        image = data["image"]
        path = image.meta.get("filename_or_obj", "image")
        channel_axis = image_channel_axis(image, self.channel_axis)
        expected = 3 if channel_axis is None else 4
        if image.ndim != expected:
            hint = "" if channel_axis is not None else " (pass a channel axis for multi-channel images)"
            raise DataError(path, f"expected a {expected}D volume, got {image.ndim}D of shape {tuple(image.shape)}{hint}")
        spatial = _spatial_shape(image, channel_axis)
        if min(spatial) < 2:
            raise DataError(path, f"a 2D image stored as 3D (shape {tuple(image.shape)} has a single slice)")
        check_min_side(spatial, path)
        if not bool(image.isfinite().all()):
            raise DataError(path, f"{int((~image.isfinite()).sum())} NaN/inf voxels")
        if bool(image.min() == image.max()):
            raise DataError(path, f"constant volume (every voxel is {float(image.min())})")
        if self.with_label:
            self._check_label(image, spatial, data["label"])
        return data

    def _check_label(self, image, spatial: tuple[int, ...], label) -> None:
        path = label.meta.get("filename_or_obj", "label")
        if tuple(label.shape) != spatial:
            raise DataError(path, f"label shape {tuple(label.shape)} does not match image shape {spatial}")
        if not np.allclose(np.asarray(label.affine), np.asarray(image.affine), atol=AFFINE_TOLERANCE_MM):
            raise DataError(path, "label affine does not match the image affine (different grid or orientation)")
        fractional = label != label.round()
        if bool(fractional.any()):
            raise DataError(path, f"label values must be integers; {int(fractional.sum())} voxels are not (e.g. {_examples(label[fractional])})")
        if bool((label < 0).any()):
            raise DataError(path, f"label values must be non-negative; found {_examples(label[label < 0])}")
        if self.classes is not None:
            unknown = ~torch.isin(label, torch.as_tensor(list(self.classes), dtype=label.dtype))
            if bool(unknown.any()):
                raise DataError(path, f"label values {_examples(label[unknown])} are not among the datalist's classes {sorted(self.classes)}")


def image_channel_axis(image, preset_axis: int | None) -> int | None:
    """The axis holding an image's channels: the preset's, else the last for an image stacked from one
    file per channel, else none (a 3D volume)."""
    if preset_axis is not None:
        return preset_axis
    return -1 if CHANNEL_FILES in image.meta else None


def _spatial_shape(image, channel_axis: int | None) -> tuple[int, ...]:
    return tuple(s for axis, s in enumerate(image.shape) if channel_axis is None or axis != channel_axis % image.ndim)


def _examples(values) -> str:
    """Up to ``EXAMPLE_VALUES`` distinct values, as a short list for a message."""
    distinct = values.unique()
    shown = ", ".join(f"{float(v):g}" for v in distinct[:EXAMPLE_VALUES])
    return shown + (f" and {len(distinct) - EXAMPLE_VALUES} more" if len(distinct) > EXAMPLE_VALUES else "")


def check_min_side(shape: Sequence[int], path: object, when: str = "") -> None:
    """Raise :class:`DataError` for a volume with fewer than ``MIN_SIDE`` voxels along an axis."""
    if min(shape) < MIN_SIDE:
        raise DataError(path, f"too small{when}: shape {tuple(shape)}; a volume needs at least {MIN_SIDE} voxels along every axis")


def build_transforms(preset: PresetConfig, with_label: bool, classes: Sequence[int] | None = None):
    """MONAI ``Compose`` for ``{"image": path[, "label": path]}`` → MetaTensors (channel-first, RAS).

    The image is float32; the label (when ``with_label``) must hold non-negative integers (among
    ``classes`` when given) and is rounded to integers after nearest resampling. An image may be a file,
    a DICOM series folder, a list of one series' files, or :class:`~mssl.data.readers.ChannelFiles`.
    """
    from monai import transforms as T

    keys = ["image", "label"] if with_label else ["image"]
    steps: list[Any] = [
        LoadVolumed(keys, preset.channel_axis),
        ValidateVolumed(preset.channel_axis, with_label, classes),
        # channel_dim None: the reader's metadata says (none for a 3D file, the stacking axis for channel files)
        T.EnsureChannelFirstd("image", channel_dim=preset.channel_axis),
    ]
    if with_label:
        steps.append(T.EnsureChannelFirstd("label", channel_dim="no_channel"))
    steps.append(T.Orientationd(keys, axcodes="RAS", labels=RAS_LABELS))
    if preset.foreground_crop:
        threshold = CT_BODY_HU if preset.name == "ct" else None
        steps.append(T.CropForegroundd(keys, source_key="image", select_fn=ForegroundSelect(threshold), channel_indices=0, allow_smaller=True))
    if preset.spacing is not None:
        modes = ["bilinear", "nearest"] if with_label else ["bilinear"]
        steps.append(T.Spacingd(keys, pixdim=preset.spacing, mode=modes, dtype=np.float32))
    if preset.name == "ct":
        steps.append(T.ScaleIntensityRanged("image", a_min=preset.a_min, a_max=preset.a_max, b_min=0.0, b_max=1.0, clip=True))
    elif preset.name == "mri":
        steps.append(T.ClipIntensityPercentilesd("image", lower=preset.lower, upper=preset.upper, channel_wise=True))
        steps.append(T.NormalizeIntensityd("image", channel_wise=True))
    steps.append(T.EnsureTyped("image", dtype=np.float32, track_meta=True))
    if with_label:
        steps.append(T.Lambdad("label", _round_label))
    return T.Compose(steps)


def _round_label(label):
    return label.round()


def load_case(case: Case, preset: PresetConfig) -> dict:
    """Preprocess one case into numpy arrays and metadata (raises :class:`DataError` naming the file).

    Returns ``image`` (float32, (C, X, Y, Z)), ``label`` ((1, X, Y, Z), uint8 or int16, or None),
    ``affine``/``spacing``/``shape`` after preprocessing and ``original_*`` as read from the source.
    """
    check_files_exist(case)
    data: dict[str, Any] = {"image": image_input(case)}
    if case.label is not None:
        data["label"] = str(case.label)
    try:
        out = build_transforms(preset, with_label=case.label is not None, classes=case.classes)(data)
    except Exception as error:  # MONAI wraps every failure in RuntimeError("applying transform ...")
        raise as_data_error(error, case) from error
    image = out["image"]
    check_min_side(image.shape[1:], case.image, " after cropping and resampling")  # e.g. a tiny body in a large field
    original_affine = np.asarray(image.meta["original_affine"], dtype=np.float64)
    affine = np.asarray(image.affine, dtype=np.float64)
    result = {
        "image": np.ascontiguousarray(image.numpy(), dtype=np.float32),
        "label": _label_array(out["label"], case.label) if "label" in out else None,
        "affine": affine.tolist(),
        "spacing": _spacing(affine),
        "shape": list(image.shape[1:]),
        "original_affine": original_affine.tolist(),
        "original_spacing": _spacing(original_affine),
        "original_shape": [int(s) for s in np.asarray(image.meta["spatial_shape"]).tolist()],
    }
    return result


def check_files_exist(case: Case) -> None:
    """Raise :class:`DataError` for the first file of ``case`` that is missing (a channel file named as such)."""
    for number, path in enumerate(case.image_files):
        if not path.exists():
            raise DataError(path, f"does not exist (channel {number} of case {case.case_id})" if case.other_channels else "does not exist")
    if case.label is not None and not case.label.exists():
        raise DataError(case.label, "does not exist")


def image_input(case: Case) -> str | list[str] | ChannelFiles:
    """What ``LoadVolumed`` reads for ``case``: its channel files, a DICOM series' file list (when the
    SeriesInstanceUID is known), or the image path."""
    if case.other_channels:
        return ChannelFiles(case.case_id, tuple(str(f) for f in case.image_files))
    uid = case.extra.get("series_uid")
    if uid and case.image.is_dir():
        return [str(f) for f in series_files(case.image, uid)]
    return str(case.image)


def _label_array(label, path) -> np.ndarray:
    values = label.numpy()
    low, high = float(values.min()), float(values.max())
    if low >= 0 and high <= np.iinfo(np.uint8).max:
        return np.ascontiguousarray(values, dtype=np.uint8)
    if low >= np.iinfo(np.int16).min and high <= np.iinfo(np.int16).max:
        return np.ascontiguousarray(values, dtype=np.int16)
    raise DataError(path, f"label values {low:g}..{high:g} do not fit int16")


def _spacing(affine: np.ndarray) -> list[float]:
    return [float(v) for v in np.linalg.norm(affine[:3, :3], axis=0)]


def as_data_error(error: BaseException, case: Case) -> DataError:
    """The :class:`DataError` inside a transform failure (MONAI wraps each in RuntimeError), or the
    innermost cause described as a one-line error on the image."""
    cause: BaseException | None = error
    innermost = error
    while cause is not None:
        if isinstance(cause, DataError):
            return cause
        innermost = cause
        cause = cause.__cause__ or cause.__context__
    return DataError(case.image, f"preprocessing failed ({type(innermost).__name__}: {innermost})")
