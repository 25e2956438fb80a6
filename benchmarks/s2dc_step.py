"""S²DC step cost against the backbone passes it cannot avoid, CPU, one field per step.

For each configuration, each mode runs in a fresh subprocess (honest peak RSS) started with the
glibc allocator settings of DESIGN §10:
  - backbone: the necessary passes alone: student forward + backward on the grid crops, teacher
    forward (no grad) on each of the two teacher views, AdamW step on the backbone;
  - s2dc: the full S2DCMethod step (views + correspondences, student pass, two teacher passes, heads,
    Sinkhorn, three losses, backward, AdamW step, EMA update, queue).
Results go to benchmarks/results/s2dc_step.md.

    python benchmarks/s2dc_step.py [--configs cpu-fs12 cpu-fs24 default-like] [--steps 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "OMP_WAIT_POLICY": "PASSIVE"}
RESULTS = Path(__file__).resolve().parent / "results" / "s2dc_step.md"
TARGET_RATIO = 1.3
# name -> (field, roi, feature size, window size); heads and losses keep the S2DCConfig defaults
CONFIGS = {
    "cpu-fs12": ((128, 128, 64), 64, 12, 4),
    "cpu-fs24": ((128, 128, 64), 64, 24, 4),
    # default width and window; 192×96×96 with roi 96 was OOM-killed, 128×128×64 peaked at 15.9 GB (shared machine)
    "default-like": ((128, 64, 64), 64, 48, 7),
}


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def _worker(mode: str, name: str, steps: int) -> dict:
    """Run one configuration in this process and return its figures."""
    import torch

    from mssl.config import BackboneConfig, S2DCConfig
    from mssl.methods.s2dc import S2DCMethod
    from mssl.models.backbones import build_backbone
    from mssl.views.s2dc_views import grid_crops

    field_size, roi, feature_size, window = CONFIGS[name]
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="swin", feature_size=feature_size, window_size=window))
    config = S2DCConfig(field_size=field_size, roi=roi)
    field = torch.rand(1, 1, 1, *field_size)
    if mode == "s2dc":
        model = S2DCMethod(backbone, config)

        def step_fn() -> torch.Tensor:
            return model({"field": field}).loss

        def after(step: int) -> None:
            model.after_optimizer_step(step, 1000)
    else:
        model = backbone
        teacher = copy.deepcopy(backbone).requires_grad_(False)
        crops = grid_crops(field[:, 0], roi)

        def step_fn() -> torch.Tensor:
            features = model(crops, decode=False)
            with torch.no_grad():  # the token view and the global view
                teacher(crops, decode=False)
                teacher(crops, decode=False)
            return features.bottleneck.mean()

        def after(step: int) -> None:
            return None

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4, weight_decay=0.1)
    times, cpu_times = [], []
    for step in range(steps + 1):  # the first step warms up allocator and kernels
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = step_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        after(step + 1)
        if step:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    return {
        "median_s": statistics.median(times),
        "times_s": times,
        "median_cpu_s": statistics.median(cpu_times),
        "peak_rss_gb": _peak_rss_gb(),
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def _run(mode: str, name: str, steps: int) -> dict:
    env = {**os.environ, **ALLOCATOR_ENV}
    command = [sys.executable, __file__, "--worker", mode, "--configs", name, "--steps", str(steps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, encoding="utf-8", check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{mode:8s} {name}: {result}", flush=True)
    return result


def _describe(name: str) -> str:
    field_size, roi, feature_size, window = CONFIGS[name]
    crops = 1
    for side in field_size:
        crops *= side // roi
    return f"field {'×'.join(map(str, field_size))}, {crops} crops of {roi}³, fs {feature_size}, window {window}"


def _report(figures: dict, names: list[str], steps: int, command: str) -> str:
    lines = [
        "# S²DC step vs the necessary backbone passes (CPU)",
        "",
        f"Command: `{command}` (each configuration and mode in a fresh subprocess with "
        + " ".join(f"{k}={v}" for k, v in ALLOCATOR_ENV.items())
        + ").",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {figures['torch']}, "
        "float32. Other engineers' jobs shared the 2 cores (and memory) while this ran, so wall times are noisy; "
        "CPU time (process CPU seconds, all threads) is the steadier comparison.",
        "One field per step (batch 1, as the official recipe), MONAI SwinUNETR v2 encoder, S2DCConfig defaults for "
        "heads (2048 → 512), τ, 50 Sinkhorn iterations and bottleneck tokens. Backbone passes = student forward + "
        "backward on the grid crops + teacher forward on the token view and on the global view (2 passes) + AdamW step. "
        f"Median of {steps} steps after one warm-up step.",
        "",
        f"| configuration | backbone passes: wall / CPU (s) | S²DC step: wall / CPU (s) | ratio wall / CPU (target ≤ {TARGET_RATIO}) | "
        "backbone peak RSS (GB) | S²DC peak RSS (GB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        bb, s2 = figures[name]["backbone"], figures[name]["s2dc"]
        lines.append(
            f"| {name}: {_describe(name)} | {bb['median_s']:.2f} / {bb['median_cpu_s']:.2f} | "
            f"{s2['median_s']:.2f} / {s2['median_cpu_s']:.2f} | {s2['median_s'] / bb['median_s']:.2f} / "
            f"{s2['median_cpu_s'] / bb['median_cpu_s']:.2f} | {bb['peak_rss_gb']:.2f} | {s2['peak_rss_gb']:.2f} |"
        )
    lines += [
        "",
        "Individual step times (s): "
        + "; ".join(
            f"{name} backbone {[round(t, 2) for t in figures[name]['backbone']['times_s']]}, "
            f"S²DC {[round(t, 2) for t in figures[name]['s2dc']['times_s']]}"
            for name in names
        ),
        "Trainable parameters: "
        + "; ".join(
            f"{name} backbone {figures[name]['backbone']['trainable_parameters']:,}, "
            f"S²DC {figures[name]['s2dc']['trainable_parameters']:,}"
            for name in names
        ),
        "Wall-time ratios swing with the other jobs on the machine (see the individual step times); the CPU-time "
        "ratio is the figure to read. Larger default-like configurations did not fit beside the other jobs: field "
        "192×96×96 with roi 96 (2 crops of 96³, fs 48) was killed by the OOM killer during the backbone-only run, and "
        "field 128×128×64 (4 crops of 64³, fs 48) peaked at 15.9 GB (S²DC step, before the teacher was split into one "
        "pass per view).",
        "The backbone parameter counts include SwinUNETR's decoder, which S²DC does not use (decode=False).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS), help="configurations to measure")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per configuration")
    parser.add_argument("--worker", choices=["backbone", "s2dc"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.configs[0], args.steps)))
        return
    import torch

    figures: dict = {"torch": torch.__version__}
    for name in args.configs:
        figures[name] = {mode: _run(mode, name, args.steps) for mode in ("backbone", "s2dc")}
    command = "python benchmarks/s2dc_step.py " + " ".join(sys.argv[1:])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(_report(figures, args.configs, args.steps, command.strip()), encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
