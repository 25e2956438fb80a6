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
import sys
from pathlib import Path

from _measure import ALLOCATOR_ENV, peak_rss_gb, run_worker, timed_steps

RESULTS = Path(__file__).resolve().parent / "results" / "s2dc_step.md"
TARGET_RATIO = 1.3
# name -> (field, roi, feature size, window size); heads and losses keep the S2DCConfig defaults
CONFIGS = {
    "cpu-fs12": ((128, 128, 64), 64, 12, 4),
    "cpu-fs24": ((128, 128, 64), 64, 24, 4),
    # default width and window; 192×96×96 with roi 96 was OOM-killed, 128×128×64 peaked at 15.9 GB (shared machine)
    "default-like": ((128, 64, 64), 64, 48, 7),
}


def _worker(mode: str, name: str, steps: int) -> dict:
    """Run one configuration in this process and return its figures."""
    step = S2DCStep(mode, *CONFIGS[name])
    return {
        **timed_steps({mode: step}, steps)[mode],
        "peak_rss_gb": peak_rss_gb(),
        "trainable_parameters": sum(p.numel() for p in step.model.parameters() if p.requires_grad),
    }


class S2DCStep:
    """One optimiser step, one field per step, of either the necessary backbone passes or the full S2DC method
    (`checkpoint_activations`: as `mssl pretrain --checkpoint-activations`; `autocast_bf16`: the forward passes under
    bfloat16 autocast on the CPU, backward, optimiser step and EMA update outside it, as `--precision bf16-mixed`
    (Lightning's mixed-precision plugin) runs it)."""

    def __init__(
        self,
        mode: str,
        field_size: tuple[int, int, int],
        roi: int,
        feature_size: int,
        window: int,
        checkpoint_activations: bool = False,
        autocast_bf16: bool = False,
    ) -> None:
        import torch

        from mssl.config import BackboneConfig, S2DCConfig
        from mssl.methods.s2dc import S2DCMethod
        from mssl.models.backbones import build_backbone
        from mssl.views.s2dc_views import grid_crops

        torch.manual_seed(0)
        backbone = build_backbone(
            BackboneConfig(name="swin", feature_size=feature_size, window_size=window, gradient_checkpointing=checkpoint_activations)
        )
        self.mode, self.steps_done, self.autocast_bf16 = mode, 0, autocast_bf16
        self.field = torch.rand(1, 1, 1, *field_size)
        if mode == "s2dc":
            self.model = S2DCMethod(backbone, S2DCConfig(field_size=field_size, roi=roi))
        else:
            self.model = backbone
            self.teacher = copy.deepcopy(backbone).requires_grad_(False)
            self.crops = grid_crops(self.field[:, 0], roi)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=3e-4, weight_decay=0.1)

    def _loss(self):
        import torch

        if self.mode == "s2dc":
            return self.model({"field": self.field}).loss
        features = self.model(self.crops, decode=False)
        with torch.no_grad():  # the token view and the global view
            self.teacher(self.crops, decode=False)
            self.teacher(self.crops, decode=False)
        return features.bottleneck.mean()

    def __call__(self) -> None:
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast_bf16):
            loss = self._loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps_done += 1
        if self.mode == "s2dc":
            self.model.after_optimizer_step(self.steps_done, 1000)


def _run(mode: str, name: str, steps: int) -> dict:
    result = run_worker(__file__, ["--worker", mode, "--configs", name, "--steps", str(steps)])
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
