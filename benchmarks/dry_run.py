"""How close ``mssl pretrain --dry-run``'s projection comes to the real run it projects (CPU).

The demo's S²DC configuration (Swin fs12, window 4, a 64×128×64 field of two 64³ crops, embedded CT at
4 mm) is run twice, one process after the other with the allocator settings of DESIGN §10: first
``--dry-run`` (its projection of the whole run parsed from its output), then the real run (its
``trainer.fit`` wall time from summary.json). Results go to benchmarks/results/dry_run.md.

    python benchmarks/dry_run.py [--steps 80] [--work /tmp/mssl-dry-run-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mssl.runs import PretrainRun

ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "OMP_WAIT_POLICY": "PASSIVE"}
RESULTS = Path(__file__).resolve().parent / "results" / "dry_run.md"
PROJECTION = re.compile(r"^projection: .*≈ (?:(\d+)h )?(\d+)m (\d+)s", re.MULTILINE)
CPU_PROJECTION = re.compile(r"^process CPU time: .*≈ (?:(\d+)h )?(\d+)m (\d+)s", re.MULTILINE)


def _flags(cache: Path, steps: int) -> list[str]:
    from mssl.pipelines.demo import FULL

    swin, s2dc = FULL.swin, FULL.s2dc
    settings = {
        "backbone.feature_size": swin["feature_size"], "backbone.window_size": swin["window_size"],
        **{f"s2dc.{key}": value for key, value in s2dc.items() if key != "optim"},
        "optim.warmup_steps": s2dc["optim"]["warmup_steps"],
    }
    flags = ["--method", "s2dc", "--backbone", "swin", "--data", str(cache), "--split", "train", "--steps", str(steps),
             "--workers", "0", "--no-progress", "--checkpoint-every", str(steps + 1)]
    for key, value in settings.items():
        flags += ["--set", f"{key}={json.dumps(value)}"]
    return flags


def _run(arguments: list[str]) -> tuple[str, float, float]:
    """Output, wall seconds and CPU seconds (children) of one ``mssl`` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([str(Path(sys.executable).parent / "mssl"), *arguments], env={**os.environ, **ALLOCATOR_ENV},
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done.stdout, wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def _seconds(pattern: re.Pattern[str], output: str) -> int:
    match = pattern.search(output)
    if match is None:
        raise SystemExit(f"no {pattern.pattern!r} in the dry run's output:\n{output}")
    hours, minutes, seconds = (int(group or 0) for group in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def main() -> None:
    import mssl
    from mssl.data.demo import demo_datalist
    from mssl.data.preprocess import PresetConfig
    from mssl.pipelines.demo import FULL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--work", type=Path, default=Path("/tmp/mssl-dry-run-bench"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    cache, run = args.work / "cache", args.work / "run"
    mssl.prepare(demo_datalist(args.work / "dataset.json"), cache, PresetConfig(name="ct", spacing=FULL.spacing), progress=False)
    flags = _flags(cache, args.steps)

    load_start = os.getloadavg()[0]
    dry_output, dry_wall, dry_cpu = _run(["pretrain", *flags, "--out", str(run), "--dry-run"])
    projected, projected_cpu = _seconds(PROJECTION, dry_output), _seconds(CPU_PROJECTION, dry_output)
    left_behind = run.exists()
    _, real_wall, real_cpu = _run(["pretrain", *flags, "--out", str(run)])
    summary = json.loads(PretrainRun(run).summary.read_text(encoding="utf-8"))
    real, real_fit_cpu = summary["wall_time_s"], summary["cpu_time_s"]
    load_end = os.getloadavg()[0]

    command = "mssl pretrain " + " ".join(flags).replace(str(args.work), "WORK") + " --out WORK/run"
    lines = [line for line in dry_output.splitlines() if line.startswith(("plan:", "measured:", "dry run:", "projection:", "process CPU"))]
    RESULTS.write_text(
        "\n".join([
            "# `--dry-run` projection against the real run (CPU)",
            "",
            f"Written by `python benchmarks/dry_run.py --steps {args.steps}` on {os.cpu_count()} cores "
            f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); 1-minute load "
            f"{load_start:.1f} at the start, {load_end:.1f} at the end (other jobs shared the machine).",
            "",
            "Configuration: the demo's S²DC (Swin-UNETR fs12, window 4, a 64×128×64 field of two 64³ crops, "
            "embedded OpenKBP CT at 4 mm), workers 0, checkpoint only at the end.",
            "",
            "```",
            f"{command} --dry-run",
            f"{command}",
            "```",
            "",
            "Dry run output:",
            "",
            "```",
            *lines,
            "```",
            "",
            "| | projected (dry run) | real (`summary.json`, `trainer.fit`) | ratio projected / real |",
            "|---|---|---|---|",
            f"| wall time, s | {projected} | {real:.1f} | {projected / real:.3f} |",
            f"| process CPU time, s | {projected_cpu} | {real_fit_cpu:.1f} | {projected_cpu / real_fit_cpu:.3f} |",
            "",
            "| whole process | wall s | CPU s |",
            "|---|---|---|",
            f"| `--dry-run` | {dry_wall:.1f} | {dry_cpu:.1f} |",
            f"| real run | {real_wall:.1f} | {real_cpu:.1f} |",
            "",
            f"Run folder left behind by the dry run: {'yes' if left_behind else 'none'}.",
            "",
        ]),
        encoding="utf-8",
    )
    print(RESULTS.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
