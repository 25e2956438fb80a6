"""Where volumes come from: one list of :class:`Case` from any of five source kinds.

``find_cases`` detects the kind from what it is given (a single image file is a one-case source):

- an MSD-style datalist JSON (a file, or a folder holding ``dataset.json`` with a ``training`` /
  ``validation`` / ``test`` list) — entries ``{"image", "label", ...}`` or plain path strings, paths
  relative to the JSON's folder (or ``base_dir``), every other key kept in ``Case.extra``; an ``image``
  may be a list of files, one per channel;
- an nnU-Net raw dataset folder (``imagesTr/<case>_0000.nii.gz``, ``_0001``... one file per channel,
  + ``labelsTr/<case>.nii.gz``);
- a folder searched recursively for ``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``, ``.mhd`` files and
  DICOM series (one case per SeriesInstanceUID);
- a glob pattern (``data/**/*.nii.gz``), matched recursively.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mssl.data.errors import DataError
from mssl.data.dicom import DICOM_SUFFIXES, dicom_series, is_dicom_file

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
DATALIST_NAME = "dataset.json"
SECTIONS = ("training", "validation", "test")
NNUNET_FIRST_CHANNEL = "_0000"
NNUNET_CHANNEL = re.compile(r"_(\d{4})$")  # the channel number nnU-Net appends to a case id
_GLOB_CHARS = re.compile(r"[*?\[]")
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Case:
    """One volume to preprocess.

    case_id: unique, file-name-safe identifier (file name without extension, or a relative path when
        names collide).
    image: the image file, or the DICOM series folder (channel 0 when channels are separate files).
    other_channels: the files of channels 1, 2... when each channel is its own file (nnU-Net ``_0001``,
        a datalist ``image`` list); empty when ``image`` holds every channel.
    label: the label map, if the source names one.
    extra: every other datalist key (``split``, ``present_labels``, ``age``...), plus ``section`` (which
        datalist list the entry came from) and ``series_uid`` for DICOM series.
    classes: the class numbers a label may hold, when the datalist names them (its ``labels`` keys).
    """

    case_id: str
    image: Path
    label: Path | None = None
    extra: dict = field(default_factory=dict)
    classes: tuple[int, ...] | None = None
    other_channels: tuple[Path, ...] = ()

    @property
    def image_files(self) -> tuple[Path, ...]:
        """Every image path, channel by channel."""
        return (self.image, *self.other_channels)


def find_cases(
    source: str | Path,
    base_dir: Path | None = None,
    sections: Sequence[str] = SECTIONS,
    *,
    missing: Literal["raise", "keep"] = "raise",
) -> list[Case]:
    """List the cases of ``source`` (datalist JSON, nnU-Net raw folder, image/DICOM folder or glob).

    ``base_dir`` overrides the folder that datalist paths are relative to; ``sections`` are the datalist
    lists to read. A datalist path that does not exist raises :class:`DataError` unless ``missing="keep"``
    (then the case is kept and fails when it is read, so ``mssl prepare`` can skip it and go on).
    An empty source raises :class:`DataError`.
    """
    path = Path(source).expanduser()
    if path.exists():
        path = path.resolve()  # cache records keep absolute source paths, whatever the working folder
    if path.is_file() and path.suffix.lower() == ".json":
        cases = _from_datalist(path, base_dir, sections, missing)
    elif path.is_file() and is_image_file(path):
        cases = [Case(_safe_id(strip_image_suffix(path.name)), path)]
    elif path.is_dir() and _is_nnunet_raw(path):
        cases = _from_nnunet_raw(path, missing)
    elif path.is_dir() and _has_datalist(path / DATALIST_NAME, sections):
        cases = _from_datalist(path / DATALIST_NAME, base_dir, sections, missing)
    elif path.is_dir():
        cases = _from_folder(path)
    elif path.exists():
        raise DataError(path, f"not an image ({', '.join(IMAGE_SUFFIXES)}), folder, datalist JSON or glob")
    elif _GLOB_CHARS.search(str(source)):
        cases = _from_glob(str(Path(str(source)).expanduser()))
    else:
        raise DataError(path, "does not exist")
    if not cases:
        raise DataError(path, f"empty source: no images ({', '.join(IMAGE_SUFFIXES)}) or DICOM series found")
    return cases


def is_image_file(path: Path) -> bool:
    """True for the volume formats we read (NIfTI, NRRD, MetaImage)."""
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def strip_image_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES + DICOM_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


# --- datalist -------------------------------------------------------------------------------------


def _has_datalist(path: Path, sections: Sequence[str]) -> bool:
    if not path.is_file():
        return False
    data = _read_json(path)
    return isinstance(data, dict) and any(isinstance(data.get(s), list) for s in sections)


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(path, f"cannot read datalist JSON: {error}") from error


def _from_datalist(path: Path, base_dir: Path | None, sections: Sequence[str], missing: str) -> list[Case]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DataError(path, "datalist must be a JSON object with 'training'/'validation'/'test' lists")
    root = Path(base_dir).expanduser() if base_dir is not None else path.parent
    classes = _datalist_classes(data, path)
    found: list[tuple[str, Path, Path | None, dict]] = []
    other_channels: list[tuple[Path, ...]] = []  # per entry, in the order of ``found``
    for section in sections:
        entries = data.get(section, [])
        if not isinstance(entries, list):
            raise DataError(path, f"'{section}' must be a list, got {type(entries).__name__}")
        for number, entry in enumerate(entries):
            where = f"'{section}' entry {number}"
            if isinstance(entry, str):
                entry = {"image": entry}
            if not isinstance(entry, dict) or not _is_image_value(entry.get("image")):
                raise DataError(path, f"{where}: needs an 'image' path string or a non-empty list of them (one per channel)")
            image, *more = [_resolve(root, value, path, where, missing) for value in _as_list(entry["image"])]
            other_channels.append(tuple(more))
            label_value = entry.get("label")
            if label_value is not None and not isinstance(label_value, str):
                raise DataError(path, f"{where}: 'label' must be a path string")
            label = _resolve(root, label_value, path, where, missing) if label_value else None
            extra = {k: v for k, v in entry.items() if k not in ("image", "label")}
            extra.setdefault("section", section)
            found.append((strip_image_suffix(image.name), image, label, extra))
    cases = _with_unique_ids(found, root)
    for case, more in zip(cases, other_channels):  # _with_unique_ids keeps the order
        case.classes = classes
        case.other_channels = more
    return cases


def _is_image_value(value: object) -> bool:
    """A datalist ``image``: one path string, or a non-empty list of them (one file per channel)."""
    return isinstance(value, str) or (isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value))


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def _datalist_classes(data: dict, path: Path) -> tuple[int, ...] | None:
    """The class numbers of the datalist's ``labels`` mapping (``{"0": "background", "1": ...}``), if any."""
    labels = data.get("labels")
    if labels is None:
        return None
    try:
        return tuple(sorted(int(key) for key in labels))
    except (TypeError, ValueError):
        raise DataError(path, f"'labels' must map class numbers to names, got {labels!r}") from None


def _resolve(root: Path, value: str, datalist: Path, where: str, missing: str) -> Path:
    resolved = (root / value).expanduser().resolve() if not os.path.isabs(value) else Path(value)
    if missing == "raise" and not resolved.exists():
        raise DataError(resolved, f"does not exist (listed in {datalist}, {where})")
    return resolved


# --- nnU-Net raw ----------------------------------------------------------------------------------


def _is_nnunet_raw(folder: Path) -> bool:
    images = folder / "imagesTr"
    return images.is_dir() and any(strip_image_suffix(p.name).endswith(NNUNET_FIRST_CHANNEL) for p in images.iterdir())


def _from_nnunet_raw(folder: Path, missing: str = "raise") -> list[Case]:
    """imagesTr/<case>_0000.*, _0001.*... (one file per channel) with labelsTr/<case>.*.

    Every case needs the same channels: those ``dataset.json`` names (``channel_names`` or ``modality``),
    else as many as the case with the most. A missing channel file raises :class:`DataError` unless
    ``missing="keep"`` (the case then fails, naming the file, when it is read)."""
    channels: dict[str, dict[int, Path]] = {}
    for image in sorted((folder / "imagesTr").iterdir()):
        match = NNUNET_CHANNEL.search(strip_image_suffix(image.name))
        if is_image_file(image) and match:
            channels.setdefault(strip_image_suffix(image.name)[: match.start()], {})[int(match.group(1))] = image
    channels = {case_id: found for case_id, found in channels.items() if 0 in found}  # a case is named by its _0000 file
    count = _nnunet_channel_count(folder) or max((max(found) + 1 for found in channels.values()), default=1)
    cases = []
    for case_id, found in channels.items():
        if max(found) >= count:
            raise DataError(found[max(found)], f"channel {max(found)} of case {case_id}, but {folder / DATALIST_NAME} names {count} channels")
        files = [found.get(number, _missing_channel_file(found[0], number)) for number in range(count)]
        absent = next((f for f in files if not f.exists()), None)
        if absent is not None and missing == "raise":
            raise DataError(absent, f"does not exist: case {case_id} needs {count} channel files (_0000 to _{count - 1:04d})")
        labels = [p for p in (folder / "labelsTr").glob(f"{case_id}.*") if is_image_file(p)] if (folder / "labelsTr").is_dir() else []
        cases.append(Case(_safe_id(case_id), files[0], labels[0] if labels else None, {"section": "training"}, other_channels=tuple(files[1:])))
    return cases


def _nnunet_channel_count(folder: Path) -> int | None:
    """How many channels the raw dataset's ``dataset.json`` names, if it names them."""
    path = folder / DATALIST_NAME
    data = _read_json(path) if path.is_file() else {}
    names = data.get("channel_names") or data.get("modality") if isinstance(data, dict) else None
    return len(names) if isinstance(names, dict) and names else None


def _missing_channel_file(first: Path, number: int) -> Path:
    """Where channel ``number`` of the case whose channel 0 is ``first`` would be (same folder and suffix)."""
    stem = strip_image_suffix(first.name)
    return first.with_name(f"{stem[: -len(NNUNET_FIRST_CHANNEL)]}_{number:04d}{first.name[len(stem):]}")


# --- folders and globs ----------------------------------------------------------------------------


def walk(root: Path, max_depth: int | None = None) -> Iterator[tuple[Path, list[str], list[str]]]:
    """``os.walk`` (sorted, top-down) that follows symlinked folders but enters each real folder once,
    so a symlink cycle ends instead of recursing until the path is too long. ``max_depth`` folders below
    ``root`` at most."""
    visited: set[str] = set()
    for folder, dirnames, filenames in os.walk(root, followlinks=True):
        visited.add(os.path.realpath(folder))
        depth = len(Path(folder).relative_to(root).parts)
        fresh = [d for d in sorted(dirnames) if os.path.realpath(os.path.join(folder, d)) not in visited]
        dirnames[:] = fresh if max_depth is None or depth < max_depth else []
        yield Path(folder), fresh, sorted(filenames)


def glob_paths(pattern: str) -> list[Path]:
    """Paths matching ``pattern`` (``*``, ``?``, ``[...]`` within a name; ``**`` any number of folders),
    like ``glob.glob(recursive=True)`` but through :func:`walk`, so a symlink loop cannot trap it."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if _GLOB_CHARS.search(part)), len(parts))
    root, wanted = Path(*parts[:fixed]) if fixed else Path(), parts[fixed:]
    if not wanted:
        return [root] if root.exists() else []
    depth = None if "**" in wanted else len(wanted) - 1
    matches = []
    for folder, dirnames, filenames in walk(root, max_depth=depth) if root.is_dir() else ():
        relative = folder.relative_to(root).parts
        matches += [folder / name for name in dirnames + filenames if _matches((*relative, name), wanted)]
    return sorted(matches)


def _matches(names: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    """Whether path components ``names`` match glob components ``pattern`` (hidden names only by a leading dot)."""
    if not pattern:
        return not names
    if pattern[0] == "**":  # any number of non-hidden names
        visible = next((i for i, name in enumerate(names) if name.startswith(".")), len(names))
        return any(_matches(names[start:], pattern[1:]) for start in range(visible + 1))
    return (
        bool(names)
        and (not names[0].startswith(".") or pattern[0].startswith("."))
        and fnmatch.fnmatchcase(names[0], pattern[0])
        and _matches(names[1:], pattern[1:])
    )


def _from_folder(root: Path) -> list[Case]:
    found: list[tuple[str, Path, Path | None, dict]] = []
    for here, _, filenames in walk(root):
        files = [here / name for name in filenames]
        found += [(strip_image_suffix(f.name), f, None, {}) for f in files if is_image_file(f)]
        if any(is_dicom_file(f) for f in files):
            found += _series_cases(here)
    return _with_unique_ids(found, root)


def _series_cases(folder: Path) -> list[tuple[str, Path, None, dict]]:
    """One case per series; a folder of DICOM files with no readable series still yields one case that
    fails, by name, when it is read."""
    series = dicom_series(folder)
    if not series:
        return [(folder.name, folder, None, {})]
    if len(series) == 1:
        return [(folder.name, folder, None, {"series_uid": series[0][0]})]
    return [(f"{folder.name}_{uid.split('.')[-1]}", folder, None, {"series_uid": uid}) for uid, _ in series]


def _from_glob(pattern: str) -> list[Case]:
    """Matched image files are cases (ids unique relative to their common folder); matched folders are
    searched like a folder source."""
    matches = [m.resolve() for m in glob_paths(pattern)]
    files = [(strip_image_suffix(p.name), p, None, {}) for p in matches if p.is_file() and is_image_file(p)]
    root = Path(os.path.commonpath([str(p.parent) for _, p, _, _ in files])) if files else Path.cwd()
    cases = _with_unique_ids(files, root)
    for folder in (p for p in matches if p.is_dir()):
        cases += _from_folder(folder)
    return _deduplicate(cases)


def _with_unique_ids(found: Iterable[tuple[str, Path, Path | None, dict]], root: Path) -> list[Case]:
    """Name cases by file stem; where stems collide, by the path relative to ``root``."""
    found = list(found)
    counts: dict[str, int] = {}
    for stem, *_ in found:
        counts[stem] = counts.get(stem, 0) + 1
    cases = []
    for stem, image, label, extra in found:
        if counts[stem] > 1:
            try:
                relative = image.resolve().relative_to(root.resolve())
            except ValueError:
                relative = image
            suffix = f"_{extra['series_uid'].split('.')[-1]}" if "series_uid" in extra and image.is_dir() else ""
            stem = strip_image_suffix(str(relative)).replace(os.sep, "_") + suffix
        cases.append(Case(_safe_id(stem), image, label, extra))
    return _deduplicate(cases)


def _deduplicate(cases: list[Case]) -> list[Case]:
    """Make ids unique even after sanitising (``a b`` and ``a_b``) by numbering repeats."""
    seen: dict[str, int] = {}
    for case in cases:
        if case.case_id in seen:
            seen[case.case_id] += 1
            case.case_id = f"{case.case_id}_{seen[case.case_id]}"
        else:
            seen[case.case_id] = 0
    return cases


def _safe_id(name: str) -> str:
    return _UNSAFE_ID_CHARS.sub("_", name).strip("_") or "case"
