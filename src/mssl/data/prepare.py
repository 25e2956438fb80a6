"""``mssl prepare``: preprocess every case of a source once into the memory-mappable cache.

Idempotent and resumable: a case whose source files and preset are unchanged is skipped; a changed one
is redone under new array names and the index switched to them only when they are complete; the index
is rewritten atomically after each case, so a killed run loses at most the cases in flight. Two
prepares of one cache (parallel benchmark streams, say) take turns on a lock file; the second then finds
the cases the first wrote unchanged, instead of deleting its temporaries. Bad inputs
become one-line errors (file + problem); ``on_error="skip"`` goes on and counts them, ``"stop"`` stops
after the first. Nothing already in the cache is lost: a case that fails keeps its previous entry.
"""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import re
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from mssl.config import PresetName, build_config
from mssl.data.cache import FOREGROUND, IMAGES, INDEX_NAME, LABELS, read_index, remove_stale_temporaries, write_array, write_index
from mssl.data.config import OnError, PrepareConfig, PresetConfig
from mssl.data.dicom import dicom_series, is_dicom_file
from mssl.data.errors import DataError
from mssl.data.preprocess import check_files_exist, load_case
from mssl.data.sources import Case, find_cases

HASH_CHUNK = 1 << 20
FILE_HASH_CHARS = 12  # source-hash prefix in array file names
FOREGROUND_POINTS = 4096  # foreground voxels kept per case for biased crops
FOREGROUND_PROBES = 262_144  # random voxels probed before falling back to a full scan
_MHD_DATA_FILE = re.compile(rb"^\s*ElementDataFile\s*=\s*(.+?)\s*$", re.MULTILINE)

LOCK_NAME = ".prepare.lock"


@dataclass
class PrepareReport:
    """What a run did: case ids written or unchanged, and ``(path, problem)`` for each failure."""

    out: Path
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # cases whose source file is gone
    stopped: bool = False  # on_error="stop" hit an error; later cases were not attempted

    @property
    def ok(self) -> bool:
        """The run finished and the cache holds at least one usable case from this source."""
        return not self.stopped and bool(self.written or self.unchanged)

    def summary(self) -> str:
        removed = f", {len(self.removed)} removed (source gone)" if self.removed else ""
        text = f"{len(self.written)} written, {len(self.unchanged)} unchanged, {len(self.failed)} failed{removed} → {self.out / INDEX_NAME}"
        return text + (" (stopped at the first error)" if self.stopped else "")


def prepare(
    source: str | Path | None = None,
    out: str | Path | None = None,
    preset: PresetName | PresetConfig | None = None,
    workers: int | None = None,
    on_error: OnError | None = None,
    base_dir: str | Path | None = None,
    *,
    config: PrepareConfig | Mapping[str, Any] | str | Path | None = None,
    progress: bool = False,
    **preset_options: Any,
) -> PrepareReport:
    """Preprocess ``source`` (folder, glob, datalist JSON, nnU-Net raw folder, DICOM folders) into ``out``.

    The same values as ``mssl prepare``: ``config`` (a :class:`PrepareConfig`, a mapping or a YAML file)
    under the arguments given (None: not set). ``preset`` is a name ("ct", "mri", "none") refined by the
    command's preset options as keywords (``spacing=(1.5, 1.5, 1.5)``, ``a_min``, ``a_max``, ``lower``,
    ``upper``, ``foreground_crop``, ``channel_axis``, or dotted: ``**{"preset.spacing": 2}``), or a whole
    :class:`PresetConfig`. ``workers`` > 1 runs a spawn-safe process pool; ``progress`` shows a Rich
    progress bar and prints one line per bad file on stderr. Raises :class:`ConfigError` naming a bad
    key, :class:`DataError` for an empty or missing source, or a cache that was prepared with another
    preset (use another ``out`` for that).
    """
    if isinstance(preset, PresetConfig) and preset_options:
        raise ValueError(f"give preset options ({', '.join(preset_options)}) either in the PresetConfig or as keywords, not both")
    chosen = dict(source=source, out=out, preset=preset, workers=workers, on_error=on_error, base_dir=base_dir, **preset_options)
    settings = build_config(PrepareConfig, config, **chosen)
    cases = find_cases(settings.source, settings.base_dir, missing="keep")
    settings.out.mkdir(parents=True, exist_ok=True)
    with FileLock(settings.out / LOCK_NAME):
        return _prepare_locked(cases, settings.out, settings.preset, settings.workers, settings.on_error, progress)


def _prepare_locked(cases: list[Case], out: Path, preset: PresetConfig, workers: int, on_error: OnError, progress: bool) -> PrepareReport:
    remove_stale_temporaries(out)  # safe: no other prepare of this cache is running
    records = _existing_records(out, preset)
    report = PrepareReport(out)
    _drop_deleted_sources(records, {case.case_id for case in cases}, out, preset, report)
    todo, conflicts = [], []
    for case in cases:
        previous = records.get(case.case_id)
        if previous is not None and _is_current(previous, case, out):
            report.unchanged.append(case.case_id)
        elif previous is not None and _is_other_source(previous, case):
            conflicts.append((str(case.image), f"case id {case.case_id!r} is already cached from {previous['image_source']}; prepare this source into another --out"))
        else:
            todo.append(case)

    with _Display(progress, total=len(cases), done=len(report.unchanged)) as display:

        def fail(path: str, problem: str) -> None:
            report.failed.append((path, problem))
            display.error(path, problem)
            display.advance()
            report.stopped = report.stopped or on_error == "stop"

        for conflict in conflicts:
            fail(*conflict)
        for case, outcome in _run([] if report.stopped else todo, preset, out, records, workers, report):
            status, payload = outcome
            if status == "failed":
                fail(*payload)
            else:
                stale = _replaced_files(records.get(case.case_id), payload)
                records[case.case_id] = payload
                write_index(out, preset, records.values())
                for path in stale:
                    (out / path).unlink(missing_ok=True)
                (report.written if status == "written" else report.unchanged).append(case.case_id)
                display.advance()
    if not records and not (out / INDEX_NAME).exists():
        write_index(out, preset, [])  # an empty but valid cache, so the next run finds a preset
    return report


def _drop_deleted_sources(records: dict[str, dict], listed: set[str], out: Path, preset: PresetConfig, report: PrepareReport) -> None:
    """Forget cases whose image source no longer exists and that this source does not list (a deleted
    file), with their arrays. A case still listed keeps its entry when it fails, and cases of another
    source sharing the cache stay while their files exist."""
    gone = [case_id for case_id, record in records.items() if case_id not in listed and not Path(record["image_source"]).exists()]
    if not gone:
        return
    stale = [records.pop(case_id) for case_id in gone]
    write_index(out, preset, records.values())
    for record in stale:
        for path in _replaced_files(record, {}):
            (out / path).unlink(missing_ok=True)
    report.removed += gone


def source_files(case: Case, watched: bool = False) -> list[Path]:
    """Every file whose bytes define the case: the image (with a MetaImage's data file, or the files of
    its DICOM series) and the label. With ``watched``, a DICOM folder contributes all its files instead:
    listing them is cheap, while finding one series' files parses every header (GDCM). Raises
    :class:`DataError` for a missing path."""
    check_files_exist(case)
    files = []
    for path in (*case.image_files, case.label):
        if path is None:
            continue
        if path.is_dir() and watched:
            files += sorted(p for p in path.iterdir() if p.is_file())
        elif path.is_dir():
            uid = case.extra.get("series_uid")
            series = [f for u, fs in dicom_series(path) for f in fs if uid is None or u == uid]
            files += series or sorted(p for p in path.iterdir() if p.is_file() and is_dicom_file(p))
        else:
            files.append(path)
            files += _mhd_data_files(path)
    return files


def source_hash(files: list[Path]) -> str:
    """BLAKE2b of the files' bytes in order.

    Why full bytes: it is exact (any change in voxels, header or label redoes the case) and cheap next
    to what it guards, about 1 s per GB against seconds of decoding and resampling per CT. Later runs
    compare (size, mtime) first and hash only files whose stat changed, so checking an unchanged source
    of a thousand volumes costs milliseconds; a file touched but not changed is recognised by its hash.
    """
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        with open(path, "rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def source_stat(files: list[Path]) -> list[list]:
    """``[path, size, mtime_ns]`` per file: the cheap first check of a rerun."""
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def process_case(case: Case, preset: PresetConfig, out: Path, previous: dict | None) -> tuple[str, object]:
    """Preprocess one case and write its arrays; ``("written" | "unchanged", record)`` or
    ``("failed", (path, problem))``. Runs in pool workers, so it only raises the ``OSError`` of a cache
    that cannot be written (full, read-only), which ends the run."""
    try:
        stat = source_stat(source_files(case, watched=True))
        digest = source_hash(source_files(case))
        if previous is not None and previous.get("source_hash") == digest and _arrays_exist(previous, out):
            return "unchanged", {**previous, **_source_fields(case), "source_stat": stat}
        loaded = load_case(case, preset)
        return "written", _write_case(case, preset, out, loaded, digest, stat)
    except DataError as error:
        return "failed", (error.path, error.problem)
    except OSError as error:
        if _cache_unwritable(error, out):
            raise  # the cache's disk, not this case: every later case would fail the same way
        return "failed", (str(case.image), f"{type(error).__name__}: {' '.join(str(error).split())}")
    except Exception as error:  # a bug must not end a run hours in
        return "failed", (str(case.image), f"{type(error).__name__}: {' '.join(str(error).split())}")


def _cache_unwritable(error: OSError, out: Path) -> bool:
    """A full or read-only disk, or no permission inside the cache: no later case could be written either."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    return error.errno in (errno.EACCES, errno.EPERM) and error.filename is not None and Path(error.filename).is_relative_to(out)


def _write_case(case: Case, preset: PresetConfig, out: Path, loaded: dict, digest: str, stat: list) -> dict:
    stem = f"{case.case_id}.{digest[:FILE_HASH_CHARS]}.npy"
    image, label = loaded["image"], loaded["label"]
    files = {"image_file": f"{IMAGES}/{stem}", "label_file": f"{LABELS}/{stem}" if label is not None else None, "foreground_file": f"{FOREGROUND}/{stem}"}
    write_array(out / files["image_file"], image)
    if label is not None:
        write_array(out / files["label_file"], label)
    write_array(out / files["foreground_file"], foreground_points(image, label, seed=int(digest[:8], 16)))
    return {
        "case_id": case.case_id,
        **_source_fields(case),
        "source_hash": digest,
        "source_stat": stat,
        **files,
        "channels": int(image.shape[0]),
        "shape": loaded["shape"],
        "spacing": loaded["spacing"],
        "affine": loaded["affine"],
        "original_shape": loaded["original_shape"],
        "original_spacing": loaded["original_spacing"],
        "original_affine": loaded["original_affine"],
        "pad_value": float(image.min()) if image.shape[0] == 1 else [float(v) for v in image.min(axis=(1, 2, 3))],
        "preset": preset.model_dump(mode="json"),
    }


def _source_fields(case: Case) -> dict:
    """What a record takes from the source listing (may change without the bytes changing); the files of
    channels 1, 2... as ``channel_sources`` when each channel is its own file."""
    fields = {"image_source": str(case.image), "label_source": str(case.label) if case.label is not None else None, "extra": case.extra}
    if case.other_channels:
        fields["channel_sources"] = [str(f) for f in case.other_channels]
    return fields


def foreground_points(image: np.ndarray, label: np.ndarray | None, seed: int) -> np.ndarray:
    """Up to ``FOREGROUND_POINTS`` voxel coordinates (N, 3) int32 inside the foreground: label > 0 when a
    label exists, else the first channel above its mean (body, not air or background)."""
    mask = label[0] > 0 if label is not None else image[0] > image[0].mean()
    rng = np.random.default_rng(seed)
    probes = rng.integers(0, mask.size, size=min(FOREGROUND_PROBES, mask.size))
    hits = probes[mask.reshape(-1)[probes]]
    if len(hits) < FOREGROUND_POINTS:  # small foreground: scan everything
        hits = np.flatnonzero(mask)
    if len(hits) > FOREGROUND_POINTS:
        hits = rng.choice(hits, size=FOREGROUND_POINTS, replace=False)
    return np.stack(np.unravel_index(np.sort(hits), mask.shape), axis=1).astype(np.int32)


def _run(todo: list[Case], preset: PresetConfig, out: Path, records: dict, workers: int, report: PrepareReport) -> Iterator[tuple[Case, tuple]]:
    """Yield ``(case, outcome)`` as cases finish; stops submitting once ``report.stopped`` is set."""
    if workers == 1 or len(todo) <= 1:
        for case in todo:
            if report.stopped:
                return
            yield case, process_case(case, preset, out, records.get(case.case_id))
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context, initializer=_init_worker) as pool:
        pending = iter(todo)
        running: dict[Future, Case] = {}

        def submit() -> None:
            case = next(pending, None)
            if case is not None:
                running[pool.submit(process_case, case, preset, out, records.get(case.case_id))] = case

        for _ in range(workers * 2):  # a short queue keeps `stop` prompt and memory flat
            submit()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                yield running.pop(future), future.result()
                if not report.stopped:
                    submit()


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; intra-op threads would oversubscribe


def _existing_records(out: Path, preset: PresetConfig) -> dict[str, dict]:
    document = read_index(out)
    if document is None:
        return {}
    cached = PresetConfig(**document["preset"])
    if cached != preset and document["cases"]:
        changed = {k: (v, getattr(preset, k)) for k, v in cached.model_dump().items() if getattr(preset, k) != v}
        raise DataError(out, f"cache was prepared with another preset ({', '.join(f'{k}: {a} → {b}' for k, (a, b) in changed.items())}); use a new --out")
    return {r["case_id"]: r for r in document["cases"]}


def _is_current(record: dict, case: Case, out: Path) -> bool:
    """Same source paths with the same size and mtime, and the arrays still there: skip without hashing."""
    if record.get("image_source") != str(case.image) or record.get("label_source") != (str(case.label) if case.label else None):
        return False
    try:
        stat = source_stat(source_files(case, watched=True))
    except (DataError, OSError):
        return False
    return stat == record.get("source_stat") and record.get("extra") == case.extra and _arrays_exist(record, out)


def _is_other_source(record: dict, case: Case) -> bool:
    """The id is taken by a different volume that still exists (two sources, one cache): never overwrite it."""
    return record.get("image_source") != str(case.image) and Path(record["image_source"]).exists()


def _arrays_exist(record: dict, out: Path) -> bool:
    return all((out / record[k]).is_file() for k in ("image_file", "label_file", "foreground_file") if record.get(k))


def _replaced_files(old: dict | None, new: dict) -> list[str]:
    if old is None:
        return []
    keys = ("image_file", "label_file", "foreground_file")
    return [old[k] for k in keys if old.get(k) and old[k] not in {new.get(n) for n in keys}]


def _mhd_data_files(path: Path) -> list[Path]:
    """The raw data file a MetaImage header names (``ElementDataFile``), when it is a separate file."""
    if path.suffix.lower() != ".mhd":
        return []
    match = _MHD_DATA_FILE.search(path.read_bytes()[:HASH_CHUNK])
    name = match.group(1).decode(errors="replace") if match else "LOCAL"
    data = path.parent / name
    return [data] if name not in ("LOCAL", "LIST") and data.is_file() else []


class _Display:
    """Rich progress bar plus one stderr line per bad file; silent when disabled."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled, self.total, self.done = enabled, total, done

    def __enter__(self) -> "_Display":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("prepare"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False
            )
            self.progress.start()
            self.task = self.progress.add_task("prepare", total=self.total, completed=self.done)
        return self

    def advance(self) -> None:
        if self.enabled:
            self.progress.advance(self.task)

    def error(self, path: str, problem: str) -> None:
        if self.enabled:
            self.progress.console.print(f"error: {path}: {problem}", markup=False, highlight=False, soft_wrap=True)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.stop()
