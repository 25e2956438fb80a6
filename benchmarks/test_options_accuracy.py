"""options_accuracy.py's reading of metrics.csv and its verdicts; no training needed (part of the suite)."""

from __future__ import annotations

from pathlib import Path

import options_accuracy


def _losses(loss: float, ncc: float, restore: float, smooth: float) -> dict:
    return {"losses": {"loss": loss, "ncc": ncc, "restore": restore, "smooth": smooth}, "steps": [170, 179], "cpu_s": 1.0, "wall_s": 1.0, "run": "r"}


def test_final_losses_average_the_last_logged_steps_of_the_metrics_csv(tmp_path: Path):
    logs = tmp_path / "logs"
    logs.mkdir()
    rows = ["epoch,step,train/loss,train/ncc,train/restore,train/smooth,train/lr"]
    rows += [f"0,{step},{step},{2 * step},1,0.5,0.1" for step in range(20)]
    rows.insert(5, "0,3,,,,,0.1")  # a row without losses is not a logged step
    (logs / "metrics.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    found = options_accuracy.final_losses(tmp_path, "gvsl", last=4)
    assert found["steps"] == [16, 17, 18, 19]
    assert found["losses"] == {"loss": 17.5, "ncc": 35.0, "restore": 1.0, "smooth": 0.5}


def test_an_option_is_within_the_seed_spread_only_if_every_loss_moves_less_than_it():
    runs = {
        "fp32-seed0": _losses(1.0, 0.5, 0.3, 0.2),
        "fp32-seed1": _losses(1.2, 0.6, 0.3, 0.3),
        "fp32-seed2": _losses(0.9, 0.4, 0.4, 0.1),
        "bf16-mixed": _losses(1.1, 0.45, 0.35, 0.25),  # every change below max − min
        "checkpoint-activations": _losses(1.0, 0.5, 0.3, 0.5),  # smooth moved 0.3 ≥ its spread 0.2
    }
    found = options_accuracy.verdicts(runs, "gvsl")
    assert found["bf16-mixed"]["within"] and not found["checkpoint-activations"]["within"]
    assert [n for n, v in found["checkpoint-activations"]["losses"].items() if not v["within"]] == ["smooth"]
    report = options_accuracy._report({"runs": {"gvsl": runs}, "commands": ["c"], "machine": "m", "torch": "t", "load_note": ""})
    assert "`precision=\"bf16-mixed\"`: **within the seed spread**" in report
    assert "`checkpoint_activations=True`: **not within the seed spread** for smooth." in report


def test_with_a_seed_missing_the_spread_is_over_the_seeds_measured_and_says_so():
    runs = {"fp32-seed0": _losses(1.0, 0.5, 0.3, 0.2), "fp32-seed1": _losses(1.2, 0.6, 0.4, 0.3), "bf16-mixed": _losses(1.1, 0.55, 0.35, 0.25)}
    assert options_accuracy.verdicts(runs, "gvsl")["bf16-mixed"]["within"]
    report = options_accuracy._report({"runs": {"gvsl": runs}, "commands": ["c"], "machine": "m", "torch": "t", "load_note": ""})
    assert "Float32 seed(s) 2 not measured: the spread is over seeds 0, 1 only." in report
    assert options_accuracy.verdicts({"fp32-seed0": runs["fp32-seed0"], "bf16-mixed": runs["bf16-mixed"]}, "gvsl") == {}
