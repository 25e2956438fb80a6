"""mssl against the official S²DC and GVSL implementations, side by side, one training step at a time (CPU).

Always measures mssl against its floor (the backbone passes a step cannot avoid, as gvsl_step.py and
s2dc_step.py define them). Given git checkouts of the official repositories (never vendored here), it also
builds their model and loss from the checkout in the worker process and measures their training step at the
same configuration:
  - S²DC: 4 grid crops of 64³ (field 128×128×64), 4 of 96³ (field 192×192×96) and 2 of 96³ (field 192×96×96),
    feature size 12, window 7, one field per step; the official code (96³ crops only) as shipped (autograd anomaly
    detection on) and with anomaly detection off; 4 crops of 96³ only when its known peak memory fits (on a 24 GB
    machine it does not, for anyone but the official as shipped: 2 crops of 96³ is the comparison that fits);
  - GVSL: full-width U-Net (32..512), batch of 1 pair, cubic crops (--sizes); sizes from 128 on are run for
    one step only, for peak memory, and only when they fit in the available memory; there mssl also runs with
    its memory options: --checkpoint-activations, and that with --precision bf16-mixed (autocast to bfloat16);
  - at the speed configurations (GVSL below 128³, S²DC 64³ and 2 crops of 96³), mssl also runs with
    --precision bf16-mixed alone (ours-bf16), the speed option on a CPU with bfloat16 units (AMX / AVX512-BF16).
Every (implementation, configuration) runs in a fresh subprocess (honest peak RSS) with the allocator settings
of DESIGN §10 and the same thread count, one at a time, its data segment limited to --memory-share of the memory
available when it starts (RLIMIT_DATA): a step that needs more fails as an "out of memory" row instead of waking
the kernel's OOM killer on a shared machine. Results: benchmarks/results/vs_official.md (raw figures in
vs_official.json).

    python benchmarks/vs_official.py [--s2dc-official DIR] [--gvsl-official DIR] [--steps 3] [--sizes 64 96 128]
        [--s2dc-crops 64 96 96x2] [--memory-share 0.8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

from _measure import ALLOCATOR_ENV, WorkerOutOfMemory, available_gb, peak_rss_gb, run_worker, timed_steps, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "vs_official.md"
FIGURES = RESULTS.with_suffix(".json")
# S²DC configurations, by their --s2dc-crops name: (field, crop side), the grid crops tiling the field in-plane. "64"
# and "96": 4 crops (2 × 2); "96x2": 2 crops of 96³ (2 × 1), half the memory of "96", so that every implementation
# fits in this 24 GB machine. Feature size and window as the configuration.
S2DC_CROPS = {"64": ((128, 128, 64), 64), "96": ((192, 192, 96), 96), "96x2": ((192, 96, 96), 96)}
S2DC_FEATURE_SIZE, S2DC_WINDOW = 12, 7
# the official S²DC token layout hard-wires 3 bottleneck tokens per crop side, i.e. 96³ crops
OFFICIAL_UNSUPPORTED = {"s2dc-64": "its token layout hard-wires 3 bottleneck tokens per crop side (96³ crops only)"}
# peaks measured on the 2-core, 23 GB machine: official S²DC (anomaly detection off) 17.4 GB in an earlier run; since,
# official as shipped 19.1 GB, while official with anomaly detection off, mssl (defaults or --checkpoint-activations)
# and our floor ran out of a 19.5-19.6 GB data limit (90 % of the free memory): see the report
KNOWN_PEAK_GB = {"s2dc-96": 17.5}
MEMORY_ONLY_FROM = 128  # GVSL crops this large: one step, for peak memory
# default for --memory-share: run a memory-only size only if its estimated peak fits in this share of the available
# memory, and limit every worker's data segment to this share of the memory available when it starts
MEMORY_SHARE = 0.8
IMPLEMENTATIONS = {
    "s2dc": ("floor", "ours", "ours-bf16", "official", "official-anomaly-off", "ours-checkpointed"),
    "gvsl": ("floor", "ours", "ours-bf16", "official", "ours-checkpointed", "ours-checkpointed-bf16"),
}
# mssl with its speed option, run at the speed configurations (not at the GVSL memory-only sizes, nor at S²DC 4 × 96³,
# where mssl's defaults did not fit in the data limit here)
SPEED_OPTIONS = ("ours-bf16",)
SPEED_OPTION_SKIPPED_CONFIGS = ("s2dc-96",)
# mssl with its memory options, run at the GVSL memory-only sizes and at these configurations: S²DC 4 × 96³ needs more
# than 90 % of this machine's free memory with mssl's defaults (out of memory at 19.6 GB, floor included); at 2 × 96³
# checkpointing shows what it saves at the configuration where everything fits
MEMORY_OPTIONS = ("ours-checkpointed", "ours-checkpointed-bf16")
MEMORY_OPTION_CONFIGS = ("s2dc-96", "s2dc-96x2")
LABELS = {
    "floor": "our floor (backbone passes only)",
    "ours": "mssl",
    "ours-bf16": "mssl, --precision bf16-mixed",
    "official": "official, as shipped",
    "official-anomaly-off": "official, anomaly detection off",
    "ours-checkpointed": "mssl, --checkpoint-activations",
    "ours-checkpointed-bf16": "mssl, --checkpoint-activations --precision bf16-mixed",
}
OFFICIAL_OPTIONS = {"s2dc": "--s2dc-official", "gvsl": "--gvsl-official"}
NAMES = {"s2dc": "S²DC", "gvsl": "GVSL"}


def _split(config: str) -> tuple[str, int]:
    """'gvsl-96' -> ('gvsl', 96), 's2dc-96x2' -> ('s2dc', 96): the method and its crop side."""
    method, name = config.split("-")
    return method, int(name.split("x")[0])


def _s2dc(config: str) -> tuple[tuple[int, int, int], int]:
    """'s2dc-96x2' -> ((192, 96, 96), 96): an S²DC configuration's field and crop side."""
    return S2DC_CROPS[config.removeprefix("s2dc-")]


def _describe(config: str) -> str:
    method, size = _split(config)
    if method == "s2dc":
        field, roi = _s2dc(config)
        crops = (field[0] // roi) * (field[1] // roi) * (field[2] // roi)
        return f"S²DC, field {'×'.join(map(str, field))}, {crops} crops of {roi}³, feature size {S2DC_FEATURE_SIZE}, window {S2DC_WINDOW}"
    return f"GVSL, U-Net 32–512, {size}³ pair, batch 1" + (" (peak memory, one step)" if size >= MEMORY_ONLY_FROM else "")


# (configuration, official implementation, what is compared, how, threshold, our implementation); "speed" =
# official CPU s / ours, "memory" = our peak RSS / official. The memory target allows whichever options give it,
# so each of our memory options is set against it.
TARGETS = (
    ("gvsl-64", "official", "speed", "≥", 1.5, "ours"),
    ("gvsl-96", "official", "speed", "≥", 1.5, "ours"),
    # the speed target allows whichever options give it: mssl with bf16 autocast (no checkpointing)
    ("gvsl-64", "official", "speed", "≥", 1.5, "ours-bf16"),
    ("gvsl-96", "official", "speed", "≥", 1.5, "ours-bf16"),
    ("gvsl-128", "official", "memory", "≤", 0.6, "ours"),
    ("gvsl-128", "official", "memory", "≤", 0.6, "ours-checkpointed"),
    ("gvsl-128", "official", "memory", "≤", 0.6, "ours-checkpointed-bf16"),
    ("s2dc-96", "official", "speed", "≥", 2.0, "ours"),
    ("s2dc-96", "official-anomaly-off", "speed", "≥", 1.3, "ours"),
    # checkpointing only adds recomputation: these ratios are lower bounds of the two above
    ("s2dc-96", "official", "speed", "≥", 2.0, "ours-checkpointed"),
    ("s2dc-96", "official-anomaly-off", "speed", "≥", 1.3, "ours-checkpointed"),
    # the same targets at 2 crops of 96³, where every implementation fits in this machine's memory; as for GVSL, the
    # speed target allows mssl's speed option (bf16 autocast)
    ("s2dc-96x2", "official", "speed", "≥", 2.0, "ours"),
    ("s2dc-96x2", "official-anomaly-off", "speed", "≥", 1.3, "ours"),
    ("s2dc-96x2", "official", "speed", "≥", 2.0, "ours-bf16"),
    ("s2dc-96x2", "official-anomaly-off", "speed", "≥", 1.3, "ours-bf16"),
)


def _worker(implementation: str, config: str, steps: int, warmup: int, official: Path | None) -> dict:
    """Build one implementation at one configuration in this process, time its steps, return its figures."""
    import torch

    method, size = _split(config)
    if method == "s2dc":
        field, roi = _s2dc(config)
        if implementation.startswith("official"):
            from _official import s2dc_step

            anomaly = implementation == "official"
            step, facts = s2dc_step(official, field, roi, S2DC_FEATURE_SIZE, anomaly)
        else:
            from s2dc_step import S2DCStep

            mode = "backbone" if implementation == "floor" else "s2dc"
            checkpointed, bf16 = implementation in MEMORY_OPTIONS, implementation.endswith("-bf16")
            step = S2DCStep(
                mode, field, roi, S2DC_FEATURE_SIZE, S2DC_WINDOW, checkpoint_activations=checkpointed, autocast_bf16=bf16
            )
            facts = {"trainable_parameters": sum(p.numel() for p in step.model.parameters() if p.requires_grad)}
    else:
        if implementation == "official":
            from _official import gvsl_step

            step, facts = gvsl_step(official, size)
        else:
            from gvsl_step import GVSLStep

            torch.manual_seed(0)
            mode = "backbone" if implementation == "floor" else "gvsl"
            checkpointed, bf16 = implementation in MEMORY_OPTIONS, implementation.endswith("-bf16")
            step = GVSLStep(mode, torch.rand(1, 2, 1, size, size, size), checkpoint_activations=checkpointed, autocast_bf16=bf16)
            facts = {"trainable_parameters": sum(p.numel() for p in step.model.parameters())}
    figures = timed_steps({implementation: step}, steps, warmup)[implementation]
    return {**figures, **facts, "peak_rss_gb": peak_rss_gb(), "warmup": warmup, "threads": torch.get_num_threads()}


def _run(implementation: str, config: str, steps: int, warmup: int, threads: int, official: Path | None, memory_share: float = MEMORY_SHARE) -> dict:
    """One worker, its data segment limited to `memory_share` of the memory available now; its figures, or
    {"error": why} when it failed (out of memory under that limit included)."""
    arguments = ["--worker", implementation, "--config", config, "--steps", str(steps), "--warmup", str(warmup), "--threads", str(threads)]
    if official is not None:
        arguments += ["--official", str(official)]
    available = available_gb()
    limit = memory_share * available
    try:
        result = run_worker(__file__, arguments, {"OMP_NUM_THREADS": str(threads)}, memory_limit_gb=limit)
    except WorkerOutOfMemory:
        result = {"error": f"out of memory: needed more than its {limit:.1f} GB limit ({memory_share:.0%} of the {available:.1f} GB available)"}
    except RuntimeError as error:  # e.g. the official code fails at this configuration: report it, go on
        result = {"error": str(error)}
    print(f"{implementation:21s} {config}: {result}", flush=True)
    return result


def _revision(checkout: Path) -> str:
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else "not a git repository, revision unknown"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ratio(config_runs: dict, official: str, kind: str, implementation: str = "ours") -> float | None:
    ours, theirs = config_runs.get(implementation, {}), config_runs.get(official, {})
    key = "median_cpu_s" if kind == "speed" else "peak_rss_gb"
    if key not in ours or key not in theirs:
        return None
    return theirs[key] / ours[key] if kind == "speed" else ours[key] / theirs[key]


def _target_rows(figures: dict) -> list[str]:
    rows = []
    for config, official, kind, relation, threshold, ours in TARGETS:
        method, _ = _split(config)
        what = f"official CPU s/step ÷ {LABELS[ours]}" if kind == "speed" else f"{LABELS[ours]} peak RSS ÷ official"
        label = f"{_describe(config)}: {what} ({LABELS[official]}) {relation} {threshold}"
        runs = figures["configs"].get(config, {}).get("runs")
        ratio = _ratio(runs, official, kind, ours) if runs else None
        if ratio is not None:
            met = ratio >= threshold if relation == "≥" else ratio <= threshold
            verdict = "**met**" if met else "**not met**"
        elif figures["official"].get(method) is None:
            verdict = f"not measured: official checkout not given ({OFFICIAL_OPTIONS[method]})"
        elif config in figures.get("skipped", {}):
            verdict = f"not measured: {figures['skipped'][config]}"
        else:
            failed = (runs or {}).get(official, {}).get("error") or (runs or {}).get(ours, {}).get("error")
            verdict = f"not measured: {failed}" if failed else "not measured in this run"
        rows.append(f"| {label} | {_fmt(ratio)} | {verdict} |")
    return rows


def _config_table(config: str, entry: dict, figures: dict) -> list[str]:
    method, _ = _split(config)
    runs = entry["runs"]
    lines = [
        f"### {_describe(config)}",
        "",
        "| implementation | CPU s/step (median) | CPU s of each measured step | wall s/step (median) | peak RSS (GB) | CPU time ÷ mssl |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    ours_cpu = runs.get("ours", {}).get("median_cpu_s")
    for implementation in IMPLEMENTATIONS[method]:
        run = runs.get(implementation)
        if run is None:
            if implementation.startswith("official") and config in OFFICIAL_UNSUPPORTED:
                lines.append(f"| {LABELS[implementation]} | cannot run this configuration: {OFFICIAL_UNSUPPORTED[config]} | | | | |")
            elif implementation.startswith("official") and figures["official"].get(method) is None:
                lines.append(f"| {LABELS[implementation]} | not given | | | | |")
            continue
        if "error" in run:
            lines.append(f"| {LABELS[implementation]} | failed: {run['error']} | | | | |")
            continue
        ratio = run["median_cpu_s"] / ours_cpu if ours_cpu else None
        steps = ", ".join(f"{t:.2f}" for t in run["cpu_times_s"])
        lines.append(
            f"| {LABELS[implementation]} | {run['median_cpu_s']:.2f} | {steps} | {run['median_s']:.2f} | "
            f"{run['peak_rss_gb']:.2f} | {_fmt(ratio)} |"
        )
    warmup = next((run["warmup"] for run in runs.values() if "warmup" in run), 1)
    lines += ["", f"Steps measured after {warmup} warm-up step(s): {entry['steps']}." if warmup else
              f"One step with no warm-up (first-step costs included): {entry['steps']} measured.", ""]
    return lines


def _report(figures: dict) -> str:
    """The Markdown report of `figures` (the JSON this script writes)."""
    env = " ".join(f"{k}={v}" for k, v in ALLOCATOR_ENV.items())
    lines = [
        "# mssl vs the official S²DC and GVSL implementations (CPU)",
        "",
        "Commands: " + "; ".join(f"`{c}`" for c in sorted({c for e in figures["configs"].values() for c in _commands(e)})) + ". Each (implementation, configuration) ran in a fresh subprocess, one at a "
        f"time, with {env} and {figures['threads']} threads (OMP_NUM_THREADS and torch) for every implementation.",
        f"Machine: {figures['machine']}, torch {figures['torch']}, MONAI {figures['monai']}, float32 unless the implementation says bf16-mixed. {figures['load_note']}",
        "A step = forward + loss + backward + optimiser step on random inputs of the configuration. *CPU time* is the "
        "process's CPU seconds (all threads) per step, steadier than wall time on a shared machine; peak RSS is the "
        "worker process's maximum resident memory (model construction included).",
        "",
    ]
    given = {method: path for method, path in figures["official"].items() if path}
    if given:
        lines.append(
            "Official code: "
            + "; ".join(f"{NAMES[m]} from the checkout `{p}` ({figures['revisions'][m]})" for m, p in given.items())
            + ". The worker put the checkout on `sys.path` and imported its modules; none of its code is vendored in this "
            "repository. Patched at run time: " + "; ".join(figures["patches"]) + "."
        )
    missing = [m for m in IMPLEMENTATIONS if not figures["official"].get(m)]
    if missing:
        options = " ".join(f"{OFFICIAL_OPTIONS[m]} DIR" for m in missing)
        names = " and ".join(NAMES[m] for m in missing)
        lines.append(
            f"Official {names}: not given, so their columns are empty. Add them with "
            f"`python benchmarks/vs_official.py {options}` (DIR = your git checkout of "
            + " / ".join(f"github.com/{_repo(m)}" for m in missing)
            + "; nothing of it is copied into this repository)."
        )
    lines += ["", "## Targets (issue 17)", "", "| target | measured | verdict |", "| --- | --- | --- |", *_target_rows(figures), ""]
    lines += ["## Per configuration", ""]
    for config in sorted(figures["configs"], key=_config_order):
        lines += _config_table(config, figures["configs"][config], figures)
    for config, reason in sorted(figures.get("skipped", {}).items()):
        lines += [f"Not measured: {_describe(config)}: {reason}.", ""]
    for note in figures.get("notes", []):
        lines += [note, ""]
    return "\n".join(lines)


def _commands(entry: dict) -> list[str]:
    """The command(s) that produced a configuration's figures (several when --only added implementations)."""
    command = entry.get("command", [])
    return [command] if isinstance(command, str) else list(command)


def _repo(method: str) -> str:
    from _official import REPOSITORIES

    return REPOSITORIES[method].removeprefix("github.com/")


def _config_order(config: str) -> tuple[bool, int, str]:
    return _split(config)[0] != "s2dc", _split(config)[1], config


NOTES = [
    "What each step contains. S²DC, mssl: view generation and correspondences from the field, student pass, two "
    "teacher passes, heads, Sinkhorn (50 iterations), three losses, backward, AdamW, EMA, queue. S²DC, official: "
    "student pass and three teacher passes (token view, global view, source view for the queue) on the crops, heads, "
    "Sinkhorn (100 iterations), three losses, backward, AdamW; its views are built by its data loader and are not "
    "in the timed step, which favours the official figures. Floor: student forward + backward and two teacher "
    "forwards on the crops, AdamW (s2dc_step.py).",
    "GVSL, mssl: appearance damage, shared spatial augmentation, one U-Net pass on [damaged A; B], Z-matching heads, "
    "warp, NCC + restoration + smoothness, backward, Adam. GVSL, official: appearance damage (numpy), spatial "
    "augmentation, two U-Net passes, heads, two warps, NCC (9³ conv box filter) + MSE + smoothness, backward, Adam "
    "(Train_GVSL.py's loop body). Floor: the U-Net alone on the 2 volumes, forward + backward + Adam (gvsl_step.py).",
    "Memory options: *mssl, --checkpoint-activations* builds the backbone with gradient checkpointing (as `mssl "
    "pretrain --checkpoint-activations`); *… --precision bf16-mixed* also runs the forward pass under "
    "`torch.autocast(\"cpu\", dtype=torch.bfloat16)`, backward and optimiser step outside it, as Lightning's "
    "bf16-mixed plugin does (mssl keeps NCC, warps, Sinkhorn and logits in fp32 inside it). They run at the GVSL "
    "memory-only sizes (the peak-memory target allows whichever options give it), at S²DC 4 crops of 96³, where mssl's "
    "defaults did not fit in the data limit here, and (checkpointing alone) at S²DC 2 crops of 96³, to show what it "
    "saves where everything fits. Checkpointing only adds recomputation, so official ÷ checkpointed mssl is a lower "
    "bound of official ÷ mssl with its defaults.",
    "Speed option: *mssl, --precision bf16-mixed* (no checkpointing) runs the forward pass under "
    "`torch.autocast(\"cpu\", dtype=torch.bfloat16)`, backward and optimiser step outside it, as Lightning's bf16-mixed "
    "plugin does; mssl keeps NCC, warps, Sinkhorn and logits in fp32 inside it. The CPU of the GVSL and S²DC 64³ rows "
    "has bfloat16 units (amx_bf16 and avx512_bf16 in /proc/cpuinfo), which oneDNN uses for bf16 convolutions and matrix products. It runs at the "
    "GVSL speed sizes and at S²DC 2 crops of 96³ (the speed targets allow whichever options give them), and at S²DC "
    "64³ (mssl fp32 vs bf16; the official S²DC cannot run 64³ crops). Its effect on a 200-step demo run's losses: "
    "options_accuracy.md. The S²DC 2-crop rows ran later, on another machine: an AMD EPYC with AVX2 only, no bf16 "
    "units (the machine was replaced between runs), where bf16 is emulated and bf16-mixed was 5.6× slower than fp32: "
    "torch.profiler on one 96³ crop (fs 12, window 7, forward + backward, 1 thread) showed the Swin window "
    "attention's batched matrix products (head width 4) taking 19.8 s in bf16 against 4.6 s in fp32, and the "
    "patch-embedding convolution on PyTorch's slow bf16 conv3d kernel (4.6 s). Use bf16-mixed on CPU only where "
    "the CPU has bf16 units.",
    "Memory limit: each worker's data segment (RLIMIT_DATA: heap and private anonymous mappings, where the "
    "tensors live) was limited to --memory-share of the memory available when it started, so a step that needs "
    "more fails inside the worker and shows as *out of memory* here, instead of waking the kernel's OOM killer on "
    "the shared machine.",
    "S²DC 4 crops of 96³ on this 24 GB machine (beside a 1.2 GB job, data limit 90 % of the free memory): the official "
    "code as shipped peaked at 19.1 GB, within 0.5 GB of the limit; with anomaly detection off it ran out of the limit "
    "in two runs (an earlier run measured its peak at 17.4 GB), and so did mssl, with its defaults and with "
    "--checkpoint-activations, and our floor (the backbone passes alone). So the S²DC speed targets are measured at "
    "2 crops of 96³ (below), which needs about half the memory; at 4 crops they need a machine with more memory (a "
    "larger --memory-share was not used, to leave the other job on the shared machine room).",
    "The official S²DC code only runs with 96³ crops (its token layout hard-wires 3 bottleneck tokens per crop side) "
    "and needs at least 2 crops (its projection heads' BatchNorm normalises over the crops), so "
    "the comparison configurations use 96³ crops rather than the 64³ crops of the earlier check (the 64³ "
    "configuration is kept for mssl vs its floor). The smallest field that satisfies both is 192×96×96 with 2 crops "
    "of 96³: it is the comparison that fits this machine, every implementation (official as shipped and with anomaly "
    "detection off, mssl fp32, bf16 and checkpointed, floor) within the data limit, where the 4 crops of 96³ of "
    "field 192×192×96 left only the official as shipped within it. The official code builds square in-plane crop "
    "grids only (its data loader cuts roi_large × roi_large fields; s2dc_head.py derives the grid side from "
    "roi_large alone), so for the 2 × 1 grid the worker runs its s2dc_head.py with the grid generalised to a "
    "rectangle (roi_large_y for the y side, listed among the patches above); the operations of the step are "
    "unchanged, only the loop bounds of its token layout and its crop count. Each crop costs the same backbone "
    "passes in every implementation, so 2 crops halve the backbone work, while the per-field work (views, "
    "Sinkhorn, losses) shrinks with the token count; the ratios are not those of 4 or 16 crops, but they compare "
    "the implementations on the same work.",
]


def _new_figures(args: argparse.Namespace) -> dict:
    import monai
    import torch

    return {
        "torch": torch.__version__,
        "monai": monai.__version__,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores",
        "threads": args.threads,
        "configs": {},
        "skipped": {},
        "official": {},
        "revisions": {},
        "patches": [],
    }


def _memory_problem(figures: dict, config: str, share: float = MEMORY_SHARE) -> str | None:
    """Why `config` is skipped to keep the shared machine out of the OOM killer, or None.

    The estimate is a known peak, or the largest peak measured at a smaller crop of the same method scaled by voxels.
    """
    method, size = _split(config)
    smaller = sorted((s, c) for c in figures["configs"] for m, s in [_split(c)] if m == method and s < size)
    if config in KNOWN_PEAK_GB:
        estimate = KNOWN_PEAK_GB[config]
    elif smaller:
        runs = figures["configs"][smaller[-1][1]]["runs"].values()
        estimate = max(run["peak_rss_gb"] for run in runs if "peak_rss_gb" in run) * (size / smaller[-1][0]) ** 3
    else:
        return None
    available = available_gb()
    if estimate > share * available:
        return f"estimated peak {estimate:.1f} GB > {share:.0%} of the {available:.1f} GB available"
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--s2dc-official", type=Path, help="git checkout of github.com/Ashespt/S2DC")
    parser.add_argument("--gvsl-official", type=Path, help="git checkout of github.com/YutingHe-list/GVSL")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per configuration (after one warm-up step)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 128], help="GVSL cubic crop sides")
    parser.add_argument(
        "--s2dc-crops", nargs="+", choices=list(S2DC_CROPS), default=list(S2DC_CROPS),
        help="S²DC configurations: crop side (4 crops of it, 2 × 2 in-plane) or SIDExN (N crops of it)",
    )
    parser.add_argument(
        "--memory-share", type=float, default=MEMORY_SHARE,
        help="share of the available memory a size's estimated peak must fit in, and each worker's data limit",
    )
    parser.add_argument("--methods", nargs="+", choices=sorted(IMPLEMENTATIONS), default=sorted(IMPLEMENTATIONS))
    parser.add_argument("--threads", type=int, default=2, help="threads for every implementation")
    parser.add_argument("--note", help="what else ran on the machine meanwhile (goes into the report)")
    parser.add_argument("--keep", action="store_true", help=f"keep the other configurations already in {FIGURES.name}")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(LABELS),
        help="run only these implementations; with --keep, the other implementations' figures of a configuration stay",
    )
    parser.add_argument("--worker", choices=sorted(LABELS), help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--official", type=Path, help=argparse.SUPPRESS)
    return parser


def _checkouts(args: argparse.Namespace) -> dict[str, Path | None]:
    """The official checkouts given, each checked; a bad one stops the run with one line naming it."""
    from _official import checkout_problem

    checkouts = {"s2dc": args.s2dc_official, "gvsl": args.gvsl_official}
    for method, directory in checkouts.items():
        if directory is not None and (problem := checkout_problem(method, directory.resolve())):
            raise SystemExit(f"{OFFICIAL_OPTIONS[method]} {problem}")
    return {method: directory.resolve() if directory else None for method, directory in checkouts.items()}


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(_worker(args.worker, args.config, args.steps, args.warmup, args.official)))
        return
    checkouts = _checkouts(args)
    figures = _new_figures(args)
    command = shlex.join(["python", "benchmarks/vs_official.py", *(sys.argv[1:] if argv is None else argv)])
    if args.keep and FIGURES.is_file():
        figures = {**json.loads(FIGURES.read_text(encoding="utf-8")), "threads": args.threads}
    for method in args.methods:
        if checkouts[method]:
            figures["official"][method] = str(checkouts[method])
            figures["revisions"][method] = _revision(checkouts[method])
        if method == "s2dc":
            configs = [f"s2dc-{name}" for name in S2DC_CROPS if name in args.s2dc_crops]
        else:
            configs = [f"gvsl-{size}" for size in sorted(args.sizes)]
        for config in configs:
            memory_only = method == "gvsl" and _split(config)[1] >= MEMORY_ONLY_FROM
            if (memory_only or config in KNOWN_PEAK_GB) and (reason := _memory_problem(figures, config, args.memory_share)):
                figures["skipped"][config] = reason
                print(f"skip {config}: {reason}", flush=True)
                continue
            steps, warmup = (1, 0) if memory_only else (args.steps, 1)
            kept = figures["configs"].get(config, {}) if args.only else {}
            runs = dict(kept.get("runs", {}))
            for implementation in IMPLEMENTATIONS[method]:
                official = implementation.startswith("official")
                unavailable = not checkouts[method] or config in OFFICIAL_UNSUPPORTED
                options_here = memory_only or config in MEMORY_OPTION_CONFIGS
                if (official and unavailable) or (implementation == "floor" and memory_only) or (implementation in MEMORY_OPTIONS and not options_here):
                    continue
                if implementation in SPEED_OPTIONS and (memory_only or config in SPEED_OPTION_SKIPPED_CONFIGS):
                    continue
                if args.only and implementation not in args.only:
                    continue
                runs[implementation] = _run(implementation, config, steps, warmup, args.threads, checkouts[method] if official else None, args.memory_share)
            commands = [c for c in _commands(kept) if c != command] + [command]
            figures["configs"][config] = {"runs": runs, "steps": steps, "command": commands if len(commands) > 1 else command}
            figures["skipped"].pop(config, None)
    figures["load_note"] = args.note or "No other load was recorded for this run."
    figures["notes"] = NOTES
    figures["patches"] = sorted({p for c in figures["configs"].values() for r in c["runs"].values() for p in r.get("patches", []) + r.get("stubbed", [])})
    write_results(RESULTS, _report(figures), figures)


if __name__ == "__main__":
    main()
