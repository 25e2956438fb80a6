"""Reading volumes with MONAI's loader, one reader per format, and errors that name the file.

``LoadVolumed`` is MONAI's ``LoadImaged`` that always reads through :class:`VolumeReader` (and stacks an
image stored as one file per channel, :class:`ChannelFiles`, checking that the files share one grid): NIfTI with
MONAI's ``NibabelReader``; NRRD, MetaImage and DICOM series with SimpleITK (MONAI's own reader for those
needs the ``itk`` package; SimpleITK is already a dependency). Why not MONAI's reader fallback chain: on
failure it silently tries every other reader (ITK happily decodes a truncated ``.nii.gz`` as zeros) and
buries the real cause in a multi-reader traceback; and nibabel never reaches a gzip stream's CRC. Here a failure is a :class:`DataError` with one line:
corrupt gzip, truncated file, unreadable DICOM series, or the reader's own message.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import ImageReader, MetaTensor, NibabelReader
from monai.transforms import LoadImage, MapTransform
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from mssl.data.dicom import keep_locale, series_files
from mssl.data.errors import DataError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
SITK_SUFFIXES = (".nrrd", ".mha", ".mhd", ".dcm", ".ima")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
GZIP_CHUNK = 1 << 24
IMAGE_POSITION = "0020|0032"  # DICOM ImagePositionPatient, one per slice
SLICE_STEP_TOLERANCE = 0.05  # a slice step may differ from the usual one by 5 % ...
SLICE_STEP_TOLERANCE_MM = 0.01  # ... or 0.01 mm (rounding of the stored positions)
CHANNEL_FILES = "channel_files"  # metadata key of an image stacked from one file per channel
CHANNEL_AFFINE_TOLERANCE_MM = 1e-3  # channel files whose affines differ more are not on one grid


class VolumeReader(ImageReader):
    """Reads one volume per call: a NIfTI/NRRD/MetaImage file, a folder holding exactly one DICOM series,
    or the file list of one DICOM series (as given by ``mssl.data.dicom.dicom_series``).
    Arrays come out (X, Y, Z[, C]) with a RAS affine, like MONAI's ``NibabelReader``."""

    def __init__(self) -> None:
        super().__init__()
        self.nibabel = NibabelReader()

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        names = ensure_tuple(filename)
        return all(Path(n).is_dir() or str(n).lower().endswith(NIFTI_SUFFIXES + SITK_SUFFIXES) for n in names)

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs):
        names = [str(n) for n in ensure_tuple(data)]
        if len(names) == 1 and names[0].lower().endswith(NIFTI_SUFFIXES):
            with reading(names[0]):
                if names[0].lower().endswith(".gz"):
                    verify_gzip(names[0])
                return self.nibabel.read(names[0])
        if len(names) == 1 and Path(names[0]).is_dir():
            names = _single_series(Path(names[0]))
        if len(names) == 1 and not names[0].lower().endswith(SITK_SUFFIXES):
            raise DataError(names[0], f"unsupported file type (expected {', '.join(NIFTI_SUFFIXES + SITK_SUFFIXES)} or a DICOM folder)")
        return _read_sitk(names)

    def get_data(self, img) -> tuple[np.ndarray, dict]:
        if isinstance(img, _SitkVolume):
            return img.array, img.meta
        with reading(img.get_filename()):  # nibabel decodes lazily: truncation shows up here
            return self.nibabel.get_data(img)


@dataclass(frozen=True)
class ChannelFiles:
    """An image stored as one 3D file per channel (nnU-Net ``_0000``, ``_0001``...; a datalist ``image``
    list), read file by file and stacked. A plain list of paths is one DICOM series instead."""

    case_id: str
    files: tuple[str, ...]


class LoadVolumed(MapTransform):
    """``LoadImaged`` reading every key through :class:`VolumeReader` (float32 MetaTensors); a
    :class:`ChannelFiles` value is stacked along ``channel_axis`` (the last axis when None) and its
    metadata lists the files under ``CHANNEL_FILES``."""

    def __init__(self, keys: Sequence[str], channel_axis: int | None = None) -> None:
        super().__init__(keys)
        self.loader = LoadImage(image_only=True, dtype=np.float32)
        self.volume_reader = VolumeReader()
        self.channel_axis = -1 if channel_axis is None else channel_axis

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._stack(d[key]) if isinstance(d[key], ChannelFiles) else self._load(d[key])
        return d

    def _load(self, path):
        # the reader given per call is the only one tried: no silent fallback to MONAI's other readers
        return self.loader(path, self.volume_reader)

    def _stack(self, channels: ChannelFiles) -> MetaTensor:
        """The channel files as one (X, Y, Z) volume each, checked to share shape and affine, stacked."""
        volumes = [self._load(f) for f in channels.files]
        first, first_name = volumes[0], Path(channels.files[0]).name
        for number, (path, volume) in enumerate(zip(channels.files, volumes)):
            where = f"channel {number} of case {channels.case_id}"
            if volume.ndim != 3:
                raise DataError(path, f"{where} must be a 3D volume, got shape {tuple(volume.shape)}")
            if volume.shape != first.shape:
                raise DataError(path, f"{where} has shape {tuple(volume.shape)} but channel 0 ({first_name}) has {tuple(first.shape)}")
            if not np.allclose(np.asarray(volume.affine), np.asarray(first.affine), atol=CHANNEL_AFFINE_TOLERANCE_MM):
                raise DataError(path, f"{where} is not on the grid of channel 0 ({first_name}): their affines differ")
        stacked = torch.stack([v.as_tensor() for v in volumes], dim=self.channel_axis)
        meta = {**first.meta, CHANNEL_FILES: list(channels.files), MetaKeys.ORIGINAL_CHANNEL_DIM: self.channel_axis}
        return MetaTensor(stacked, meta=meta)  # the affine comes with channel 0's metadata


@contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Turn any reader exception inside the block into a one-line :class:`DataError` for ``path``."""
    try:
        yield
    except DataError:
        raise
    except Exception as error:
        raise DataError(path, describe_read_error(error)) from error


def verify_gzip(path: str | Path) -> None:
    """Decompress to the end so gzip checks its CRC: nibabel stops after the voxels it needs, so a
    damaged block can otherwise decode into silently wrong voxels. Costs one extra inflate pass
    (about 0.3 s per 100 MB of voxels), small next to decoding and resampling."""
    with gzip.open(path, "rb") as stream:
        while stream.read(GZIP_CHUNK):
            pass


def describe_read_error(error: BaseException) -> str:
    """Name the failure a user can act on: corrupt gzip, truncated file, or the reader's own words."""
    message = _first_line(error)
    if isinstance(error, EOFError) or "expected" in message.lower() and "bytes" in message.lower():
        return f"truncated file ({message})"
    if isinstance(error, (zlib.error, gzip.BadGzipFile)) or "gzip" in message.lower():
        return f"corrupt gzip data ({message})"
    return f"cannot read image ({type(error).__name__}: {message})"


class _SitkVolume:
    """A SimpleITK volume already decoded to (X, Y, Z[, C]) with MONAI metadata."""

    def __init__(self, array: np.ndarray, meta: dict) -> None:
        self.array, self.meta = array, meta


def _read_sitk(names: list[str]) -> _SitkVolume:
    import SimpleITK as sitk

    is_series = len(names) > 1
    where = Path(names[0]).parent if is_series else names[0]
    try:
        with keep_locale():
            if is_series:
                series_reader = sitk.ImageSeriesReader()
                series_reader.SetFileNames(names)
                series_reader.MetaDataDictionaryArrayUpdateOn()  # per-slice positions, for the spacing check
                with _quiet_itk():  # its "non uniform sampling" warning becomes our error below
                    img = series_reader.Execute()
                check_slice_spacing(series_reader, img, where)
            else:
                img = sitk.ReadImage(names[0])
        array = sitk.GetArrayFromImage(img)  # (Z, Y, X[, C]), or (Y, X[, C]) for 2D
    except RuntimeError as error:
        dicom = is_series or names[0].lower().endswith((".dcm", ".ima"))
        raise DataError(where, f"{'unreadable DICOM series' if dicom else 'cannot read image'} ({_sitk_message(error)})") from error
    spatial = img.GetDimension()
    array = np.ascontiguousarray(np.moveaxis(array, range(spatial), range(spatial)[::-1]))  # (X, Y, Z[, C])
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(spatial, spatial)
    affine = np.eye(4)
    affine[:spatial, :spatial] = direction * np.asarray(img.GetSpacing())
    affine[:spatial, 3] = img.GetOrigin()
    affine = LPS_TO_RAS @ affine  # ITK is LPS, MONAI metadata is RAS
    meta = {
        MetaKeys.AFFINE: affine,
        MetaKeys.ORIGINAL_AFFINE: affine.copy(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape[:spatial]),
        MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if img.GetNumberOfComponentsPerPixel() > 1 else float("nan"),
        MetaKeys.SPACE: SpaceKeys.RAS,
    }
    return _SitkVolume(array, meta)


@contextmanager
def _quiet_itk() -> Iterator[None]:
    import SimpleITK as sitk

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def check_slice_spacing(reader, img, where: str | Path) -> None:
    """Raise :class:`DataError` unless the slices of a series are evenly spaced along the slice normal.

    A missing or duplicated slice shows as an uneven step; ITK would only warn and stretch the spacing.
    Series without ImagePositionPatient on every slice are left to ITK.
    """
    count = len(reader.GetFileNames())
    if count < 2 or not all(reader.HasMetaDataKey(i, IMAGE_POSITION) for i in range(count)):
        return
    normal = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)[:, 2]
    positions = np.array([[float(v) for v in reader.GetMetaData(i, IMAGE_POSITION).split("\\")] for i in range(count)])
    steps = np.diff(np.sort(positions @ normal))
    expected = float(np.median(steps))
    uneven = np.abs(steps - expected) > max(SLICE_STEP_TOLERANCE_MM, SLICE_STEP_TOLERANCE * expected)
    if expected <= 0 or uneven.any():
        odd = ", ".join(f"{s:.3g}" for s in sorted(set(np.round(steps[uneven], 3)))[:3]) or f"{expected:.3g}"
        raise DataError(where, f"irregular DICOM slice spacing: steps of {odd} mm where {expected:.3g} mm is usual ({count} slices); a slice is missing, duplicated or unreadable")


def _single_series(folder: Path) -> list[str]:
    return [str(f) for f in series_files(folder)]


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _sitk_message(error: BaseException) -> str:
    """SimpleITK prefixes its message with the C++ source location; keep the part after ``ERROR:``."""
    text = " ".join(str(error).split())
    return text.split("ERROR:", 1)[-1].strip() if "ERROR:" in text else text
