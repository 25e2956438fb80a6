"""``mssl demo``: the whole pipeline on the embedded CT sample, offline, on a CPU, in minutes.

prepare → short S²DC (Swin-UNETR) and GVSL (U-Net) pre-training → export → frozen-feature probe of
each encoder against a randomly initialised one of the same architecture → figures → report.md.
The sizes are chosen for a 2-core CPU; they show that everything works and what the outputs look
like, not what pre-training is worth at scale (that is ``mssl benchmark``).

``mssl.demo(out, fast)`` (this module's ``run_demo``) is the Python twin of ``mssl demo``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console

DATALIST = "dataset.json"
CACHE = "cache"
RUNS = "runs"
PROBES = "probes"
FIGURES = "figures"
REPORT = "report.md"
TIMINGS = "timings.json"
PREPARE_WORKERS = 1  # measured: a worker pool's start-up costs more than it saves on twelve small volumes


@dataclass(frozen=True)
class DemoPlan:
    """Sizes of one demo: which cases, how much training, how big the networks and probes are."""

    cases: dict[str, int] | None  # first n cases per split; None = all twelve
    spacing: tuple[float, float, float]
    s2dc_steps: int
    gvsl_steps: int
    swin: dict[str, Any]
    s2dc: dict[str, Any]
    unet: dict[str, Any]
    gvsl: dict[str, Any]
    probe: dict[str, Any] = field(default_factory=dict)


# 2-core CPU, ≤ 10 minutes: Swin fs12 with window 4 on a 64×128×64 field of two 64³ crops, tokens at
# stride 16 (4³ per crop); U-Net 16-32-64-128 on 48³ pairs; 4 mm voxels; probes on 4 train / 5 test CTs.
# Measured: ~0.85 CPU-s per S²DC step and ~0.95 per GVSL step, ~400 CPU-s for the whole demo; an idle
# machine finishes in at most that wall time.
FULL = DemoPlan(
    cases=None,
    spacing=(4.0, 4.0, 4.0),
    s2dc_steps=200,
    gvsl_steps=180,
    swin={"name": "swin", "feature_size": 12, "window_size": 4},
    s2dc={"field_size": [64, 128, 64], "roi": 64, "token_stage": -2, "head_hidden": 256, "head_out": 128,
          "queue_size": 16, "sinkhorn_iters": 30, "optim": {"warmup_steps": 5}},
    unet={"name": "unet", "unet_channels": [16, 32, 64, 128]},
    gvsl={"roi": [48, 48, 48]},
    probe={"train_cases": 4, "test_cases": 5},
)
# Seconds, for tests and CI: two training and one test case at 8 mm, two steps per method, tiny networks.
FAST = DemoPlan(
    cases={"train": 2, "test": 1},
    spacing=(8.0, 8.0, 8.0),
    s2dc_steps=2,
    gvsl_steps=2,
    swin={"name": "swin", "feature_size": 12, "window_size": 4},
    s2dc={"field_size": [32, 64, 32], "roi": 32, "token_stage": -2, "head_hidden": 32, "head_out": 16,
          "queue_size": 4, "sinkhorn_iters": 5},
    unet={"name": "unet", "unet_channels": [8, 16, 32]},
    gvsl={"roi": [32, 32, 32]},
    probe={"train_cases": 1, "test_cases": 1, "voxels_per_class": 200},
)


@dataclass
class Stopwatch:
    """Wall time and process CPU time (all threads) of each named stage, in order.

    CPU time is reported next to wall time because it barely depends on other jobs sharing the machine.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    load_average: list[float] = field(default_factory=list)  # 1-minute load at the start and the end

    @contextmanager
    def stage(self, name: str, console: Console) -> Iterator[None]:
        console.rule(f"[bold]{name}")
        if not self.load_average:
            self.load_average.append(_load())
        start, cpu = time.perf_counter(), time.process_time()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 1)
        self.cpu_seconds[name] = round(time.process_time() - cpu, 1)
        console.print(f"[dim]{name}: {self.seconds[name]:.0f} s wall, {self.cpu_seconds[name]:.0f} s CPU[/dim]")

    @property
    def total(self) -> float:
        return round(sum(self.seconds.values()), 1)

    @property
    def cpu_total(self) -> float:
        return round(sum(self.cpu_seconds.values()), 1)


def _load() -> float:
    return round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else float("nan")


def copy_demo_dataset(out: Path, console: Console) -> Path:
    """The packaged cases, labels, dataset.json and NOTICE.md copied into ``out``; an existing file there is
    never overwritten (one line names it)."""
    from mssl.data.demo import demo_dataset

    source = demo_dataset()
    files = [path.relative_to(source) for path in sorted(source.rglob("*")) if path.is_file()]
    clashes = [name for name in files if (out / name).exists()]
    if clashes:
        raise FileExistsError(f"{out / clashes[0]}: already exists; choose another --out (nothing was copied)")
    for name in files:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, out / name)
    console.print(f"wrote {out / DATALIST} and {len(files) - 2} images and labels (the packaged OpenKBP CTs; see {out / 'NOTICE.md'})")
    return out / DATALIST


def run_demo(
    out: str | Path = "demo_run", fast: bool = False, console: Console | None = None, plan: DemoPlan | None = None, data_only: bool = False
) -> Path:
    """Run the demo into ``out`` and return the path of its ``report.md``.

    ``fast=True`` runs the same stages at toy sizes (seconds; for tests and CI); ``plan`` replaces the
    sizes altogether (e.g. ``dataclasses.replace(FULL, s2dc_steps=500)``). ``data_only=True`` copies the
    packaged dataset into ``out`` (MSD layout) and returns its ``dataset.json``, running nothing.
    """
    if data_only:
        return copy_demo_dataset(Path(out), console or Console())
    import mssl
    from mssl.data.demo import demo_datalist
    from mssl.data.preprocess import PresetConfig
    from mssl.downstream.probe import probe
    from mssl.viz.visualize import visualize

    plan = plan or (FAST if fast else FULL)
    console = console or Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    watch = Stopwatch()
    datalist = demo_datalist(out / DATALIST, plan.cases)
    test_volume = next(e["image"] for e in json.loads(datalist.read_text(encoding="utf-8"))["training"] if e["split"] == "test")
    common = {"data": out / CACHE, "split": "train", "workers": 0, "log_every": 1, "checkpoint_every": max(plan.s2dc_steps, plan.gvsl_steps) + 1}  # last.ckpt only

    with watch.stage("prepare", console):
        report = mssl.prepare(datalist, out / CACHE, PresetConfig(name="ct", spacing=plan.spacing), workers=PREPARE_WORKERS, progress=True)
        if not report.ok or report.failed:
            raise RuntimeError(f"demo data could not be prepared: {report.summary()}")
    runs, exports, probes, figures = {}, {}, {}, {}
    trainings = {
        "s2dc": {"backbone": plan.swin, "s2dc": plan.s2dc, "steps": plan.s2dc_steps},
        "gvsl": {"backbone": plan.unet, "gvsl": plan.gvsl, "steps": plan.gvsl_steps},
    }
    for method, options in trainings.items():
        with watch.stage(f"pre-train {method}", console):
            runs[method] = mssl.pretrain(method=method, out=out / RUNS / method, **common, **options)
        with watch.stage(f"export {method}", console):
            exports[method] = mssl.export(runs[method])
            console.print(f"exported {exports[method]}")
    for method in trainings:
        with watch.stage(f"probe {method} vs random", console):
            probes[method] = probe(weights=exports[method], data=datalist, out=out / PROBES / method, console=console, **plan.probe)
        with watch.stage(f"visualize {method}", console):
            figures[method] = visualize(runs[method], test_volume, out=out / FIGURES / method)
    watch.load_average.append(_load())
    path = write_report(out, plan, watch, probes, figures, runs, exports, fast)
    console.rule("[bold]done")
    console.print(f"demo finished in {watch.total:.0f} s ({watch.cpu_total:.0f} s CPU); report: {path}")
    return path


def write_report(
    out: Path, plan: DemoPlan, watch: Stopwatch, probes: dict, figures: dict[str, list[Path]], runs: dict[str, Path], exports: dict[str, Path], fast: bool
) -> Path:
    """timings.json, then report.md rendered from it."""
    from mssl.viz.demo_report import demo_markdown

    timings = {"stages_s": watch.seconds, "total_s": watch.total, "stages_cpu_s": watch.cpu_seconds, "total_cpu_s": watch.cpu_total,
               "load_average_1min": watch.load_average}
    (out / TIMINGS).write_text(json.dumps(timings, indent=2) + "\n", encoding="utf-8")
    path = out / REPORT
    path.write_text(demo_markdown(out, plan, timings, probes, figures, runs, exports, fast), encoding="utf-8")
    return path
