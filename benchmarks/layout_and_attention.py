"""Channels-last-3d convolutions and scaled-dot-product attention: do they make our backbone passes cheaper?

Two questions of issue 17 item 2, each answered by variants run interleaved in one process (same
load from other jobs, same allocator settings of DESIGN §10, 2 threads), medians of CPU seconds:
  - unet: a U-Net forward + backward + Adam step on 2 volumes of size³ (GVSL's [damaged A; B] on the
    32-512 U-Net; the fine-tuning benchmark's 8-64 U-Net), with weights and input in torch's default
    layout vs ``channels_last_3d``;
  - gvsl: the whole GVSL step, mssl's channels-last U-Net vs the method converted to the default layout;
  - segmenter: the fine-tuning benchmark's whole training step (network with deep-supervision heads);
  - swin: S²DC's EMA-teacher pass, a no-grad encoder-only SwinUNETR v2 forward on roi³ crops, with
    MONAI's explicit window attention vs ``torch.nn.functional.scaled_dot_product_attention``
    (``use_flash_attention``, which MONAI applies only when gradients are off); the largest
    difference of the bottleneck between the two is reported, so a speed-up is never bought with a
    different teacher;
  - s2dc: the whole S²DC step, its teacher on either attention (the student's passes need gradients,
    so MONAI keeps them on the explicit attention).
Results go to benchmarks/results/layout_and_attention.md.

    python benchmarks/layout_and_attention.py [--steps 5] [--unet 32-64-128-256-512:64 ...] [--gvsl 8-16-32-64:64 ...] [--swin 12:64 ...] [--s2dc 12:64]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from _measure import run_worker, timed_steps

if TYPE_CHECKING:
    from torch import nn

THREADS = {"OMP_NUM_THREADS": "2"}
RESULTS = Path(__file__).resolve().parent / "results" / "layout_and_attention.md"
SWIN_CROPS = 4  # teacher crops per pass: the S²DC default grid of a 2·roi × roi × roi field has 2, cpu configs 4


def _interleaved(variants: dict[str, Callable[[], None]], steps: int) -> dict[str, list[float]]:
    """CPU seconds of each variant's measured steps, the variants alternating (after one warm-up round)."""
    return {name: figures["cpu_times_s"] for name, figures in timed_steps(variants, steps).items()}


def _layouts(step: type, *args: object) -> dict[str, Callable[[], None]]:
    """Two steps of `step(*args)`: one with its model converted to the default layout, one as mssl builds it
    (channels-last). The conversion is in place, so each optimiser keeps its parameters."""
    import torch

    contiguous = step(*args)
    contiguous.model.to(memory_format=torch.contiguous_format)
    return {"contiguous": contiguous, "channels_last_3d": step(*args)}


def measure_unet(channels: tuple[int, ...], size: int, steps: int) -> dict[str, list[float]]:
    """gvsl_step.py's backbone-only step on one pair ([A; B], 2 volumes of size³)."""
    import torch
    from gvsl_step import GVSLStep

    return _interleaved(_layouts(GVSLStep, "backbone", torch.rand(1, 2, 1, size, size, size), channels), steps)


class SegmenterStep:
    """The fine-tuning benchmark's network and step: U-Net 8-16-32-64 with deep supervision at 1/2 and 1/4,
    6 outputs, 2 patches of 56×64×64, AdamW."""

    def __init__(self) -> None:
        import torch

        from mssl.config import BackboneConfig
        from mssl.models.task_networks import build_segmentation_network

        torch.manual_seed(0)
        self.patches = torch.rand(2, 1, 56, 64, 64)
        config = BackboneConfig(name="unet", unet_channels=(8, 16, 32, 64))
        self.model = build_segmentation_network(config, 6, deep_supervision=2).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=3e-3)

    def __call__(self) -> None:
        loss = sum(output.square().mean() for output in self.model(self.patches))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def measure_gvsl(channels: tuple[int, ...], size: int, steps: int) -> dict[str, list[float]]:
    """gvsl_step.py's whole GVSL step on 2 pairs of size³."""
    import torch
    from gvsl_step import GVSLStep

    return _interleaved(_layouts(GVSLStep, "gvsl", torch.rand(2, 2, 1, size, size, size), channels), steps)


def measure_swin(feature_size: int, roi: int, steps: int) -> tuple[dict[str, list[float]], float]:
    import torch

    from mssl.models.backbones import SwinBackbone

    torch.manual_seed(0)
    student = SwinBackbone(in_channels=1, feature_size=feature_size, window_size=7, use_v2=True)
    explicit, sdpa = student.encoder_copy().eval(), student.encoder_copy().eval()
    _set_sdpa(explicit, False)
    _set_sdpa(sdpa, True)
    crops = torch.rand(SWIN_CROPS, 1, roi, roi, roi)
    with torch.no_grad():
        difference = (explicit(crops, decode=False).bottleneck - sdpa(crops, decode=False).bottleneck).abs().max().item()

    def variant(model: nn.Module) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad():
                model(crops, decode=False)

        return step

    return _interleaved({"explicit": variant(explicit), "sdpa": variant(sdpa)}, steps), difference


def _set_sdpa(model: nn.Module, enabled: bool) -> None:
    from monai.networks.nets.swin_unetr import WindowAttention

    for module in model.modules():
        if isinstance(module, WindowAttention):
            module.use_flash_attention = enabled


def measure_s2dc(feature_size: int, roi: int, steps: int) -> dict[str, list[float]]:
    """The whole S²DC step of s2dc_step.py (field 2·roi × 2·roi × roi, 4 grid crops, window 4) with the teacher on
    either attention."""
    from s2dc_step import S2DCStep

    variants = {}
    for name, sdpa in (("explicit", False), ("sdpa", True)):
        variants[name] = S2DCStep("s2dc", (2 * roi, 2 * roi, roi), roi, feature_size, 4)
        _set_sdpa(variants[name].model, sdpa)
    return _interleaved(variants, steps)


def _worker(kind: str, spec: str, steps: int) -> None:
    import json

    if kind == "unet":
        channels, size = spec.split(":")
        print(json.dumps({"cpu": measure_unet(tuple(int(c) for c in channels.split("-")), int(size), steps)}))
    elif kind == "gvsl":
        channels, size = spec.split(":")
        print(json.dumps({"cpu": measure_gvsl(tuple(int(c) for c in channels.split("-")), int(size), steps)}))
    elif kind == "segmenter":
        print(json.dumps({"cpu": _interleaved(_layouts(SegmenterStep), steps)}))
    elif kind == "s2dc":
        feature_size, roi = (int(v) for v in spec.split(":"))
        print(json.dumps({"cpu": measure_s2dc(feature_size, roi, steps)}))
    else:
        feature_size, roi = (int(v) for v in spec.split(":"))
        cpu, difference = measure_swin(feature_size, roi, steps)
        print(json.dumps({"cpu": cpu, "max_abs_difference": difference}))


def _run(kind: str, spec: str, steps: int) -> dict:
    return run_worker(__file__, ["--worker", kind, spec, "--steps", str(steps)], THREADS)


def _section(title: str, row: str, base: str, other: str, last: str = "steps (CPU s)") -> list[str]:
    """A report section's heading and the header of its table of :func:`_row` rows."""
    return ["", f"## {title}", "", f"| {row} | {base} (CPU s) | {other} (CPU s) | speed-up | {last} |", "| --- | --- | --- | --- | --- |"]


def _row(label: str, cpu: dict[str, list[float]], extra: str = "") -> str:
    (base, base_times), (other, other_times) = cpu.items()
    base_median, other_median = statistics.median(base_times), statistics.median(other_times)
    steps = "; ".join(f"{name} {[round(t, 2) for t in times]}" for name, times in cpu.items())
    return f"| {label} | {base_median:.2f} | {other_median:.2f} | {base_median / other_median:.2f}× | {extra}{steps} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="measured steps per variant (after one warm-up round)")
    parser.add_argument("--unet", nargs="*", default=["32-64-128-256-512:64", "32-64-128-256-512:96", "8-16-32-64:64"],
                        help="widths:side of the U-Net (GVSL's 32-512; the fine-tuning benchmark's 8-64)")
    parser.add_argument("--gvsl", nargs="*", default=["8-16-32-64:64", "32-64-128-256-512:64"], help="widths:side of the whole GVSL step")
    parser.add_argument("--swin", nargs="*", default=["12:64", "48:96"], help="feature_size:roi of the Swin teacher")
    parser.add_argument("--s2dc", nargs="*", default=["12:64"], help="feature_size:roi of the whole S²DC step")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(*args.worker, args.steps)
        return
    import torch

    lines = [
        "# Channels-last-3d convolutions and SDPA window attention (issue 17 item 2)",
        "",
        f"Command: `python benchmarks/layout_and_attention.py --steps {args.steps} --unet {' '.join(args.unet)} "
        f"--gvsl {' '.join(args.gvsl)} --swin {' '.join(args.swin)} --s2dc {' '.join(args.s2dc)}`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, float32, 2 threads, "
        "allocator settings of DESIGN §10. Each pair of variants runs interleaved in one fresh process; CPU seconds per "
        "step (process time, all threads), median after one warm-up round. Other jobs may share the machine; "
        "interleaving gives both variants the same load.",
    ]
    layouts = "default layout", "channels_last_3d"
    lines += _section("U-Net forward + backward + Adam step on 2 volumes (GVSL's [damaged A; B])", "widths, crop", *layouts)
    for spec in args.unet:
        channels, size = spec.split(":")
        lines.append(_row(f"{channels}, {size}³", _run("unet", spec, args.steps)["cpu"]))
    lines += _section(
        "Whole GVSL step (2 pairs; damage, augmentation, U-Net, Z-matching, warp, losses, backward, Adam)",
        "widths, crop", "default layout", "channels_last_3d U-Net",
    )
    for spec in args.gvsl:
        channels, size = spec.split(":")
        lines.append(_row(f"{channels}, {size}³", _run("gvsl", spec, args.steps)["cpu"]))
    lines += _section(
        "Fine-tuning step of the benchmark's segmenter (U-Net 8-16-32-64, deep supervision 2, 2 × 56×64×64, AdamW)",
        "network", *layouts,
    )
    lines.append(_row("segmenter", _run("segmenter", "-", args.steps)["cpu"]))
    lines += _section(
        f"Swin teacher pass, no grad, encoder only, {SWIN_CROPS} crops (S²DC)", "feature size, crop",
        "explicit attention", "SDPA", "bottleneck max abs difference; steps (CPU s)",
    )
    for spec in args.swin:
        figures = _run("swin", spec, args.steps)
        feature_size, roi = spec.split(":")
        lines.append(_row(f"fs {feature_size}, {roi}³", figures["cpu"], f"{figures['max_abs_difference']:.1e}; "))
    lines += _section(
        "Whole S²DC step (field 2·roi × 2·roi × roi, 4 grid crops, window 4): the teacher's two passes on either attention",
        "feature size, crop", "explicit attention", "SDPA teacher",
    )
    for spec in args.s2dc:
        feature_size, roi = spec.split(":")
        lines.append(_row(f"fs {feature_size}, {roi}³", _run("s2dc", spec, args.steps)["cpu"]))
    RESULTS.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
