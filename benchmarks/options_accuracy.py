"""Do mssl's speed and memory options change what the demo's pre-training learns? Final losses against the seed spread.

The demo's own pre-training (src/mssl/pipelines/demo.py, FULL plan: S²DC 200 steps on a Swin-UNETR fs 12, GVSL 180
steps on a U-Net 16-128, the packaged demo CTs prepared at 4 mm as the demo prepares them) runs through the public
API `mssl.pretrain(...)`:
  - in float32 with seeds 0, 1 and 2: the seed spread;
  - at seed 0 with one option each: `precision="bf16-mixed"`, `checkpoint_activations=True` and, when a C compiler
    is present (torch.compile's CPU backend needs one), `compile=True`.
Channels-last U-Net and the SDPA teacher are mssl's defaults, so every run has them. Each run's final losses (the
total loss and every term: the mean of the last 10 logged steps of its metrics.csv) are compared with the float32
seed spread. An option is *within the seed spread* when, for every loss, it moves the seed-0 value by less than
the spread of the three float32 seeds (max − min). Each run is a fresh subprocess, one at a time, with the
allocator settings of DESIGN §10. Runs go to runs/options_accuracy/ (not committed); results to
benchmarks/results/options_accuracy.md (raw figures in options_accuracy.json).

    python benchmarks/options_accuracy.py [--variants fp32-seed0 ... compile] [--methods s2dc gvsl] [--keep] [--note TEXT]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _measure import ALLOCATOR_ENV, write_results

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "options_accuracy"
RESULTS = Path(__file__).resolve().parent / "results" / "options_accuracy.md"
FIGURES = RESULTS.with_suffix(".json")
LAST_STEPS = 10  # final loss = mean of this many last logged steps
SEEDS = (0, 1, 2)
# variant -> mssl.pretrain overrides; the float32 seeds first, then each option alone at seed 0
VARIANTS = {
    **{f"fp32-seed{seed}": {"seed": seed} for seed in SEEDS},
    "bf16-mixed": {"seed": 0, "precision": "bf16-mixed"},
    "checkpoint-activations": {"seed": 0, "checkpoint_activations": True},
    "compile": {"seed": 0, "compile": True},
}
OPTIONS = ("bf16-mixed", "checkpoint-activations", "compile")
LABELS = {
    "bf16-mixed": '`precision="bf16-mixed"`',
    "checkpoint-activations": "`checkpoint_activations=True`",
    "compile": "`compile=True`",
}
# the losses each method logs (train/<name> in metrics.csv): the total and its terms
LOSSES = {"s2dc": ("loss", "p2p", "p2s", "global"), "gvsl": ("loss", "ncc", "restore", "smooth")}
NAMES = {"s2dc": "S²DC", "gvsl": "GVSL"}
THREADS = 2


def _data() -> Path:
    """The demo's cache, prepared as run_demo prepares it (its datalist, preset and worker count); idempotent."""
    import mssl
    from mssl.data.demo import demo_datalist
    from mssl.data.preprocess import PresetConfig
    from mssl.pipelines.demo import CACHE, DATALIST, FULL, PREPARE_WORKERS

    folder = RUNS / "data"
    datalist = demo_datalist(folder / DATALIST, FULL.cases)
    report = mssl.prepare(datalist, folder / CACHE, PresetConfig(name="ct", spacing=FULL.spacing), workers=PREPARE_WORKERS)
    if not report.ok or report.failed:
        raise RuntimeError(f"demo data could not be prepared: {report.summary()}")
    return folder / CACHE


def _demo_training(method: str, cache: Path) -> dict:
    """mssl.pretrain's arguments for `method` in the demo's FULL plan (run_demo's `common` and `trainings`)."""
    from mssl.pipelines.demo import FULL

    steps = {"s2dc": FULL.s2dc_steps, "gvsl": FULL.gvsl_steps}
    options = {
        "s2dc": {"backbone": FULL.swin, "s2dc": FULL.s2dc},
        "gvsl": {"backbone": FULL.unet, "gvsl": FULL.gvsl},
    }[method]
    common = {"data": cache, "split": "train", "workers": 0, "log_every": 1, "checkpoint_every": max(steps.values()) + 1}
    return {**common, **options, "steps": steps[method]}


def _worker(variant: str, method: str) -> dict:
    """One pre-training run in this process; its final losses, CPU and wall time."""
    import mssl
    import torch

    torch.set_num_threads(THREADS)
    cache = _data()
    out = RUNS / variant / method
    if out.exists():  # a fresh run, never a resumed one
        shutil.rmtree(out)
    start, cpu = time.perf_counter(), time.process_time()
    run = mssl.pretrain(method=method, out=out, **_demo_training(method, cache), **VARIANTS[variant])
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"run": str(Path(run).relative_to(ROOT)), "wall_s": wall, "cpu_s": cpu, **final_losses(Path(run), method)}


def final_losses(run: Path, method: str, last: int = LAST_STEPS) -> dict:
    """The mean of each loss over the last `last` logged steps of a run's metrics.csv, and the steps it used."""
    from mssl.runs import PretrainRun

    with PretrainRun(run).metrics.open(encoding="utf-8", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/loss")]
    rows = rows[-last:]
    losses = {name: statistics.fmean(float(row[f"train/{name}"]) for row in rows) for name in LOSSES[method]}
    return {"losses": losses, "steps": [int(row["step"]) for row in rows]}


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def _run(variant: str, method: str, timeout: float) -> dict:
    env = {**os.environ, **ALLOCATOR_ENV, "OMP_NUM_THREADS": str(THREADS)}
    command = [sys.executable, __file__, "--worker", variant, "--methods", method]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, encoding="utf-8", timeout=timeout)
    except subprocess.TimeoutExpired:
        result = {"error": f"did not finish within {timeout:.0f} s"}
    else:
        if done.returncode == 0:
            result = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            tail = done.stderr.strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
            result = {"error": tail[0]}
    print(f"{variant:22s} {method}: {result}", flush=True)
    return result


def _spread(values: list[float]) -> tuple[float, float, float, float]:
    """min, max, mean, sample standard deviation."""
    return min(values), max(values), statistics.fmean(values), statistics.stdev(values)


def _seeds(runs: dict) -> dict[int, dict]:
    """The float32 runs measured, by seed."""
    return {seed: runs[f"fp32-seed{seed}"] for seed in SEEDS if "losses" in runs.get(f"fp32-seed{seed}", {})}


def _has_spread(measured: dict[int, dict]) -> bool:
    """A seed spread needs float32 seed 0 (the options' reference) and at least one other seed."""
    return 0 in measured and len(measured) >= 2


def verdicts(runs: dict, method: str) -> dict[str, dict]:
    """For each option measured: per loss its change from float32 seed 0, the seed spread (max − min over the float32
    seeds measured, at least seed 0 and one other), whether the change is smaller; and `within` for all losses."""
    measured = _seeds(runs)
    if not _has_spread(measured):
        return {}
    seeds = [measured[0], *(run for seed, run in measured.items() if seed != 0)]
    found = {}
    for option in OPTIONS:
        run = runs.get(option, {})
        if "losses" not in run:
            continue
        per_loss = {}
        for name in LOSSES[method]:
            values = [seed["losses"][name] for seed in seeds]
            change = abs(run["losses"][name] - values[0])
            spread = max(values) - min(values)
            per_loss[name] = {"change": change, "spread": spread, "within": change < spread}
        found[option] = {"losses": per_loss, "within": all(loss["within"] for loss in per_loss.values())}
    return found


def _g(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _method_section(method: str, runs: dict) -> list[str]:
    lines = [f"## {NAMES[method]}", ""]
    measured = _seeds(runs)
    if not _has_spread(measured):
        return lines + [f"No seed spread: float32 seeds measured: {sorted(measured) or 'none'} (seed 0 and another needed).", ""]
    missing = [seed for seed in SEEDS if seed not in measured]
    if missing:
        lines += [f"Float32 seed(s) {', '.join(map(str, missing))} not measured: the spread is over seeds {', '.join(map(str, measured))} only.", ""]
    seeds = list(measured.values())
    options = [o for o in OPTIONS if o in runs]
    header = ["loss", *(f"fp32 seed {s}" for s in measured), "seeds min–max", "seeds mean ± std"]
    for option in options:
        header += [f"{option} (seed 0)", f"{option}: change from fp32 seed 0"]
    lines += ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    found = verdicts(runs, method)
    for name in LOSSES[method]:
        values = [seed["losses"][name] for seed in seeds]
        low, high, mean, std = _spread(values)
        row = [name, *(_g(v) for v in values), f"{_g(low)} – {_g(high)} (spread {_g(high - low)})", f"{_g(mean)} ± {_g(std)}"]
        for option in options:
            run = runs[option]
            if "losses" not in run:
                row += ["failed", ""]
                continue
            verdict = found[option]["losses"][name]
            row += [_g(run["losses"][name]), f"{_g(verdict['change'])} ({'<' if verdict['within'] else '≥'} spread)"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Verdicts:", ""]
    for option in options:
        run = runs[option]
        if "losses" not in run:
            lines.append(f"- {LABELS[option]}: not measured: {run.get('error', 'no figures')}.")
        elif found[option]["within"]:
            lines.append(f"- {LABELS[option]}: **within the seed spread** (every loss moved less than the float32 seeds' max − min).")
        else:
            outside = [n for n, v in found[option]["losses"].items() if not v["within"]]
            lines.append(f"- {LABELS[option]}: **not within the seed spread** for {', '.join(outside)}.")
    lines += ["", "Time of each run (whole `mssl.pretrain` call, one at a time, not interleaved: compare loosely):", ""]
    lines += ["| run | CPU s | wall s | steps averaged |", "| --- | --- | --- | --- |"]
    for variant in VARIANTS:
        run = runs.get(variant)
        if run is None:
            continue
        if "error" in run:
            lines.append(f"| {variant} | failed: {run['error']} | | |")
            continue
        lines.append(f"| {variant} (`{run['run']}`) | {run['cpu_s']:.0f} | {run['wall_s']:.0f} | {run['steps'][0]}–{run['steps'][-1]} |")
    return lines + [""]


def _report(figures: dict) -> str:
    env = " ".join(f"{k}={v}" for k, v in ALLOCATOR_ENV.items())
    lines = [
        "# Speed and memory options vs the seed spread: the demo's pre-training (CPU)",
        "",
        "Commands: " + "; ".join(f"`{c}`" for c in figures["commands"]) + f". Each run in a fresh subprocess, one at a time, "
        f"with {env} and {THREADS} threads.",
        f"Machine: {figures['machine']}, torch {figures['torch']}. {figures['load_note']}",
        "Runs: the demo's FULL plan (src/mssl/pipelines/demo.py) through `mssl.pretrain(...)`: S²DC 200 steps (Swin-UNETR "
        "fs 12, window 4, field 64×128×64, two 64³ crops), GVSL 180 steps (U-Net 16-32-64-128, 48³ pairs), on the packaged "
        "demo CTs prepared at 4 mm as the demo prepares them, logging every step. Channels-last U-Net and the SDPA "
        "teacher are mssl's defaults, so every run below has them.",
        f"Final loss = mean over the last {LAST_STEPS} logged steps of the run's metrics.csv (train/loss and each term). "
        "An option is *within the seed spread* when every loss moved, from float32 seed 0, by less than the max − min of "
        "float32 seeds 0, 1, 2 (those measured; std = sample standard deviation over them).",
        "",
    ]
    for method in ("s2dc", "gvsl"):
        if method in figures["runs"]:
            lines += _method_section(method, figures["runs"][method])
    lines += [*figures.get("notes", []), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--methods", nargs="+", choices=sorted(LOSSES), default=["s2dc", "gvsl"])
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a run may take before it is stopped and reported")
    parser.add_argument("--keep", action="store_true", help=f"keep the other runs already in {FIGURES.name}")
    parser.add_argument("--note", help="what else ran on the machine meanwhile (goes into the report)")
    parser.add_argument("--worker", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.methods[0])))
        return
    import torch

    figures: dict = {"runs": {}, "commands": [], "notes": []}
    if args.keep and FIGURES.is_file():
        figures = json.loads(FIGURES.read_text(encoding="utf-8"))
    command = " ".join(["python benchmarks/options_accuracy.py", *(sys.argv[1:] if argv is None else argv)])
    figures.update(torch=torch.__version__, machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores")
    figures["commands"] = [c for c in figures["commands"] if c != command] + [command]
    figures["load_note"] = args.note or "No other load was recorded for this run."
    compiler = _compiler()
    for variant in args.variants:
        for method in args.methods:
            runs = figures["runs"].setdefault(method, {})
            if variant == "compile" and compiler is None:
                runs[variant] = {"error": "no C compiler found (torch.compile's CPU backend needs one)"}
                continue
            runs[variant] = _run(variant, method, args.timeout)
            write_results(RESULTS, _report(figures), figures)  # after every run: a stopped sweep keeps what it has
    write_results(RESULTS, _report(figures), figures)


if __name__ == "__main__":
    main()
