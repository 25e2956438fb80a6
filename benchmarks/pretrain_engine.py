"""What the training engine adds to a pre-training step: Lightning loop, DataLoader + cache reads, logging, checkpoints.

For each method, on real OpenKBP crops from a temporary cache, it times
  - bare: the method's step alone (forward, backward, AdamW/Adam step) on batches already in memory;
  - engine: ``mssl.pretrain`` with the same config (1 DataLoader worker, scalars logged every step,
    one checkpoint at the end), per step from the logged ``train/crops_per_s``;
and reports the fastest and median seconds per step and the overhead, plus the run's start-up time (wall time
minus the steps). Test-sized models (DESIGN §10) so it finishes in minutes on 2 CPU cores.

    env MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 OMP_WAIT_POLICY=PASSIVE \\
        python benchmarks/pretrain_engine.py [--steps 8]
Writes benchmarks/results/pretrain_engine.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import mssl
from mssl.data.cache import CropDataset
from mssl.data.prepare import prepare
from mssl.data.preprocess import PresetConfig
from mssl.methods import build_method
from mssl.train.datamodule import open_cache
from mssl.train.optimizer import build_optimizer
from mssl.train.pretrain import resolve_config
from mssl.train.seeding import seed_init, seed_step

SHARED_DATA = Path(os.environ.get("MSSL_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
RESULTS = Path(__file__).resolve().parent / "results" / "pretrain_engine.md"
WARMUP_STEPS = 2
CASES = "pt_1[0-5].nii.gz"
SPACING = (3.0, 3.0, 3.0)
RUNS: dict[str, dict[str, Any]] = {
    "gvsl · U-Net (8,16,32,64) · 64³ pairs": {
        "method": "gvsl", "backbone": {"name": "unet", "unet_channels": [8, 16, 32, 64]}, "roi": 64,
    },
    "s2dc · Swin fs12 w4 · field 128×64×64, roi 64": {
        "method": "s2dc", "backbone": {"name": "swin", "feature_size": 12, "window_size": 4}, "roi": 64,
        "s2dc": {"field_size": [128, 64, 64], "head_hidden": 256, "head_out": 64, "queue_size": 16},
    },
}


def bare_step_times(options: dict[str, Any], cache: Path, steps: int) -> tuple[list[float], int]:
    """Timed step durations of the method alone (batches prepared beforehand) and the crops per step."""
    config = resolve_config(data=cache, out="unused", steps=steps, **options)
    seed_init(config.seed)
    method = build_method(config)
    optimizer = build_optimizer(method, config.optim)
    dataset = CropDataset(open_cache(config.data), method.crop_requests(), length=steps, seed=config.seed)
    batches = [{k: v[None] for k, v in dataset[i].items()} for i in range(steps)]  # batch size 1
    times = []
    for step, batch in enumerate(batches):
        seed_step(config.seed, step, 0, 0)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        method(batch).loss.backward()
        optimizer.step()
        method.after_optimizer_step(step + 1, steps)
        times.append(time.perf_counter() - start)
    crops_per_step = sum(request.volumes for request in method.crop_requests().values())
    return times[WARMUP_STEPS:], crops_per_step


def engine_step_times(options: dict[str, Any], cache: Path, steps: int, crops_per_step: int, out: Path) -> tuple[list[float], float]:
    """Timed step durations inside ``mssl.pretrain`` and the run's start-up + teardown time."""
    start = time.perf_counter()
    run = mssl.pretrain(data=cache, out=out, steps=steps, workers=1, log_every=1, checkpoint_every=steps,
                        progress_bar=False, **options)
    wall = time.perf_counter() - start
    with (run / "logs" / "metrics.csv").open(newline="") as file:
        rates = {int(r["step"]): float(r["train/crops_per_s"]) for r in csv.DictReader(file) if r.get("train/crops_per_s")}
    per_step = [crops_per_step / rates[s] for s in sorted(rates) if s >= WARMUP_STEPS]
    return per_step, wall - sum(per_step) - statistics.median(per_step) * WARMUP_STEPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="steps per measurement (the first 2 are not timed)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "cache"
        prepare(str(SHARED_DATA / "openkbp" / "imagesTr" / CASES), cache, PresetConfig(name="ct", spacing=SPACING))
        for name, options in RUNS.items():
            bare, crops_per_step = bare_step_times(options, cache, args.steps)
            engine, startup = engine_step_times(options, cache, args.steps, crops_per_step, Path(folder) / name.split()[0])
            rows.append((name, bare, engine, startup))
            print(f"{name}: bare {min(bare):.3f}/{statistics.median(bare):.3f} s/step (min/median), "
                  f"engine {min(engine):.3f}/{statistics.median(engine):.3f}, start-up {startup:.1f} s", flush=True)
    write_results(rows, args.steps)


def write_results(rows: list[tuple[str, list[float], list[float], float]], steps: int) -> None:
    lines = [
        "# Training engine overhead per step",
        "",
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} CPU cores, CPU only, torch {torch.__version__}, {torch.get_num_threads()} intra-op threads).",
        f"Other engineers' jobs were running on the same 2 cores (load average {os.getloadavg()[0]:.1f} when it finished):",
        "medians are noisy; the fastest step of each kind (min) is the better estimate of the uncontended cost.",
        "Both kinds were measured back to back in one process; a negative overhead is noise, not a speed-up.",
        "",
        f"Command: `env MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 OMP_WAIT_POLICY=PASSIVE python benchmarks/pretrain_engine.py --steps {steps}`",
        f"(steps {WARMUP_STEPS}..{steps - 1} timed; OpenKBP {CASES} prepared at {SPACING} mm; batch 1; fp32).",
        "",
        "| run | bare step min / median (s) | `mssl.pretrain` step min / median (s) | overhead (min) | start-up + teardown (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, bare, engine, startup in rows:
        lines.append(
            f"| {name} | {min(bare):.3f} / {statistics.median(bare):.3f} | {min(engine):.3f} / {statistics.median(engine):.3f} "
            f"| {100 * (min(engine) / min(bare) - 1):+.1f} % | {startup:.1f} |"
        )
    lines += [
        "",
        "bare = the method's forward + backward + optimiser step on batches already in memory;",
        "engine = the same step inside Lightning with the DataLoader reading the memory-mapped cache (1 worker),",
        "per-step seeding, the finite-loss vote, scalar logging every step (TensorBoard + CSV), from `train/crops_per_s`.",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
