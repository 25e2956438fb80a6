"""Keep-largest-component choices side by side on one finished fine-tuning run (issue 11: SpinalCord's HD95).

For a run of benchmarks/finetune_convergence.py, predicts its validation and test cases once (test-time
mirroring, on each case's own grid, as `mssl evaluate`), then scores the test cases under each choice of
classes to reduce to their largest connected component: none, every class, the run's stored choice, and the
choice the current rule (mssl.downstream.postprocess) makes on the run's validation cases.

    python benchmarks/postprocessing_candidates.py runs/finetune_convergence/v3/openkbp_k10_steps2000_seed2 \
        --data ../shared/data/openkbp/dataset.json --classes Brainstem SpinalCord RightParotid LeftParotid Mandible

Writes benchmarks/results/postprocessing_candidates.md (one section per run, kept across runs of the script).
The current rule decides here on the validation cases' own grids; `mssl finetune` decides on the preprocessed
grid, so the two can differ on a close call (the table says which choice each made).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from mssl.downstream.config import EvaluateConfig
from mssl.downstream.datasets import load_dataset
from mssl.downstream.evaluate import case_reference, predict_case
from mssl.downstream.metrics import segmentation_metrics
from mssl.downstream.postprocess import MAX_CASE_LOSS, choose_postprocessing, keep_largest_component, selected_classes
from mssl.downstream.run_files import load_finetuned

RESULTS = Path(__file__).resolve().parent / "results" / "postprocessing_candidates.md"


def predictions(network, description, cases, class_names):
    """Per case: (raw label map on its own grid, reference label map, spacing, present classes)."""
    out = []
    for case in cases:
        raw, item = predict_case(network, case, description, class_names, overlap=EvaluateConfig.model_fields["sw_overlap"].default, mirror_axes=description.get("mirror_axes", []))
        label, spacing, _ = case_reference(case, raw.shape)
        out.append((torch.from_numpy(raw.astype(np.int64)), label, spacing, item["present"]))
        print(f"predicted {case.case_id}", flush=True)
    return out


def scores(cases, classes, num_classes):
    """(cases, classes) Dice and HD95 arrays of the cases with ``classes`` reduced to their largest component."""
    dice, hd95 = [], []
    for raw, label, spacing, present in cases:
        metrics = segmentation_metrics(keep_largest_component(raw, classes), label, num_classes, spacing, present)
        dice.append(metrics.dice)
        hd95.append(metrics.hd95)
    return np.stack(dice), np.stack(hd95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--classes", nargs="+", help="classes to report (default: every trained class)")
    parser.add_argument("--test-cases", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)

    network, description = load_finetuned(args.run)
    class_names = description["class_names"]
    dataset = load_dataset(args.data)
    by_id = {c.case_id: c for split in dataset.splits.values() for c in split}
    if not description["validation_cases"]:
        raise SystemExit(f"{args.run}: the run has no validation cases to decide on")
    validation = predictions(network, description, [by_id[i] for i in description["validation_cases"]], class_names)
    test = predictions(network, description, sorted(dataset.splits["test"], key=lambda c: c.case_id)[: args.test_cases], class_names)

    trained = [c for c in range(1, len(class_names)) if description["trained_classes"][c]]
    reported = [class_names.index(n) for n in args.classes] if args.classes else trained
    decisions = choose_postprocessing(
        [raw for raw, *_ in validation], lambda p, i: segmentation_metrics(p, validation[i][1], len(class_names), validation[i][2], validation[i][3], with_hd95=False).dice, trained
    )
    choices = {
        "none": [],
        "every class": trained,
        "the run's stored choice": [class_names.index(n) for n in description.get("postprocessing", {}).get("classes", [])],
        f"the current rule on validation (no case loses more than {MAX_CASE_LOSS})": selected_classes(decisions),
    }
    lines = [
        f"## `{args.run.as_posix()}` ({len(validation)} validation, {len(test)} test cases)",
        "",
        f"Test Dice / HD95 (mm) per class, mean over the cases that contour it; the mean row averages the classes. "
        f"Command: `python benchmarks/postprocessing_candidates.py {args.run} --data {args.data}"
        + (f" --classes {' '.join(args.classes)}`" if args.classes else "`"),
        "",
        "| choice | keep-largest-component for | " + " | ".join(class_names[c] for c in reported) + " | mean |",
        "|---|---|" + "---|" * (len(reported) + 1),
    ]
    for name, classes in choices.items():
        dice, hd95 = scores(test, classes, len(class_names))
        cells = [f"{np.nanmean(dice[:, c - 1]):.3f} / {np.nanmean(hd95[:, c - 1]):.1f}" for c in reported]
        mean = f"{np.mean([np.nanmean(dice[:, c - 1]) for c in reported]):.3f} / {np.mean([np.nanmean(hd95[:, c - 1]) for c in reported]):.1f}"
        lines.append(f"| {name} | {', '.join(class_names[c] for c in classes) or 'none'} | " + " | ".join(cells) + f" | **{mean}** |")
    lines += [
        "",
        "Validation evidence (mean Dice without / with keep-largest-component, worst per-case change):",
        "",
        *(
            f"- {class_names[c]}: {d.without:.3f} → {d.with_:.3f} (worst case {d.worst_case_change:+.3f}): "
            + ("applied" if d.applies else "not applied")
            for c, d in decisions.items()
        ),
        "",
    ]
    section = "\n".join(lines)
    print(section)
    previous = RESULTS.read_text(encoding="utf-8") if RESULTS.is_file() else "# Keep-largest-component choices on finished fine-tuning runs\n\n"
    head, marker = previous, f"## `{args.run.as_posix()}`"
    if marker in previous:  # replace this run's section, keep the others
        before, rest = previous.split(marker, 1)
        after = rest.split("\n## ", 1)[1] if "\n## " in rest else ""
        head = before + ("## " + after if after else "")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(head.rstrip("\n") + "\n\n" + section, encoding="utf-8")


if __name__ == "__main__":
    main()
