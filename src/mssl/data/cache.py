"""The preprocessed cache on disk and random crops read from it by memory map.

Layout (written by ``mssl prepare``)::

    CACHE/index.json                      {"format", "version", "preset", "cases": [record, ...]}
    CACHE/images/<case_id>.<hash>.npy     float32 (C, X, Y, Z), C-contiguous, uncompressed
    CACHE/labels/<case_id>.<hash>.npy     uint8 / int16 (1, X, Y, Z), when the source has a label
    CACHE/foreground/<case_id>.<hash>.npy int32 (N, 3) sample of foreground voxels for biased crops

A record holds: case_id, image_source (channel 0), channel_sources (channels 1, 2... when each channel is
its own file), label_source, source_hash, source_stat, image_file, label_file,
foreground_file, channels, shape, spacing, affine, original_shape, original_spacing, original_affine,
pad_value (the volume's minimum, used to pad crops; one per channel, as a list, when there are several),
preset and extra (every datalist key, e.g. split).
Array names carry the source hash so a redone case never overwrites the arrays the index points to.
Every file is written to ``*.tmp`` and renamed, so a killed run never leaves a half-written case.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mssl.data.crops import CropRequest
from mssl.data.errors import DataError
from mssl.data.preprocess import PresetConfig

INDEX_NAME = "index.json"
CACHE_FORMAT = "mssl-cache"
CACHE_VERSION = 1
TMP_SUFFIX = ".tmp"
IMAGES, LABELS, FOREGROUND = "images", "labels", "foreground"
MAX_OPEN_MAPS = 512  # memory maps kept open per process (one file descriptor each)
HASHED_FIELDS = ("case_id", "source_hash", "channels", "shape", "spacing")  # what a model trained on depends on


@dataclass(frozen=True)
class CachedCase:
    """One cached volume: where its arrays are and what it is (``record`` is the raw index entry)."""

    case_id: str
    shape: tuple[int, int, int]
    channels: int
    spacing: tuple[float, float, float]
    pad_value: tuple[float, ...]  # per channel
    extra: dict
    record: dict

    @classmethod
    def from_record(cls, record: dict) -> "CachedCase":
        return cls(
            case_id=record["case_id"],
            shape=tuple(record["shape"]),
            channels=int(record["channels"]),
            spacing=tuple(record["spacing"]),
            pad_value=_pad_values(record),
            extra=dict(record.get("extra", {})),
            record=record,
        )


def _pad_values(record: dict) -> tuple[float, ...]:
    """One padding value per channel: a list in a multi-channel record, else the volume's minimum."""
    value = record["pad_value"]
    return tuple(float(v) for v in value) if isinstance(value, list) else (float(value),) * int(record["channels"])


class CacheIndex:
    """Read access to a cache folder: metadata, memory-mapped arrays, selection and a provenance hash.

    Memory maps are opened lazily and per process (they are dropped when the index is pickled), so an
    index travels to DataLoader workers under fork and spawn alike.
    """

    def __init__(self, root: Path, preset: PresetConfig, records: Iterable[dict]) -> None:
        self.root = Path(root)
        self.preset = preset
        self.cases = [CachedCase.from_record(r) for r in records]
        self._by_id = {c.case_id: c for c in self.cases}
        self._maps: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    @classmethod
    def open(cls, root: str | Path) -> "CacheIndex":
        """Open ``root/index.json`` (raises :class:`DataError` when it is missing or unreadable)."""
        root = Path(root)
        document = read_index(root)
        if document is None:
            raise DataError(root / INDEX_NAME, "no cache index here; run `mssl prepare SOURCE --out CACHE` first")
        return cls(root, PresetConfig(**document["preset"]), document["cases"])

    def __len__(self) -> int:
        return len(self.cases)

    def __contains__(self, case_id: object) -> bool:
        return case_id in self._by_id

    def case(self, case_id: str) -> CachedCase:
        if case_id not in self._by_id:
            raise KeyError(f"case {case_id!r} is not in the cache {self.root}")
        return self._by_id[case_id]

    def select(self, split: str | Iterable[str] | None = None, case_ids: Iterable[str] | None = None) -> "CacheIndex":
        """The cases with ``extra["split"]`` in ``split`` and/or whose id is in ``case_ids`` (in cache order)."""
        splits = {split} if isinstance(split, str) else set(split) if split is not None else None
        wanted = set(case_ids) if case_ids is not None else None
        if wanted is not None and (unknown := sorted(wanted - set(self._by_id))):
            raise KeyError(f"case ids not in the cache {self.root}: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
        kept = [
            c.record
            for c in self.cases
            if (splits is None or c.extra.get("split") in splits) and (wanted is None or c.case_id in wanted)
        ]
        return CacheIndex(self.root, self.preset, kept)

    def channels(self) -> int:
        """The channel count of the cases, which they must share (crops of different counts cannot be batched)."""
        counts = sorted({c.channels for c in self.cases})
        if len(counts) != 1:
            problem = f"cases have different channel counts {counts}; crops cannot be batched" if counts else "no cases"
            raise DataError(self.root, problem)
        return counts[0]

    def hash(self) -> str:
        """Stable hash of what training sees (preset, and per case id, source hash, channels, shape,
        spacing); independent of case order, file locations and modification times."""
        content = {
            "preset": self.preset.model_dump(mode="json"),
            "cases": sorted(([c.record[f] for f in HASHED_FIELDS] for c in self.cases), key=lambda r: r[0]),
        }
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def image(self, case_id: str) -> np.ndarray:
        """The preprocessed image, memory-mapped read-only: float32 (C, X, Y, Z)."""
        return self._map(case_id, "image_file")

    def label(self, case_id: str) -> np.ndarray | None:
        """The preprocessed label map (1, X, Y, Z), memory-mapped; None for an unlabelled case."""
        return self._map(case_id, "label_file") if self.case(case_id).record.get("label_file") else None

    def foreground(self, case_id: str) -> np.ndarray:
        """A sample of foreground voxel coordinates (N, 3) (label > 0, else image above its mean)."""
        return self._map(case_id, "foreground_file")

    def _map(self, case_id: str, field: str) -> np.ndarray:
        """Least-recently-used memory maps: each holds a file descriptor, and a cache of thousands of
        cases would otherwise exhaust the usual 1024-descriptor limit hours into a run."""
        key = (case_id, field)
        if key in self._maps:
            self._maps.move_to_end(key)
        else:
            self._maps[key] = np.load(self.root / self.case(case_id).record[field], mmap_mode="r")
            if len(self._maps) > MAX_OPEN_MAPS:
                self._maps.popitem(last=False)
        return self._maps[key]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_maps"] = OrderedDict()  # memory maps are per process
        return state


class CropDataset(Dataset):
    """Random crops from the cache: item ``i`` is a pure function of ``(seed, i)``.

    Returns ``{key: float32 tensor (volumes, C, *size)}`` for each ``CropRequest``; the ``volumes`` crops
    come from different volumes (when the cache holds at least that many). A volume smaller than the crop
    is padded with its minimum (a warning lists such cases once). With ``foreground_bias`` p, a crop is
    centred on a stored foreground voxel with probability p. Nothing depends on worker id or iteration
    order, so a sampler may start anywhere (exact resume at ``global_step * batch_size``).
    """

    def __init__(
        self,
        index: CacheIndex,
        requests: Mapping[str, CropRequest],
        length: int,
        seed: int,
        foreground_bias: float = 0.0,
        case_ids: list[str] | None = None,
    ) -> None:
        self.index = index.select(case_ids=case_ids) if case_ids is not None else index
        self.requests = {key: requests[key] for key in sorted(requests)}
        self.length = int(length)
        self.seed = int(seed)
        self.foreground_bias = float(foreground_bias)
        if not self.index.cases:
            raise DataError(index.root, "no cases to crop from (empty cache or selection)")
        if self.length < 0 or self.seed < 0:
            raise ValueError(f"length and seed must be non-negative, got length={length}, seed={seed}")
        if not 0.0 <= self.foreground_bias <= 1.0:
            raise ValueError(f"foreground_bias must be in [0, 1], got {foreground_bias}")
        self.index.channels()  # one count, or a DataError now rather than in a worker
        self._warn_small_volumes()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        if not 0 <= item < self.length:
            raise IndexError(f"item {item} outside 0..{self.length - 1}")
        rng = np.random.default_rng([self.seed, item])
        cases = self.index.cases
        batch = {}
        for key, request in self.requests.items():
            chosen = rng.choice(len(cases), size=request.volumes, replace=len(cases) < request.volumes)
            size = tuple(request.size)
            if request.corresponding:  # one relative position for all volumes of the sample, then a jitter each
                relative = rng.random(3)
                crops = [self._crop(cases[j], size, rng, relative, request.jitter) for j in chosen]
            else:
                crops = [self._crop(cases[j], size, rng) for j in chosen]
            batch[key] = torch.from_numpy(np.stack(crops))  # (volumes, C, *size)
        return batch

    def _crop(
        self,
        case: CachedCase,
        size: tuple[int, int, int],
        rng: np.random.Generator,
        relative: np.ndarray | None = None,
        jitter: int = 0,
    ) -> np.ndarray:
        """A crop at a random start, or at ``relative`` (3 values in [0, 1]) of the start range ± ``jitter``."""
        image = self.index.image(case.case_id)  # (C, X, Y, Z) memmap
        # a start may be negative (crop larger than the volume): the volume then sits at a random offset
        low = [min(0, d - s) for d, s in zip(case.shape, size)]
        high = [max(0, d - s) for d, s in zip(case.shape, size)]
        if relative is not None:
            shift = rng.integers(-jitter, jitter + 1, size=3)
            start = [int(np.clip(round(lo + r * (hi - lo)) + j, lo, hi)) for r, j, lo, hi in zip(relative, shift, low, high)]
        elif self.foreground_bias and rng.random() < self.foreground_bias and len(points := self.index.foreground(case.case_id)):
            centre = points[rng.integers(len(points))]
            start = [int(np.clip(c - s // 2, lo, hi)) for c, s, lo, hi in zip(centre, size, low, high)]
        else:
            start = [int(rng.integers(lo, hi + 1)) for lo, hi in zip(low, high)]
        source = tuple(slice(max(b, 0), min(b + s, d)) for b, s, d in zip(start, size, case.shape))
        target = tuple(slice(src.start - b, src.stop - b) for src, b in zip(source, start))
        if all(s == d for s, d in zip(size, (src.stop - src.start for src in source))):
            return np.array(image[(slice(None), *source)], dtype=np.float32)
        crop = np.empty((case.channels, *size), dtype=np.float32)
        crop[:] = np.asarray(case.pad_value, dtype=np.float32).reshape(-1, 1, 1, 1)  # each channel padded with its own minimum
        crop[(slice(None), *target)] = image[(slice(None), *source)]
        return crop

    def _warn_small_volumes(self) -> None:
        for key, request in self.requests.items():
            small = [c.case_id for c in self.index.cases if any(d < s for d, s in zip(c.shape, request.size))]
            if small:
                listed = ", ".join(small[:5]) + (" ..." if len(small) > 5 else "")
                warnings.warn(
                    f"{self.index.root}: {len(small)} of {len(self.index)} cases are smaller than the {key!r} crop "
                    f"{tuple(request.size)} and will be padded: {listed}",
                    stacklevel=3,
                )


# --- writing (used by mssl.data.prepare) ----------------------------------------------------------


def read_index(root: Path) -> dict | None:
    """The index document of ``root``, or None when there is none yet."""
    path = Path(root) / INDEX_NAME
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(path, f"unreadable cache index ({error})") from error
    if not isinstance(document, dict) or document.get("format") != CACHE_FORMAT or "cases" not in document:
        raise DataError(path, f"not an mssl cache index (expected format {CACHE_FORMAT!r})")
    if document.get("version") != CACHE_VERSION:
        raise DataError(path, f"cache version {document.get('version')} is not {CACHE_VERSION}; prepare a new cache")
    return document


def write_index(root: Path, preset: PresetConfig, records: Iterable[dict]) -> None:
    """Atomically replace ``root/index.json`` (cases sorted by id, one per line)."""
    header = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "preset": preset.model_dump(mode="json")}
    cases = ",\n".join(json.dumps(r) for r in sorted(records, key=lambda r: r["case_id"]))
    text = json.dumps(header)[:-1] + ', "cases": [\n' + cases + "\n]}\n"  # one case per line: compact, greppable
    _atomic_write(Path(root) / INDEX_NAME, lambda handle: handle.write(text.encode()))


def write_array(path: Path, array: np.ndarray) -> None:
    """Atomically write an uncompressed ``.npy`` (C order, so crops memory-map without copies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda handle: np.save(handle, np.ascontiguousarray(array), allow_pickle=False))


def remove_stale_temporaries(root: Path) -> int:
    """Delete ``*.tmp`` files a killed run left behind; returns how many."""
    stale = [p for p in Path(root).rglob(f"*{TMP_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink()
    return len(stale)


def _atomic_write(path: Path, write) -> None:
    temporary = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)  # a full disk keeps the old file and gets its space back
        raise
