"""DICOM series on disk: which files are DICOM, which series a folder holds, and the locale GDCM resets.

Both the source discovery (:mod:`mssl.data.sources`) and the readers (:mod:`mssl.data.readers`) need
these, so they live below both.
"""

from __future__ import annotations

import locale
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mssl.data.errors import DataError

DICOM_SUFFIXES = (".dcm", ".ima")
DICOM_MAGIC_OFFSET = 128  # DICOM Part 10 files carry "DICM" after a 128-byte preamble
DICOMDIR = "DICOMDIR"  # a media directory record, not a slice


@contextmanager
def keep_locale() -> Iterator[None]:
    """Undo the ``setlocale(LC_ALL, "C")`` that GDCM performs when it touches DICOM.

    Without this, every later text file or subprocess pipe in the process silently falls back to
    ASCII, and the first "²" or "±" in a report raises UnicodeEncodeError.
    """
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def is_dicom_file(path: Path) -> bool:
    """A DICOM file by extension, or by the ``DICM`` magic for extension-less files."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    if path.suffix:
        return False
    try:
        with open(path, "rb") as handle:
            handle.seek(DICOM_MAGIC_OFFSET)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def dicom_series(folder: Path) -> list[tuple[str, list[Path]]]:
    """``(SeriesInstanceUID, sorted files)`` for each series directly inside ``folder`` (via GDCM)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader
    with keep_locale():
        return [(uid, [Path(f) for f in reader.GetGDCMSeriesFileNames(str(folder), uid)]) for uid in reader.GetGDCMSeriesIDs(str(folder))]


def series_files(folder: Path, uid: str | None = None) -> list[Path]:
    """The sorted files of series ``uid`` in ``folder`` (of its only series when ``uid`` is None).

    Raises :class:`DataError` when the series is not there, or when DICOM files of the folder belong
    to no readable series: GDCM leaves out a slice it cannot parse, which would silently shorten the
    volume and stretch its spacing.
    """
    series = dicom_series(folder)
    listed = {f.name for _, files in series for f in files}  # GDCM may spell the folder differently
    stray = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in listed and p.name != DICOMDIR and is_dicom_file(p))
    if stray:
        shown = ", ".join(stray[:3]) + (" ..." if len(stray) > 3 else "")
        raise DataError(folder, f"unreadable DICOM series: {len(stray)} DICOM files belong to no readable series ({shown})")
    if uid is None and len(series) != 1:
        problem = "no readable DICOM series found" if not series else f"holds {len(series)} DICOM series; read one series' files"
        raise DataError(folder, f"unreadable DICOM series ({problem})")
    chosen = [files for series_uid, files in series if uid is None or series_uid == uid]
    if not chosen:
        raise DataError(folder, f"unreadable DICOM series: series {uid} not found")
    return chosen[0]
