"""Label-efficiency benchmark on OpenKBP (CT) plus the cross-modality check on IXI (MRI).

Runs (or resumes) ``mssl.benchmark`` with benchmarks/label_efficiency_{openkbp,ixi}.yaml, then writes
benchmarks/results/label_efficiency.md with both tables, the budgets, the wall times and the machine,
and copies the PNG curves next to it. Start it with the allocator settings set before Python starts:

    env MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 OMP_WAIT_POLICY=PASSIVE \
        nohup python benchmarks/label_efficiency.py > runs/label_efficiency.log 2>&1 &

Every stage (pre-training, fine-tuning, evaluation, probe) writes its result to disk and is skipped when
it exists, so a rerun resumes. On several cores, run one process per method (``--methods gvsl
--threads 1`` and so on, each stream pre-trains then fine-tunes its own method), then one call without
``--methods`` that finds everything done and writes the report.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import yaml

from mssl.runs import PretrainRun

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPORT = RESULTS / "label_efficiency.md"
ALLOCATOR_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "OMP_WAIT_POLICY")


def _config(name: str) -> dict:
    """A benchmark YAML; its ``data`` path is relative to this folder (../../shared/data beside the clone)."""
    config = yaml.safe_load((HERE / f"label_efficiency_{name}.yaml").read_text(encoding="utf-8"))
    config["data"] = str((HERE / config["data"]).resolve())
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-ixi", action="store_true", help="only the OpenKBP benchmark")
    parser.add_argument("--methods", help="comma-separated subset of the configs' methods: one stream of a parallel run (no report)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads of this process (default: torch's choice)")
    args = parser.parse_args()

    import torch

    from mssl.pipelines.benchmark import benchmark

    if args.threads:
        torch.set_num_threads(args.threads)
    subset = {"methods": args.methods.split(",")} if args.methods else {}
    start = time.perf_counter()
    openkbp = _config("openkbp")
    benchmark(**{**openkbp, **subset})
    sections = [("OpenKBP (CT): pre-training and fine-tuning on the same modality", Path(openkbp["out"]), "openkbp")]
    if not args.skip_ixi:
        ixi = _config("ixi")
        exports = {m: Path(openkbp["out"]) / "pretrain" / m / "export" / "encoder.safetensors" for m in ixi["methods"] if m != "scratch"}
        benchmark(**{**ixi, **subset}, runs=exports)
        sections.append(("IXI (T1 MRI): the CT-pretrained encoders against scratch", Path(ixi["out"]), "ixi"))
    if subset:
        print(f"stream {args.methods} finished; run without --methods to write {REPORT}")
        return
    minutes = (time.perf_counter() - start) / 60

    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Label efficiency: what pre-training is worth with few labels",
        "",
        "Command (from the repository root):",
        "",
        "```",
        "env MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 OMP_WAIT_POLICY=PASSIVE \\",
        "    python benchmarks/label_efficiency.py",
        "```",
        "",
        "This run used one stream per method on the 2 cores (`--methods scratch|gvsl|s2dc --threads 1`, each stream "
        "pre-training then fine-tuning its own method), then the command above, which found every stage done and wrote this file.",
        "Configs: `benchmarks/label_efficiency_{openkbp,ixi}.yaml` (budgets, sizes, classes).",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch {torch.__version__}; "
        f"allocator env set: {all(v in os.environ for v in ALLOCATOR_ENV)}. "
        "Three streams shared two cores, so the wall times below are those of a process with about two thirds of a core.",
        f"Wall time of this call: {minutes:.1f} min (stages finished by an earlier call are reused, not re-timed).",
        "",
    ]
    for title, out, tag in sections:
        body = (out / "benchmark.md").read_text(encoding="utf-8").split("\n", 1)[1]  # drop its own title
        picture = RESULTS / f"label_efficiency_{tag}.png"
        shutil.copyfile(out / "label_efficiency.png", picture)
        lines += [f"## {title}", "", body.replace("](label_efficiency.png)", f"]({picture.name})"), ""]
        pretrainings = [PretrainRun(folder).summary for folder in sorted((out / "pretrain").glob("*"))]
        pretrainings = [p for p in pretrainings if p.is_file()]
        if pretrainings:
            walls = ", ".join(f"{p.parent.name} {json.loads(p.read_text(encoding='utf-8'))['wall_time_s'] / 60:.1f} min" for p in pretrainings)
            lines += [f"Pre-training wall time: {walls}.", ""]
    REPORT.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
