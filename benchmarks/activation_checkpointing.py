"""Activation checkpointing: peak RSS and CPU time of a GVSL step with and without it, full-width U-Net, batch 1.

Each (crop size, checkpointing on/off) runs in a fresh single-threaded subprocess (honest peak RSS, less
contention on the shared cores) started with the glibc allocator settings of DESIGN §10. A step is the
full GVSLMethod step (damage, augmentation, one U-Net pass on [damaged A; B], Z-matching, warp, losses,
backward, Adam step) on one pair; one warm-up step, then the median of the measured steps.
Results go to benchmarks/results/activation_checkpointing.md.

    python benchmarks/activation_checkpointing.py [--sizes 64 96] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gvsl_step import ALLOCATOR_ENV, _peak_rss_gb  # sibling script: same allocator settings, same RSS reading

RESULTS = Path(__file__).resolve().parent / "results" / "activation_checkpointing.md"
MODES = {"off": False, "on": True}


def _worker(size: int, checkpointing: bool, steps: int) -> dict:
    """Time ``steps`` GVSL steps (after one warm-up) in this process; return medians and peak RSS."""
    import torch

    from mssl.config import BackboneConfig, GVSLConfig
    from mssl.methods.gvsl import GVSLMethod
    from mssl.models.backbones import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="unet", gradient_checkpointing=checkpointing))
    method = GVSLMethod(backbone, GVSLConfig(roi=(size,) * 3))
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-4)
    pair = torch.rand(1, 2, 1, size, size, size)
    rss_before = _peak_rss_gb()
    wall, cpu = [], []
    for step in range(steps + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = method({"pair": pair}).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step:
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - cpu_start)
    return {
        "median_cpu_s": statistics.median(cpu),
        "median_wall_s": statistics.median(wall),
        "cpu_s": cpu,
        "peak_rss_gb": _peak_rss_gb(),
        "rss_before_steps_gb": rss_before,
    }


def _run(size: int, mode: str, steps: int) -> dict:
    env = {**os.environ, **ALLOCATOR_ENV, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--worker", mode, "--sizes", str(size), "--steps", str(steps)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, encoding="utf-8", check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{size}³ checkpointing {mode}: {result}", flush=True)
    return result


def _report(runs: dict[int, dict[str, dict]], steps: int, command: str, torch_version: str) -> str:
    lines = [
        "# Activation checkpointing (`--checkpoint-activations`), GVSL on the full-width U-Net, CPU",
        "",
        f"Command: `{command}` (each configuration in a fresh subprocess, OMP_NUM_THREADS=1, "
        + " ".join(f"{k}={v}" for k, v in ALLOCATOR_ENV.items())
        + ").",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores shared with other "
        f"engineers' jobs, torch {torch_version}, float32. U-Net 32-64-128-256-512, one pair per step (the U-Net "
        f"sees 2 volumes); median of {steps} measured steps after one warm-up; a step = forward + backward + Adam step.",
        "",
        "| crop | checkpointing | CPU s / step | wall s / step | peak RSS (GiB) | peak RSS − RSS before the steps (GiB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for size, by_mode in sorted(runs.items()):
        for mode, run in by_mode.items():
            lines.append(
                f"| {size}³ | {mode} | {run['median_cpu_s']:.1f} | {run['median_wall_s']:.1f} | "
                f"{run['peak_rss_gb']:.2f} | {run['peak_rss_gb'] - run['rss_before_steps_gb']:.2f} |"
            )
    lines += ["", "Checkpointing on against off:", ""]
    for size, by_mode in sorted(runs.items()):
        off, on = by_mode["off"], by_mode["on"]
        step_memory = [run["peak_rss_gb"] - run["rss_before_steps_gb"] for run in (off, on)]
        lines.append(
            f"- {size}³: CPU time × {on['median_cpu_s'] / off['median_cpu_s']:.2f}, peak RSS × "
            f"{on['peak_rss_gb'] / off['peak_rss_gb']:.2f} (memory the steps add × {step_memory[1] / step_memory[0]:.2f})"
        )
    lines += [
        "",
        "CPU seconds of every measured step: "
        + "; ".join(f"{size}³ {mode} {[round(t, 1) for t in run['cpu_s']]}" for size, by_mode in sorted(runs.items()) for mode, run in by_mode.items()),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96], help="cubic crop sides to measure")
    parser.add_argument("--steps", type=int, default=2, help="measured steps per configuration")
    parser.add_argument("--worker", choices=list(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.sizes[0], MODES[args.worker], args.steps)))
        return
    import torch

    runs = {size: {mode: _run(size, mode, args.steps) for mode in MODES} for size in sorted(args.sizes)}
    command = ("python benchmarks/activation_checkpointing.py " + " ".join(sys.argv[1:])).strip()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(_report(runs, args.steps, command, torch.__version__), encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
