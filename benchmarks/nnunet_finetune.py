"""Stock nnU-Net v2 from scratch vs from an mssl GVSL / S²DC pre-trained ResEnc: OpenKBP, few labels, CPU.

With benchmarks/nnunet_finetune.yaml, every stage a separate process whose CPU time (user + system, its
children included) is recorded:

1. the k labelled training cases (each contouring every class) and the test cases as an nnU-Net raw
   dataset (``mssl.data.nnunet_raw``); the train + validation CTs as an mssl cache (``mssl prepare``);
2. ``mssl pretrain --method gvsl`` and ``--method s2dc`` on nnU-Net's ResidualEncoderUNet, then
   ``mssl export --format nnunet``;
3. nnU-Net's fingerprint and plans, ``mssl nnunet-plans`` (the ResEnc, the spacing and patch of the
   config), nnU-Net's preprocessing with those plans: one plans file for every arm;
4. per arm (scratch, gvsl, s2dc) and seed: nnU-Net's trainer (benchmarks/nnunet_trainers, the budget of
   the config) with or without ``-pretrained_weights``, nnU-Net's predictor on the test cases and its
   evaluation (Dice per class on each case's own grid).

Finished stages are skipped on a rerun (the record is ``cpu_seconds.json`` in the work folder), so a
killed run resumes. Each finished (arm, seed) cell is archived as one JSON in
benchmarks/results/nnunet_finetune/ and benchmarks/results/nnunet_finetune.md is written from that
archive (plus benchmarks/nnunet_finetune_notes.md), so the report survives a fresh clone.
``--smoke`` runs the config's ``smoke`` values (a few steps and iterations, 2 test cases) in
runs/nnunet_finetune_smoke and archives and reports there only:

    env OMP_WAIT_POLICY=PASSIVE nohup python benchmarks/nnunet_finetune.py > runs/nnunet_finetune.log 2>&1 &
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mssl.viz.tables import mean_std

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BIN = Path(sys.executable).parent  # mssl's and nnU-Net's command-line scripts of this environment
STAGE = HERE / "nnunet_stage.py"
PLANS = "nnUNetPlans_mssl"
METHODS = ("gvsl", "s2dc")


def merge(base: dict, override: dict) -> dict:
    return {**base, **{k: merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v for k, v in override.items()}}


class Bench:
    """One budget of the benchmark: its work folder, the stages done there and their CPU seconds."""

    def __init__(self, config: dict, smoke: bool):
        self.config = config
        budget = config["nnunet"]
        # what every cell shares, named, plus a hash of the rest: a changed config never reuses stale stages
        shared = {key: value for key, value in config.items() if key not in ("arms", "seeds")}
        digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:6]
        self.tag = f"k{config['k']}_pre{config['pretrain']['steps']}_e{budget['epochs']}x{budget['iterations']}_{digest}"
        self.root = Path("runs/nnunet_finetune_smoke" if smoke else "runs/nnunet_finetune").resolve()
        self.work = self.root / self.tag
        self.archive = self.root / "archive" if smoke else RESULTS / "nnunet_finetune"
        self.report = self.root / "nnunet_finetune.md" if smoke else RESULTS / "nnunet_finetune.md"
        self.dataset = f"Dataset{config['dataset_id']:03d}_OpenKBP"
        self.cpu_file = self.work / "cpu_seconds.json"
        self.work.mkdir(parents=True, exist_ok=True)
        self.cpu = json.loads(self.cpu_file.read_text(encoding="utf-8")) if self.cpu_file.is_file() else {}

    def nnunet_env(self, results: Path | None = None, **extra: str) -> dict[str, str]:
        threads = str(self.config["threads"])
        return {
            **os.environ,
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "nnUNet_raw": str(self.work / "nnUNet_raw"),
            "nnUNet_preprocessed": str(self.work / "nnUNet_preprocessed"),
            "nnUNet_results": str(results or self.work / "nnUNet_results"),
            "nnUNet_extTrainer": str(HERE / "nnunet_trainers"),
            "nnUNet_compile": "false",
            "nnUNet_n_proc_DA": "1",  # nnU-Net's planner refuses 0; training sets 0 (augmentation in-process)
            **extra,
        }

    def stage(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        """Run ``command`` unless ``name`` finished before; record its CPU seconds (children included)."""
        if name in self.cpu:
            return
        logs = self.work / "logs"
        logs.mkdir(exist_ok=True)
        log = logs / f"{name}.log"
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(command)}", flush=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with log.open("w", encoding="utf-8") as out:
            code = subprocess.run(command, env=env or self.nnunet_env(), stdout=out, stderr=subprocess.STDOUT).returncode
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if code != 0:
            raise SystemExit(f"{name} failed (exit {code}); see {log}:\n" + "".join(log.read_text(encoding="utf-8").splitlines(True)[-15:]))
        self.done(name, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)

    def done(self, name: str, cpu_seconds: float) -> None:
        self.cpu[name] = round(cpu_seconds, 1)
        self.cpu_file.write_text(json.dumps(self.cpu, indent=1), encoding="utf-8")


def select_cases(config: dict) -> tuple[list, list, list, list[str]]:
    """(k labelled training cases, test cases, unlabelled pre-training cases, the source class names)."""
    from mssl.downstream.datasets import labelled_subset, load_dataset

    data = load_dataset(HERE / config["data"])
    classes = set(config["classes"])

    def contours_all(case) -> bool:  # no present_labels: the datalist says every organ is contoured
        return classes <= set(case.extra.get("present_labels", classes))

    train = labelled_subset([c for c in data.splits["train"] if contours_all(c)], config["k"], config["case_seed"])
    test = sorted((c for c in data.splits["test"] if contours_all(c)), key=lambda c: c.case_id)[: config["test_cases"]]
    if len(test) < config["test_cases"]:
        raise SystemExit(f"{data.path}: only {len(test)} test cases contour {sorted(classes)}; asked for {config['test_cases']}")
    unlabelled = sorted(data.splits["train"] + data.splits["validation"], key=lambda c: c.case_id)[: config["pretrain_cases"]]
    return train, test, unlabelled, data.class_names


def prepare_data(bench: Bench) -> None:
    from mssl.data.nnunet_raw import write_raw_dataset

    config = bench.config
    train, test, unlabelled, class_names = select_cases(config)
    if "raw_dataset" not in bench.cpu:
        start = time.process_time()
        write_raw_dataset(bench.work / "nnUNet_raw" / bench.dataset, train, class_names, config["classes"], test=test)
        bench.done("raw_dataset", time.process_time() - start)
    datalist = bench.work / "pretrain_datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": str(c.image)} for c in unlabelled]}, indent=1), encoding="utf-8")
    spacing = ",".join(str(s) for s in config["spacing"])
    bench.stage("prepare", [str(BIN / "mssl"), "prepare", str(datalist), "--out", str(bench.work / "cache"), "--preset", "ct", "--spacing", spacing])


def pretrain(bench: Bench, method: str) -> Path:
    config = bench.config
    run = bench.work / "pretrain" / method
    settings = merge(config["pretrain"]["common"], config["pretrain"]["methods"][method])
    settings = merge(settings, {
        "method": method,
        "backbone": {"name": "resenc", "nnunet": config["network"]},
        "data": {"cache": str(bench.work / "cache")},
        "trainer": {"max_steps": config["pretrain"]["steps"]},
        "out": str(run),
    })
    settings_file = bench.work / f"pretrain_{method}.yaml"
    settings_file.write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    env = bench.nnunet_env()
    bench.stage(f"pretrain_{method}", [str(BIN / "mssl"), "pretrain", "--config", str(settings_file)], env)
    bench.stage(f"export_{method}", [str(BIN / "mssl"), "export", str(run), "--format", "nnunet"], env)
    return run / "export" / "nnunet_pretrained.pth"


def plan(bench: Bench, weights: dict[str, Path]) -> None:
    """nnU-Net's fingerprint and plans, the mssl plans (ResEnc, spacing, patch), preprocessing with them."""
    from mssl.weights.nnunet_plans import plans_spacing

    dataset_id = str(bench.config["dataset_id"])
    bench.stage("fingerprint", [str(BIN / "nnUNetv2_extract_fingerprint"), "-d", dataset_id, "-np", "1"])
    bench.stage("plan", [str(BIN / "nnUNetv2_plan_experiment"), "-d", dataset_id])
    folder = bench.work / "nnUNet_preprocessed" / bench.dataset
    source = json.loads((folder / "nnUNetPlans.json").read_text(encoding="utf-8"))
    spacing = ",".join(str(s) for s in plans_spacing(bench.config["spacing"], source["transpose_forward"]))
    patch = ",".join(str(p) for p in bench.config["patch_size"])
    first = weights[METHODS[0]]
    command = [str(BIN / "mssl"), "nnunet-plans", "--dataset", dataset_id, "--weights", str(first), "--plans-name", PLANS, "--spacing", spacing, "--patch-size", patch]
    bench.stage("nnunet_plans", command)
    architectures = {m: json.loads((w.parent / "nnunet_plans.json").read_text(encoding="utf-8"))["configurations"] for m, w in weights.items()}
    if len({json.dumps(a, sort_keys=True) for a in architectures.values()}) != 1:
        raise SystemExit(f"the exports of {', '.join(weights)} describe different networks; one plans file cannot serve every arm")
    bench.stage("preprocess", [str(BIN / "nnUNetv2_preprocess"), "-d", dataset_id, "-plans_name", PLANS, "-c", "3d_fullres", "-np", "1"])


def archived(bench: Bench, arm: str, seed: int) -> Path:
    return bench.archive / f"{bench.tag}_{arm}_seed{seed}.json"


def run_cell(bench: Bench, arm: str, seed: int, weights: dict[str, Path]) -> None:
    """Train, predict and score one arm and seed; archive its figures."""
    config, budget = bench.config, bench.config["nnunet"]
    if archived(bench, arm, seed).is_file():
        return
    cell = f"{arm}_seed{seed}"
    results, predictions = bench.work / "nnUNet_results" / cell, bench.work / "predictions" / cell
    threads, trainer, dataset_id = str(config["threads"]), budget["trainer"], str(config["dataset_id"])
    budget_env = {"MSSL_NNUNET_EPOCHS": str(budget["epochs"]), "MSSL_NNUNET_ITERATIONS": str(budget["iterations"]),
                  "MSSL_NNUNET_VAL_ITERATIONS": str(budget["val_iterations"]), "MSSL_NNUNET_SEED": str(seed)}
    env = bench.nnunet_env(results, nnUNet_n_proc_DA="0", **budget_env)
    pretrained = [] if arm == "scratch" else [str(weights[arm])]
    bench.stage(f"train_{cell}", [sys.executable, str(STAGE), "train", dataset_id, PLANS, trainer, threads, *pretrained], env)
    raw = bench.work / "nnUNet_raw" / bench.dataset
    tta = "1" if budget["tta"] else "0"
    bench.stage(f"predict_{cell}", [sys.executable, str(STAGE), "predict", dataset_id, PLANS, trainer, threads, str(raw / "imagesTs"), str(predictions), tta], env)
    summary = predictions / "summary.json"
    labels = [str(i) for i in range(1, len(config["classes"]) + 1)]
    bench.stage(f"evaluate_{cell}", [str(BIN / "nnUNetv2_evaluate_simple"), str(raw / "labelsTs"), str(predictions), "-l", *labels, "-np", "1", "-o", str(summary)], env)

    scores = json.loads(summary.read_text(encoding="utf-8"))
    per_class = {name: scores["mean"][str(i)]["Dice"] for i, name in enumerate(config["classes"], start=1)}
    per_case = {Path(c["prediction_file"]).name.split(".")[0]: {name: c["metrics"][str(i)]["Dice"] for i, name in enumerate(config["classes"], start=1)} for c in scores["metric_per_case"]}
    shared = ["raw_dataset", "prepare", "fingerprint", "plan", "nnunet_plans", "preprocess"]
    record = {
        "arm": arm, "seed": seed, "tag": bench.tag,
        "config": {key: config[key] for key in ("k", "case_seed", "test_cases", "spacing", "threads", "network", "patch_size", "nnunet", "pretrain_cases")}
        | {"pretrain_steps": config["pretrain"]["steps"]},
        "test_dice": per_class, "mean_dice": float(np.mean(list(per_class.values()))), "per_case_dice": per_case,
        "cpu_seconds": {stage: bench.cpu[f"{stage}_{cell}"] for stage in ("train", "predict", "evaluate")}
        | ({} if arm == "scratch" else {"pretrain": bench.cpu[f"pretrain_{arm}"], "export": bench.cpu[f"export_{arm}"]}),
        "shared_cpu_seconds": {stage: bench.cpu[stage] for stage in shared},
        "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()})",
    }
    bench.archive.mkdir(parents=True, exist_ok=True)
    archived(bench, arm, seed).write_text(json.dumps(record, indent=1), encoding="utf-8")


def _mean_std(values: list[float]) -> str:
    mean, std, count = mean_std(values)
    return f"{mean:.3f}" + (f" ± {std:.3f}" if count > 1 else "")


def write_report(bench: Bench) -> None:
    records = [json.loads(f.read_text(encoding="utf-8")) for f in sorted(bench.archive.glob("*.json"))]
    classes = bench.config["classes"]
    lines = [
        "# nnU-Net v2 fine-tuning: from scratch vs from an mssl pre-trained ResEnc (OpenKBP, few labels, CPU)",
        "",
        "Command: `python benchmarks/nnunet_finetune.py` with `benchmarks/nnunet_finetune.yaml`. Stock nnU-Net v2 "
        "(its fingerprint, planner, preprocessing, trainer, predictor and evaluation); every arm trains from the same "
        "plans file (`mssl nnunet-plans`: nnU-Net's ResidualEncoderUNet of the config, its spacing and patch) with the "
        "same trainer, iterations, threads and seeds, with or without `-pretrained_weights`. Test Dice per class on "
        "each test case's own grid (nnU-Net's evaluation), mean ± std over seeds. CPU minutes = user + system time of "
        "the stage's processes; pre-training is an extra cost of the pre-trained arms. Only finished cells are listed.",
        "",
    ]
    for tag in sorted({r["tag"] for r in records}):
        group = [r for r in records if r["tag"] == tag]
        setup = group[0]["config"]
        budget = setup["nnunet"]
        lines += [
            f"## {tag}",
            "",
            f"k = {setup['k']} labelled cases (case seed {setup['case_seed']}), {setup['test_cases']} test cases, spacing "
            f"{setup['spacing']} mm (x, y, z), patch {setup['patch_size']}, ResEnc {setup['network']['features_per_stage']}; "
            f"{budget['epochs']} epochs × {budget['iterations']} iterations (+ {budget['val_iterations']} validation "
            f"iterations per epoch), test-time mirroring {'on' if budget['tta'] else 'off'}; pre-training "
            f"{setup['pretrain_steps']} steps per method on {setup['pretrain_cases'] or 'all'} train + validation CTs; "
            f"{setup['threads']} thread(s); {group[0]['machine']}.",
            "",
            f"| arm | seeds | {' | '.join(classes)} | mean Dice | CPU min: train | predict | pre-train + export |",
            f"|---|---|{'---|' * len(classes)}---|---|---|---|",
        ]
        for arm in bench.config["arms"]:
            rows = [r for r in group if r["arm"] == arm]
            if not rows:
                continue
            def cpu(stages: list[str], rows: list[dict] = rows) -> str:  # CPU minutes of these stages, over seeds
                return _mean_std([sum(r["cpu_seconds"].get(s, 0.0) for s in stages) / 60 for r in rows])

            lines.append(
                f"| {arm} | {', '.join(str(r['seed']) for r in rows)} | "
                + " | ".join(_mean_std([r["test_dice"][c] for r in rows]) for c in classes)
                + f" | {_mean_std([r['mean_dice'] for r in rows])} | {cpu(['train'])} | {cpu(['predict'])} | "
                + ("–" if arm == "scratch" else cpu(["pretrain", "export"])) + " |"
            )
        shared = group[0]["shared_cpu_seconds"]
        lines += ["", "Shared stages (CPU min): " + ", ".join(f"{k} {v / 60:.1f}" for k, v in shared.items()) + ".", ""]
    notes = HERE / "nnunet_finetune_notes.md"
    if notes.is_file():  # the hand-written reading of the figures survives reruns
        lines.append(notes.read_text(encoding="utf-8"))
    bench.report.parent.mkdir(parents=True, exist_ok=True)
    bench.report.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {bench.report}")


def load_config(smoke: bool) -> dict[str, Any]:
    config = yaml.safe_load((HERE / "nnunet_finetune.yaml").read_text(encoding="utf-8"))
    smoke_values = config.pop("smoke", {})
    return merge(config, smoke_values) if smoke else config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the config's smoke values, in runs/nnunet_finetune_smoke (nothing in results/)")
    parser.add_argument("--only", action="append", help="ARM:SEED (e.g. scratch:0); repeatable; default: every arm and seed")
    parser.add_argument("--report-only", action="store_true", help="write the report from archived cells, run nothing")
    args = parser.parse_args()
    bench = Bench(load_config(args.smoke), args.smoke)
    if not args.report_only:
        cells = [(arm, seed) for arm in bench.config["arms"] for seed in bench.config["seeds"]]
        if args.only:
            cells = [cell for cell in cells if f"{cell[0]}:{cell[1]}" in args.only]
        prepare_data(bench)
        weights = {method: pretrain(bench, method) for method in METHODS}
        plan(bench, weights)
        for arm, seed in cells:
            run_cell(bench, arm, seed, weights)
    write_report(bench)


if __name__ == "__main__":
    main()
