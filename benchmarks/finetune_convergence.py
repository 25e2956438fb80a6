"""Does fine-tuning from scratch converge? The recipe of `mssl finetune` on OpenKBP and IXI at a CPU budget.

Runs (or resumes) every (dataset, k, seed) cell of benchmarks/finetune_convergence.yaml at the step budget
B (and 2B with ``--double``: converged means doubling changes test Dice by < 0.01), evaluates each on the
test split, and writes benchmarks/results/finetune_convergence.md: per-class test Dice, HD95 and NSD per
cell (mean ± std over seeds), the B vs 2B comparison, CPU minutes per run and the validation curves.
Each finished cell's figures are archived in benchmarks/results/finetune_convergence/ (the run folders
under runs/ are not kept), and the report is written from that archive, so it survives a fresh clone.
A finished cell is skipped, so ``--only openkbp:10:0`` style subsets can be run one at a time, and
``--steps N`` sets the budget B for this invocation and ``--recipe TAG`` the recipe (``v3_gvsl``: the same
recipe from pre-trained weights, the comparison pre-training has to win):

    env MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 OMP_WAIT_POLICY=PASSIVE \\
        nohup python benchmarks/finetune_convergence.py --only openkbp:10:0 > runs/finetune_convergence.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from pathlib import Path

import yaml

from mssl.runs import FinetuneRun
from mssl.viz.tables import mean_std

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPORT = RESULTS / "finetune_convergence.md"
ARCHIVE = RESULTS / "finetune_convergence"  # one JSON per finished cell: its result.json and test summary
TEST = "test"  # the split each cell is scored on
OUT = Path("runs/finetune_convergence")  # + the config's recipe tag: runs of different recipes never mix


def _cells(config: dict, double: bool) -> list[tuple[str, int | None, int, int]]:
    budgets = [config["steps"], 2 * config["steps"]] if double else [config["steps"]]
    return [(r["dataset"], r["k"], seed, steps) for r in config["runs"] for seed in r["seeds"] for steps in budgets]


def _folder(recipe: str, dataset: str, k: int | None, seed: int, steps: int) -> Path:
    return OUT / recipe / dataset / f"k{'all' if k is None else k}" / f"steps{steps}" / f"seed{seed}"


def _archived(recipe: str, dataset: str, k: int | None, seed: int, steps: int) -> Path:
    return ARCHIVE / f"{recipe}_{dataset}_k{'all' if k is None else k}_steps{steps}_seed{seed}.json"


def archive_cell(recipe: str, dataset: str, k: int | None, seed: int, steps: int, out: Path) -> None:
    """Keep what the report needs from a finished run folder: figures, the per-case scores and the curve picture."""
    run = FinetuneRun(out)
    record = {
        "result": json.loads(run.result.read_text(encoding="utf-8")),
        "test": json.loads(run.evaluation(TEST).summary.read_text(encoding="utf-8")),
    }
    target = _archived(recipe, dataset, k, seed, steps)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=1), encoding="utf-8")
    shutil.copyfile(run.curve, target.with_suffix(".png"))
    shutil.copyfile(run.evaluation(TEST).per_case, target.with_suffix(".csv"))  # case-level reasons (HD95 outliers)


def run_cell(config: dict, dataset: str, k: int | None, seed: int, steps: int) -> Path:
    """Fine-tune, evaluate and archive one cell unless it is archived already."""
    import mssl

    if _archived(config["recipe"], dataset, k, seed, steps).is_file():
        return _folder(config["recipe"], dataset, k, seed, steps)
    spec = config["datasets"][dataset]
    data = str((HERE / spec["data"]).resolve())
    out = _folder(config["recipe"], dataset, k, seed, steps)
    if not FinetuneRun(out).result.is_file():
        recipe = {**config["finetune"], **config["recipes"][config["recipe"]]}
        if "weights" in recipe:  # a pre-trained arm: the export's path is relative to this folder
            recipe["weights"] = str((HERE / recipe["weights"]).resolve())
        mssl.finetune(data=data, labels=k, seed=seed, steps=steps, spacing=tuple(config["spacing"][dataset]), out=out, **recipe)
    if not FinetuneRun(out).evaluation(TEST).summary.is_file():
        mssl.evaluate(run=out, data=data, split=TEST, max_cases=spec["test_cases"], classes=spec["classes"])
    archive_cell(config["recipe"], dataset, k, seed, steps, out)
    return out


def _mean_std(values: list[float], digits: int = 3) -> str:
    mean, std, count = mean_std(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if count else "–"


def write_report(config: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    import torch

    lines = [
        "# Fine-tuning from scratch: does the recipe converge at a CPU budget?",
        "",
        "Command: `python benchmarks/finetune_convergence.py [--steps N] [--double] [--only DATASET:K:SEED]` with "
        "`benchmarks/finetune_convergence.yaml` (network, spacing, patch budget, optimiser, validation).",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch {torch.__version__}. "
        "Test Dice / HD95 (mm) / NSD (2 mm) on each case's own grid after test-time mirroring and the run's "
        "keep-largest-component choice (every cell archived by 2026-12-06 05:40 UTC refused any per-case validation loss; since, a loss up to 0.1 is allowed); mean over classes, then mean ± std over seeds. Only finished cells are listed.",
        "",
        "| recipe | dataset | k | steps | seeds | test Dice | without post-processing | HD95 (mm) | NSD | best val step | converged (val plateau) | CPU min / run |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    per_class_rows, curves = [], []
    budgets = sorted({int(f.stem.split("_steps")[1].split("_")[0]) for f in ARCHIVE.glob("*.json")})
    cells = [(recipe, run, steps) for recipe in config["recipes"] for run in config["runs"] for steps in budgets]
    for recipe, run, steps in cells:
        done = [f for seed in run["seeds"] if (f := _archived(recipe, run["dataset"], run["k"], seed, steps)).is_file()]
        if not done:
            continue
        records = [json.loads(f.read_text(encoding="utf-8")) for f in done]
        summaries, results = [r["test"] for r in records], [r["result"] for r in records]
        k = "all" if run["k"] is None else run["k"]
        lines.append(
            f"| {recipe} | {run['dataset']} | {k} | {steps} | {len(done)} | {_mean_std([s['scores']['mean_dice'] for s in summaries])} | "
            f"{_mean_std([s.get('scores_without_postprocessing', {}).get('mean_dice', float('nan')) for s in summaries])} | "
            f"{_mean_std([s['scores']['mean_hd95'] for s in summaries], 1)} | {_mean_std([s['scores']['mean_nsd'] for s in summaries])} | "
            f"{', '.join(str(r['best_step']) for r in results)} | {', '.join('yes' if r['converged'] else 'no' for r in results)} | "
            f"{', '.join(str(round(r['cpu_seconds'] / 60)) for r in results)} |"
        )
        for name in summaries[0]["per_class"]:
            per_class_rows.append(
                f"| {recipe} | {run['dataset']} | {k} | {steps} | {name} | {_mean_std([s['per_class'][name]['dice'] for s in summaries])} | "
                f"{_mean_std([s['per_class'][name]['hd95'] for s in summaries], 1)} | {_mean_std([s['per_class'][name]['nsd'] for s in summaries])} |"
            )
        for f in done:
            seed = f.stem.rsplit("_", 1)[1]
            curves.append(f"![{recipe} {run['dataset']} k={k} {steps} steps {seed}]({ARCHIVE.name}/{f.with_suffix('.png').name})")
    lines += [
        "",
        "## Per class",
        "",
        "| recipe | dataset | k | steps | class | Dice | HD95 (mm) | NSD |",
        "|---|---|---|---|---|---|---|---|",
        *per_class_rows,
        "",
        "## Validation curves (loss; validation Dice mean and per class, step 0 = the initial network)",
        "",
        *curves,
        "",
    ]
    notes = HERE / "finetune_convergence_notes.md"
    if notes.is_file():  # the hand-written reading of the figures survives reruns
        lines += [notes.read_text(encoding="utf-8")]
    REPORT.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {REPORT}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--double", action="store_true", help="also run every cell at twice the step budget")
    parser.add_argument("--only", action="append", help="DATASET:K:SEED (K = all for the whole split); repeatable")
    parser.add_argument("--report-only", action="store_true", help="write the report from finished cells, train nothing")
    parser.add_argument("--steps", type=int, help="the step budget B of this invocation (default: the config's)")
    parser.add_argument("--recipe", help="the recipe tag to train (default: the config's `recipe`)")
    args = parser.parse_args()
    config = yaml.safe_load((HERE / "finetune_convergence.yaml").read_text(encoding="utf-8"))
    if args.steps:
        config["steps"] = args.steps
    if args.recipe:
        if args.recipe not in config["recipes"]:
            parser.error(f"--recipe {args.recipe}: not in finetune_convergence.yaml's recipes ({', '.join(config['recipes'])})")
        config["recipe"] = args.recipe
    if not args.report_only:
        wanted = {tuple(o.split(":")) for o in args.only} if args.only else None
        for dataset, k, seed, steps in _cells(config, args.double):
            if wanted is None or (dataset, "all" if k is None else str(k), str(seed)) in wanted:
                run_cell(config, dataset, k, seed, steps)
    write_report(config)


if __name__ == "__main__":
    main()
