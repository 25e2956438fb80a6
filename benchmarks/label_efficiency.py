"""Label-efficiency benchmark on OpenKBP (CT) plus the cross-modality check on IXI (MRI).

Runs (or resumes) ``mssl.benchmark`` with benchmarks/label_efficiency_{openkbp,ixi}.yaml, then writes
benchmarks/results/label_efficiency.md with both tables, the budgets, the wall time and the machine,
and copies the PNG curves next to it. Start it before Python starts with the allocator settings:

    env MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 OMP_WAIT_POLICY=PASSIVE \
        nohup python benchmarks/label_efficiency.py > runs/label_efficiency.log 2>&1 &

Re-running skips every finished stage (pre-training, fine-tuning, evaluation, probe).
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
    parser.add_argument("--with-long", action="store_true", help="also the longer OpenKBP budget (label_efficiency_openkbp_long.yaml)")
    args = parser.parse_args()

    import torch

    from mssl.downstream.benchmark import benchmark

    start = time.perf_counter()
    openkbp = _config("openkbp")
    benchmark(**openkbp)
    sections = [("OpenKBP (CT): pre-training and fine-tuning on the same modality", Path(openkbp["out"]), "openkbp")]
    if args.with_long:
        longer = _config("openkbp_long")
        benchmark(**longer)
        sections.append(("OpenKBP (CT) at a longer budget", Path(longer["out"]), "openkbp_long"))
    if not args.skip_ixi:
        ixi = _config("ixi")
        exports = {m: Path(openkbp["out"]) / "pretrain" / m / "export" / "encoder.safetensors" for m in ixi["methods"] if m != "scratch"}
        benchmark(**ixi, runs=exports)
        sections.append(("IXI (T1 MRI): the CT-pretrained encoders against scratch", Path(ixi["out"]), "ixi"))
    minutes = (time.perf_counter() - start) / 60

    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Label efficiency: what pre-training is worth with few labels",
        "",
        "Command (from the repository root):",
        "",
        "```",
        "env MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 OMP_WAIT_POLICY=PASSIVE \\",
        "    python benchmarks/label_efficiency.py --with-long",
        "```",
        "",
        "Configs: `benchmarks/label_efficiency_{openkbp,openkbp_long,ixi}.yaml` (budgets, sizes, classes); `--with-long` adds the longer budget.",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads; allocator env set: {all(v in os.environ for v in ALLOCATOR_ENV)}. "
        "Other engineers' jobs were running on the same 2 cores, so wall times are upper bounds.",
        f"Wall time of this call: {minutes:.1f} min (stages finished by an earlier call are reused, not re-timed).",
        "",
    ]
    for title, out, tag in sections:
        body = (out / "benchmark.md").read_text(encoding="utf-8").split("\n", 1)[1]  # drop its own title
        picture = RESULTS / f"label_efficiency_{tag}.png"
        shutil.copyfile(out / "label_efficiency.png", picture)
        lines += [f"## {title}", "", body.replace("](label_efficiency.png)", f"]({picture.name})"), ""]
        pretrainings = sorted((out / "pretrain").glob("*/summary.json"))
        if pretrainings:
            walls = ", ".join(f"{p.parent.name} {json.loads(p.read_text(encoding='utf-8'))['wall_time_s'] / 60:.1f} min" for p in pretrainings)
            lines += [f"Pre-training wall time: {walls}.", ""]
    REPORT.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {REPORT}")


if __name__ == "__main__":
    main()
