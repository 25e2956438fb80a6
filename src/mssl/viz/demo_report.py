"""The demo's ``report.md``: what ran and how long it took, the probe tables, the figures and the data notice."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Protocol


class DemoSizes(Protocol):
    """What the report states about the demo's sizes: the fields of the demo plan it reads."""

    @property
    def spacing(self) -> tuple[float, float, float]: ...
    @property
    def s2dc_steps(self) -> int: ...
    @property
    def gvsl_steps(self) -> int: ...
    @property
    def swin(self) -> dict[str, Any]: ...
    @property
    def s2dc(self) -> dict[str, Any]: ...
    @property
    def unet(self) -> dict[str, Any]: ...
    @property
    def gvsl(self) -> dict[str, Any]: ...


class ProbeTable(Protocol):
    def markdown(self) -> str: ...


def demo_markdown(
    out: Path,
    plan: DemoSizes,
    timings: Mapping[str, Any],
    probes: Mapping[str, ProbeTable],
    figures: Mapping[str, list[Path]],
    runs: Mapping[str, Path],
    exports: Mapping[str, Path],
    fast: bool,
) -> str:
    """report.md of a demo in ``out``: ``timings`` is its timings.json, and runs, exports and figures (inside ``out``) are shown relative to it."""
    import mssl
    import torch
    from mssl.data.demo import notice

    labels = {"s2dc": "S²DC on Swin-UNETR", "gvsl": "GVSL on the 3D U-Net"}
    lines = [
        "# mssl demo report",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · mssl {mssl.__version__} · torch {torch.__version__} · "
        f"{platform.machine()} CPU, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads"
        + (" · **fast mode (toy sizes)**" if fast else ""),
        "",
        "Pipeline on the embedded OpenKBP sample (real head-and-neck CTs, see the notice at the end): "
        f"prepare at {plan.spacing[0]:g}×{plan.spacing[1]:g}×{plan.spacing[2]:g} mm, short pre-training of each method on "
        "the `train` cases, export, then a frozen-feature probe on the `test` cases of each exported encoder "
        "against a randomly initialised encoder of the same architecture.",
        "",
        "## Stages",
        "",
        "| stage | wall time (s) | CPU time (s) |",
        "|---|---|---|",
        *(f"| {name} | {seconds:.0f} | {timings['stages_cpu_s'][name]:.0f} |" for name, seconds in timings['stages_s'].items()),
        f"| **total** | **{timings['total_s']:.0f}** | **{timings['total_cpu_s']:.0f}** |",
        "",
        f"CPU time counts every thread of this process. 1-minute load average {timings['load_average_1min'][0]:g} at the start and "
        f"{timings['load_average_1min'][-1]:g} at the end on {os.cpu_count()} cores: a load above the core count means other jobs "
        "shared the machine and the wall times are longer than on an idle one.",
        "",
        "| method | backbone | steps | crops | export |",
        "|---|---|---|---|---|",
        f"| S²DC | Swin-UNETR {_short(plan.swin)} | {plan.s2dc_steps} | field {plan.s2dc['field_size']}, roi {plan.s2dc['roi']} | `{exports['s2dc'].relative_to(out)}` |",
        f"| GVSL | U-Net {_short(plan.unet)} | {plan.gvsl_steps} | pairs of {plan.gvsl['roi']} | `{exports['gvsl'].relative_to(out)}` |",
        "",
        "## Frozen-feature probes",
        "",
        "Per-voxel linear segmentation on frozen, upsampled encoder features (Dice on the test cases) and "
        "patch classification (kNN and logistic regression), on a handful of cases. A few hundred CPU steps of "
        "tiny networks are far too little for pre-training to pay off reliably: read these numbers as a check "
        "that the pipeline runs end to end, and use `mssl benchmark` for evidence.",
        "",
    ]
    for method, result in probes.items():
        lines += [f"### {labels[method]}", "", result.markdown(), ""]
    lines += ["## Figures", ""]
    for method, paths in figures.items():
        lines += [f"### {labels[method]}", ""]
        lines += [f"![{p.stem}]({p.relative_to(out)})" for p in paths]
        lines.append("")
    lines += [
        "Slice names follow the RAS convention of the cache. OpenKBP's affine only encodes voxel sizes, so for "
        "these volumes axis 2 is the axial direction but the in-plane axes are not guaranteed to be "
        "left-right / anterior-posterior: the 'coronal' and 'sagittal' panels may be swapped.",
        "",
        "## Next",
        "",
        "```",
        f"mssl inspect {exports['s2dc'].relative_to(out)} --into swinunetr --in-channels 1",
        f"mssl visualize {runs['s2dc'].relative_to(out)} --volume YOUR_CT.nii.gz",
        "mssl prepare YOUR_DATA/ --preset ct --out cache/ && mssl pretrain --method s2dc --data cache/ --out runs/s2dc",
        "```",
        "",
        "## Data notice",
        "",
        notice().replace("# Demo data: attribution and licence", "").replace("\n## ", "\n### ").strip(),
        "",
    ]
    return "\n".join(lines)


def _short(backbone: dict[str, Any]) -> str:
    if backbone["name"] == "swin":
        return f"feature size {backbone['feature_size']}, window {backbone['window_size']}"
    return "-".join(str(c) for c in backbone["unet_channels"])
