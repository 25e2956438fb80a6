"""Random 96³ crops per second per core: memory-mapped cache vs decoding + resampling the NIfTI each time.

Prepares a few shared OpenKBP (CT) and IXI (MRI) cases into a temporary cache at 1.5 mm, then times,
on one thread in one process (= one core):

- cache: ``CropDataset`` items (one 96³ crop each) read from the memory-mapped ``.npy`` files;
- decode: ``build_transforms`` (load NIfTI, RAS, foreground crop, resample, intensity) + one random 96³
  crop, per crop, i.e. what a pipeline without a cache pays.

Run (the allocator settings must be set before Python starts, DESIGN §10):
    env MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 OMP_WAIT_POLICY=PASSIVE \\
        python benchmarks/data_throughput.py
Writes benchmarks/results/data_throughput.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from mssl.data.cache import CacheIndex, CropDataset
from mssl.data.prepare import prepare
from mssl.data.preprocess import PresetConfig, build_transforms
from mssl.data.crops import CropRequest

SHARED_DATA = Path(os.environ.get("MSSL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RESULTS = Path(__file__).resolve().parent / "results" / "data_throughput.md"
CROP = (96, 96, 96)
SPACING = (1.5, 1.5, 1.5)
TARGET_CROPS_PER_S, TARGET_SPEEDUP = 200.0, 20.0
DATASETS = {"openkbp": "ct", "ixi": "mri"}


def subset(dataset: str, cases: int, folder: Path) -> Path:
    """A datalist of the first ``cases`` training entries of a shared dataset."""
    document = json.loads((SHARED_DATA / dataset / "dataset.json").read_text(encoding="utf-8"))
    document["training"] = document["training"][:cases]
    path = folder / f"{dataset}.json"
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def cache_rate(index: CacheIndex, crops: int, seed: int) -> float:
    """Crops per second from the memory-mapped cache (after a short warm-up that opens the maps)."""
    dataset = CropDataset(index, {"x": CropRequest(CROP)}, length=crops + 10, seed=seed)
    for item in range(10):
        dataset[item]
    start = time.perf_counter()
    for item in range(10, crops + 10):
        dataset[item]["x"]
    return crops / (time.perf_counter() - start)


def decode_rate(index: CacheIndex, crops: int, seed: int) -> float:
    """Crops per second when every crop decodes and resamples its source volume first."""
    from monai.transforms import RandSpatialCrop, SpatialPad

    transforms = build_transforms(index.preset, with_label=False)
    pad, crop = SpatialPad(CROP), RandSpatialCrop(CROP, random_size=False)
    crop.set_random_state(seed)
    sources = [c.record["image_source"] for c in index.cases]
    start = time.perf_counter()
    for item in range(crops):
        image = transforms({"image": sources[item % len(sources)]})["image"]
        crop(pad(image))
    return crops / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3, help="cases per dataset")
    parser.add_argument("--crops", type=int, default=300, help="cache crops timed per dataset")
    parser.add_argument("--decode-crops", type=int, default=6, help="decode+resample crops timed per dataset")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)  # per-core figures
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        for dataset, preset in DATASETS.items():
            if not (SHARED_DATA / dataset / "dataset.json").is_file():
                print(f"skipping {dataset}: {SHARED_DATA / dataset} not found", file=sys.stderr)
                continue
            config = PresetConfig(name=preset, spacing=SPACING)
            prepare(subset(dataset, args.cases, scratch), scratch / dataset, config, base_dir=SHARED_DATA / dataset)
            index = CacheIndex.open(scratch / dataset)
            shapes = [c.shape for c in index.cases]
            cached = cache_rate(index, args.crops, seed=0)
            decoded = decode_rate(index, args.decode_crops, seed=0)
            rows.append((dataset, preset, len(index), shapes, cached, decoded))
            print(f"{dataset}: cache {cached:.1f} crops/s, decode+resample {decoded:.2f} crops/s, ×{cached / decoded:.0f}")
    load_after = os.getloadavg()
    write_report(args, rows, load_before, load_after)


def write_report(args: argparse.Namespace, rows: list, load_before: tuple, load_after: tuple) -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines() if line.startswith("model name")), platform.processor())
    allocator = {k: os.environ.get(k, "unset") for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "OMP_WAIT_POLICY")}
    lines = [
        "# Data throughput: random 96³ crops per second per core",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores ({cpu}), CPU only, one process with "
        f"one torch thread (= one core). Other engineers' jobs may have been running on the same machine "
        f"(load average {load_before[0]:.2f} before, {load_after[0]:.2f} after).",
        "",
        "Command:",
        "```",
        "env MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 OMP_WAIT_POLICY=PASSIVE \\",
        f"    python benchmarks/data_throughput.py --cases {args.cases} --crops {args.crops} --decode-crops {args.decode_crops}",
        "```",
        f"Allocator environment: {', '.join(f'{k}={v}' for k, v in allocator.items())}.",
        "",
        f"Cases are the first {args.cases} of each shared dataset, prepared at {SPACING[0]} mm isotropic "
        "(`mssl prepare --preset ct|mri --spacing 1.5 1.5 1.5`). *cache*: `CropDataset` items read from the "
        "memory-mapped `.npy` (page cache warm). *decode + resample*: `build_transforms` (NIfTI load, RAS, foreground crop, "
        "resample, intensity) then one random 96³ crop, per crop.",
        "",
        "| dataset | preset | cases | cached shape range (voxels) | cache crops/s/core | decode + resample crops/s/core | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset, preset, count, shapes, cached, decoded in rows:
        low, high = np.min(shapes, axis=0), np.max(shapes, axis=0)
        shape_text = "×".join(f"{a}–{b}" for a, b in zip(low, high))
        lines.append(f"| {dataset} | {preset} | {count} | {shape_text} | {cached:.0f} | {decoded:.2f} | ×{cached / decoded:.0f} |")
    lines += ["", f"Targets: ≥ {TARGET_CROPS_PER_S:.0f} crops/s per core from the cache and ≥ {TARGET_SPEEDUP:.0f}× faster than decode + resample."]
    for dataset, _, _, _, cached, decoded in rows:
        met = cached >= TARGET_CROPS_PER_S and cached / decoded >= TARGET_SPEEDUP
        lines.append(f"- {dataset}: {'met' if met else 'NOT met'} ({cached:.0f} crops/s, ×{cached / decoded:.0f}).")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
