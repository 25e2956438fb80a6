"""GVSL step cost against the bare backbone, full-width U-Net (32..512), batch of 2 pairs, CPU.

For each crop size it measures, each in a fresh subprocess (honest peak RSS) started with the glibc
allocator settings of DESIGN §10:
  - backbone: forward + backward + Adam step of the U-Net alone on the stacked batch [damaged A; B] (4 volumes);
  - gvsl: the full GVSLMethod step (damage, spatial augmentation, one backbone pass, Z-matching, warp,
    NCC + restoration + smoothness, backward, Adam step);
  - damage: appearance damage of A per sample (no gradient).
Results go to benchmarks/results/gvsl_step.md (raw figures in gvsl_step.json).

    python benchmarks/gvsl_step.py [--sizes 64 96] [--steps 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

from _measure import ALLOCATOR_ENV, available_gb, peak_rss_gb, run_worker, timed_steps, write_results

PAIRS = 2
RESULTS = Path(__file__).resolve().parent / "results" / "gvsl_step.md"
FIGURES = RESULTS.with_suffix(".json")  # raw measurements, so a later run can add sizes (--keep)
DAMAGE_REPEATS = 10
MODES = ("backbone", "gvsl", "damage")
MEMORY_SHARE = 0.8  # run a size only if its estimated peak RSS fits in this share of the available memory


def _worker(mode: str, size: int, steps: int) -> dict:
    """Run one configuration in this process and return its figures."""
    import torch

    from mssl.config import GVSLConfig
    from mssl.views.appearance import damage_appearance

    config = GVSLConfig()
    probs = config.shuffle_prob, config.bezier_prob, config.inpaint_prob
    torch.manual_seed(0)
    pair = torch.rand(PAIRS, 2, 1, size, size, size)
    if mode == "damage":
        fixed = pair[:, 0]
        damage = timed_steps({mode: lambda: damage_appearance(fixed, *probs)}, DAMAGE_REPEATS)[mode]
        return {"median_s": damage["median_s"] / PAIRS, "median_cpu_s": damage["median_cpu_s"] / PAIRS, "peak_rss_gb": peak_rss_gb()}

    steppers = {name: GVSLStep(name, pair) for name in (("backbone", "gvsl") if mode == "interleaved" else (mode,))}
    baseline = peak_rss_gb()
    result = timed_steps(steppers, steps)
    if mode == "interleaved":
        return result
    return {
        **result[mode],
        "peak_rss_gb": peak_rss_gb(),
        "rss_before_steps_gb": baseline,
        "parameters": sum(p.numel() for p in steppers[mode].model.parameters()),
    }


class GVSLStep:
    """One optimiser step of either the bare U-Net on the stacked batch or the full GVSL method.

    `pair` is (pairs, 2, 1, D, H, W): the backbone-only step sees the 2 × pairs volumes [A...; B...].
    `channels`: the U-Net's widths (default: BackboneConfig's, the paper's 32-512). `checkpoint_activations`: as
    `mssl pretrain --checkpoint-activations`; `autocast_bf16`: the forward pass under bfloat16 autocast on the CPU,
    backward and optimiser step outside it, as `--precision bf16-mixed` (Lightning's mixed-precision plugin) runs it.
    """

    def __init__(
        self, mode: str, pair, channels: tuple[int, ...] | None = None, checkpoint_activations: bool = False, autocast_bf16: bool = False
    ) -> None:
        import torch

        from mssl.config import BackboneConfig, GVSLConfig
        from mssl.methods.gvsl import GVSLMethod
        from mssl.models.backbones import build_backbone

        widths = {} if channels is None else {"unet_channels": channels}
        backbone = build_backbone(BackboneConfig(name="unet", gradient_checkpointing=checkpoint_activations, **widths))
        self.mode, self.pair, self.autocast_bf16 = mode, pair, autocast_bf16
        self.model = GVSLMethod(backbone, GVSLConfig(roi=tuple(pair.shape[-3:]))) if mode == "gvsl" else backbone
        self.stacked = pair.transpose(0, 1).reshape(-1, *pair.shape[2:])  # [A...; B...]
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)

    def __call__(self) -> None:
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast_bf16):
            if self.mode == "gvsl":
                loss = self.model({"pair": self.pair}).loss
            else:
                features = self.model(self.stacked)
                loss = features.local.mean() + features.bottleneck.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def _run(mode: str, size: int, steps: int) -> dict:
    result = run_worker(__file__, ["--worker", mode, "--sizes", str(size), "--steps", str(steps)])
    print(f"{mode:8s} {size}³: {result}", flush=True)
    return result


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 2) for v in values]


def _report(figures: dict) -> str:
    runs = {int(size): run for size, run in figures["runs"].items()}
    sizes = sorted(runs)
    commands = sorted({run["command"] for run in runs.values()})
    lines = [
        "# GVSL step vs backbone-only step (CPU)",
        "",
        "Command: " + "; ".join(f"`{c}`" for c in commands) + " (each configuration in a fresh subprocess with "
        + " ".join(f"{k}={v}" for k, v in ALLOCATOR_ENV.items())
        + ").",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
        f"{figures['torch']}, float32. Other engineers' jobs shared the 2 cores (and memory) while this ran, "
        "so absolute times are noisy.",
        f"Full-width U-Net (32-64-128-256-512), batch of {PAIRS} pairs: the backbone sees {2 * PAIRS} volumes per "
        "step. Median of the measured steps (count in the first column) after one warm-up step; a step = forward "
        "+ backward + Adam step.",
        "",
        "| crop (steps) | backbone-only step (s) | GVSL step (s) | GVSL / backbone (target ≤ 1.25) | backbone peak RSS (GB) | "
        "GVSL peak RSS (GB) | appearance damage per sample (s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for size in sizes:
        run = runs[size]
        bb, gv, dm, mixed = (run[k] for k in ("backbone", "gvsl", "damage", "interleaved"))
        for label, b, g, key in (
            ("CPU time, separate processes", bb, gv, "median_cpu_s"),
            ("CPU time, interleaved in one process", mixed["backbone"], mixed["gvsl"], "median_cpu_s"),
            ("wall time, interleaved in one process", mixed["backbone"], mixed["gvsl"], "median_s"),
        ):
            lines.append(
                f"| {size}³ ({run['steps']}), {label} | {b[key]:.2f} | {g[key]:.2f} | **{g[key] / b[key]:.2f}** | "
                f"{bb['peak_rss_gb']:.2f} | {gv['peak_rss_gb']:.2f} | {dm[key]:.3f} |"
            )
    lines += [
        "",
        "How to read it: *CPU time* is the process's CPU seconds (both threads) per step; it depends less than wall "
        "time on other jobs but still moves with them (shared caches and cores), so the two CPU rows of a size "
        "differ. *Interleaved* runs backbone-only and GVSL steps alternately in one process, so both see the same "
        "competing load; the wall times of the separate processes are not comparable on a shared machine (they "
        "are listed below).",
        "",
        "Wall times of every measured step (s): "
        + "; ".join(
            f"{size}³ separate backbone {_rounded(runs[size]['backbone']['times_s'])}, "
            f"separate GVSL {_rounded(runs[size]['gvsl']['times_s'])}, "
            f"interleaved backbone {_rounded(runs[size]['interleaved']['backbone']['times_s'])}, "
            f"interleaved GVSL {_rounded(runs[size]['interleaved']['gvsl']['times_s'])}"
            for size in sizes
        ),
        "",
        f"Parameters: backbone {runs[sizes[0]]['backbone']['parameters']:,}, "
        f"GVSL method {runs[sizes[0]]['gvsl']['parameters']:,}. Appearance damage (no gradient) is part of the "
        "GVSL step; its column is the cost per sample on its own.",
    ]
    skipped = {int(k): v for k, v in figures["skipped"].items() if int(k) not in runs}
    if skipped:
        lines.append("Not measured, to keep the shared machine out of swap: " + "; ".join(skipped[k] for k in sorted(skipped)) + ".")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96], help="cubic crop sides to measure")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per configuration")
    parser.add_argument("--keep", action="store_true", help=f"keep the other sizes already in {FIGURES.name}")
    parser.add_argument("--worker", choices=[*MODES, "interleaved"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(args.worker, args.sizes[0], args.steps)))
        return
    import torch

    figures: dict = {"torch": torch.__version__, "runs": {}, "skipped": {}}
    if args.keep and FIGURES.is_file():
        figures = json.loads(FIGURES.read_text(encoding="utf-8"))
    command = ("python benchmarks/gvsl_step.py " + " ".join(sys.argv[1:])).strip()
    for size in sorted(args.sizes):
        known = sorted(int(k) for k in figures["runs"] if int(k) < size)
        if known:  # activations scale with the voxel count: do not push a shared machine into swap/OOM
            smaller = known[-1]
            estimate = figures["runs"][str(smaller)]["gvsl"]["peak_rss_gb"] * (size / smaller) ** 3
            available = available_gb()
            if estimate > MEMORY_SHARE * available:
                figures["skipped"][str(size)] = f"{size}³ (estimated peak {estimate:.1f} GB, {available:.1f} GB available)"
                print(f"skip {figures['skipped'][str(size)]}", flush=True)
                continue
        run = {mode: _run(mode, size, args.steps) for mode in (*MODES, "interleaved")}
        figures["runs"][str(size)] = {**run, "steps": args.steps, "command": command}
        figures["skipped"].pop(str(size), None)
    write_results(RESULTS, _report(figures), figures)


if __name__ == "__main__":
    main()
