"""Synthetic volumes for the data-layer tests (no tests here; imported by tests/test_data_*.py)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from mssl.data.dicom import keep_locale

AIR_HU, TISSUE_HU, BONE_HU = -1000.0, 40.0, 700.0


def synthetic_ct(shape=(40, 36, 24), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An int16 HU volume (air, an ellipsoidal body with a bony core) and its uint8 label (1 body, 2 bone)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt((grid**2 / np.array([0.6, 0.7, 0.8])[:, None, None, None] ** 2).sum(0))
    label = np.zeros(shape, np.uint8)
    label[radius < 1] = 1
    label[radius < 0.4] = 2
    hu = np.choose(label, [AIR_HU, TISSUE_HU, BONE_HU]) + rng.normal(0, 10, shape)
    return hu.astype(np.int16), label


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 3.0, 1.0]) if affine is None else affine), str(path))
    return path


def write_sitk(path: Path, array: np.ndarray, spacing=(1.5, 1.5, 3.0)) -> Path:
    """Write (X, Y, Z) ``array`` with SimpleITK (NRRD, MetaImage...) on an identity direction."""
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))  # sitk wants (Z, Y, X)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def write_dicom_series(
    folder: Path,
    array: np.ndarray,
    spacing=(1.5, 1.5, 3.0),
    series_uid: str = "1.2.826.0.1.3680043.2.1125.1",
    origin=(0.0, 0.0, 0.0),
    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
) -> Path:
    """Write an int16 (X, Y, Z) volume as a CT DICOM series (one file per slice) with SimpleITK;
    ``origin``/``direction`` are ITK's (LPS)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    volume = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array.astype(np.int16), (2, 1, 0))))
    volume.SetSpacing(spacing)
    volume.SetOrigin(origin)
    volume.SetDirection(direction)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for z in range(array.shape[2]):
        slice_image = volume[:, :, z]
        position = volume.TransformIndexToPhysicalPoint((0, 0, z))
        for tag, value in {
            "0008|0060": "CT",
            "0020|000d": series_uid + ".0",  # study
            "0020|000e": series_uid,  # series
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7])),
            "0020|0013": str(z + 1),
            "0018|0050": f"{spacing[2]:.6f}",
            "0008|0018": f"{series_uid}.{z + 1}",  # SOP instance
        }.items():
            slice_image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid.rsplit('.', 1)[-1]}_{z:04d}.dcm"))
        with keep_locale():  # GDCM resets the process locale to "C"
            writer.Execute(slice_image)
    return folder
