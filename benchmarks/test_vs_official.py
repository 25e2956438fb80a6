"""The parts of vs_official.py that are ours: report, verdicts, checkout validation, memory guard and limit, the
MatchLoss stand-in.

No official code and no measurement needed; part of the suite (pyproject's testpaths include benchmarks/).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import vs_official
from _measure import WorkerOutOfMemory, run_worker
from _official import REPOSITORIES, S2DC_RECTANGULAR_GRID, SOURCES, STAND_INS, match_loss_module, match_loss_terms, substituted_source


def _run(cpu: float, peak: float) -> dict:
    return {"median_cpu_s": cpu, "cpu_times_s": [cpu, cpu + 1.0], "median_s": 2 * cpu, "peak_rss_gb": peak, "warmup": 1}


def _figures(official: dict | None = None) -> dict:
    official = official or {}
    command = "python benchmarks/vs_official.py"
    configs = {
        "s2dc-64": {"runs": {"floor": _run(1.0, 1.5), "ours": _run(2.0, 2.0)}, "steps": 2, "command": command},
        "s2dc-96": {"runs": {"floor": _run(10.0, 2.0), "ours": _run(20.0, 3.0), **official.get("s2dc", {})}, "steps": 2, "command": command},
        "gvsl-64": {"runs": {"floor": _run(15.0, 2.5), "ours": _run(28.0, 2.9), **official.get("gvsl", {})}, "steps": 2, "command": command},
    }
    return {
        "threads": 2,
        "machine": "x86_64, 2 CPU cores",
        "torch": "2.13.0+cpu",
        "monai": "1.6.1",
        "load_note": "",
        "configs": configs,
        "skipped": {},
        "official": {m: f"/checkouts/{m}" for m in official},
        "revisions": {m: "abc1234" for m in official},
        "patches": ["torch.Tensor.cuda is a no-op"] if official else [],
    }


def _row(report: str, start: str) -> str:
    return next(line for line in report.splitlines() if line.startswith(start))


def test_without_checkouts_the_report_keeps_ours_vs_floor_and_says_how_to_add_the_official_columns():
    report = vs_official._report(_figures())
    assert _row(report, "| our floor").split(" | ")[1:3] == ["1.00", "1.00, 2.00"]  # S²DC 64³ comes first
    floor_ratio = _row(report, "| our floor").split(" | ")[-1]
    assert floor_ratio == "0.50 |"
    assert _row(report, "| mssl |").split(" | ")[1] == "2.00"
    assert report.count("| official, as shipped | not given |") == 2  # S²DC 96³ and GVSL 64³
    assert report.count("| official, as shipped | cannot run this configuration: its token layout") == 1  # S²DC 64³
    assert "| official, anomaly detection off | not given |" in report
    assert "`python benchmarks/vs_official.py --s2dc-official DIR --gvsl-official DIR`" in report
    verdict = _row(report, "| GVSL, U-Net 32–512, 64³ pair, batch 1: official CPU s/step")
    assert verdict.endswith("| — | not measured: official checkout not given (--gvsl-official) |")


def test_verdicts_compare_each_ratio_with_its_target():
    official = {
        "gvsl": {"official": _run(42.0, 2.6)},  # 42 / 28 = 1.5: met (≥ 1.5)
        "s2dc": {"official": _run(37.0, 4.0), "official-anomaly-off": _run(23.4, 3.5)},  # 1.85 < 2; 1.17 < 1.3
    }
    report = vs_official._report(_figures(official))
    assert _row(report, "| GVSL, U-Net 32–512, 64³ pair, batch 1: official CPU").endswith("| 1.50 | **met** |")
    s2dc = "| S²DC, field 192×192×96, 4 crops of 96³, feature size 12, window 7: official CPU s/step ÷ mssl"
    assert _row(report, f"{s2dc} (official, as shipped)").endswith("| 1.85 | **not met** |")
    assert _row(report, f"{s2dc} (official, anomaly").endswith("| 1.17 | **not met** |")
    assert "not given" not in report
    assert "/checkouts/gvsl" in report and "none of its code is vendored" in report


def test_a_failed_official_run_is_reported_not_dropped():
    report = vs_official._report(_figures({"gvsl": {"official": {"error": "gvsl.py: out of memory"}}}))
    assert "| official, as shipped | failed: gvsl.py: out of memory |" in report
    assert _row(report, "| GVSL, U-Net 32–512, 64³ pair, batch 1: official CPU").endswith("| not measured: gvsl.py: out of memory |")


@pytest.mark.parametrize("method", ["s2dc", "gvsl"])
def test_a_directory_that_is_not_a_checkout_stops_with_one_line_naming_it_and_the_missing_file(tmp_path: Path, method: str):
    source, files = SOURCES[method]
    for name in files[:-1]:  # all but the last required file
        (tmp_path / source / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / source / name).write_text("", encoding="utf-8")
    with pytest.raises(SystemExit) as stop:
        vs_official.main([f"--{method}-official", str(tmp_path)])
    message = str(stop.value)
    assert message == f"--{method}-official {tmp_path}: not a checkout of {REPOSITORIES[method]} (missing {source}/{files[-1]})"
    assert "\n" not in message


def test_a_complete_checkout_passes_validation(tmp_path: Path):
    source, files = SOURCES["gvsl"]
    for name in files:
        (tmp_path / source / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / source / name).write_text("", encoding="utf-8")
    args = vs_official._parser().parse_args(["--gvsl-official", str(tmp_path)])
    assert vs_official._checkouts(args) == {"s2dc": None, "gvsl": tmp_path.resolve()}


def test_a_size_is_skipped_when_its_known_or_scaled_peak_would_not_fit(monkeypatch: pytest.MonkeyPatch):
    figures = _figures({"gvsl": {"official": _run(30.0, 3.0)}})  # largest peak at 64³: 3.0 GB
    monkeypatch.setattr(vs_official, "available_gb", lambda: 25.0)
    assert vs_official._memory_problem(figures, "gvsl-128") == "estimated peak 24.0 GB > 80% of the 25.0 GB available"  # 3 × 8 > 0.8 × 25
    monkeypatch.setattr(vs_official, "available_gb", lambda: 31.0)
    assert vs_official._memory_problem(figures, "gvsl-128") is None  # 24 ≤ 0.8 × 31
    assert vs_official._memory_problem(figures, "s2dc-96") is None  # known peak 17.5 ≤ 0.8 × 31
    monkeypatch.setattr(vs_official, "available_gb", lambda: 20.0)
    assert vs_official._memory_problem(figures, "s2dc-96") == "estimated peak 17.5 GB > 80% of the 20.0 GB available"  # not 2.0 × (96/64)³


def test_the_memory_target_is_set_against_each_of_our_memory_options():
    figures = _figures({"gvsl": {"official": _run(30.0, 3.0)}})
    runs = {"ours": _run(80.0, 19.0), "official": _run(90.0, 18.0), "ours-checkpointed": _run(95.0, 15.3), "ours-checkpointed-bf16": {"error": "out of memory: x"}}
    figures["configs"]["gvsl-128"] = {"runs": runs, "steps": 1, "command": "python benchmarks/vs_official.py"}
    report = vs_official._report(figures)
    target = "| GVSL, U-Net 32–512, 128³ pair, batch 1 (peak memory, one step): "
    assert _row(report, f"{target}mssl peak RSS ÷ official").endswith("| 1.06 | **not met** |")  # 19 / 18
    assert _row(report, f"{target}mssl, --checkpoint-activations peak RSS").endswith("| 0.85 | **not met** |")  # 15.3 / 18
    bf16 = _row(report, f"{target}mssl, --checkpoint-activations --precision bf16-mixed peak RSS")
    assert bf16.endswith("| — | not measured: out of memory: x |")
    assert "| mssl, --checkpoint-activations | 95.00 |" in report
    runs["ours-checkpointed-bf16"] = _run(400.0, 10.7)
    report = vs_official._report(figures)
    assert _row(report, f"{target}mssl, --checkpoint-activations --precision bf16-mixed peak RSS").endswith("| 0.59 | **met** |")  # 10.7 / 18


def test_the_memory_share_can_be_raised_for_the_guard(monkeypatch: pytest.MonkeyPatch):
    figures = _figures()
    monkeypatch.setattr(vs_official, "available_gb", lambda: 21.0)
    assert vs_official._memory_problem(figures, "s2dc-96") == "estimated peak 17.5 GB > 80% of the 21.0 GB available"
    assert vs_official._memory_problem(figures, "s2dc-96", 0.9) is None  # 17.5 ≤ 18.9
    assert vs_official._parser().parse_args(["--memory-share", "0.9"]).memory_share == 0.9
    assert vs_official._parser().parse_args([]).memory_share == 0.8


def test_a_worker_over_its_memory_limit_fails_as_a_clean_out_of_memory_row(monkeypatch: pytest.MonkeyPatch):
    # a 64³ GVSL step needs about 3 GB; its worker gets 0.7 GB (70 % of a pretended 1 GB available) and must fail
    # on its own, reported as out of memory, rather than grow until the kernel's OOM killer steps in
    monkeypatch.setattr(vs_official, "available_gb", lambda: 1.0)
    result = vs_official._run("ours", "gvsl-64", 1, 0, 1, None, memory_share=0.7)
    assert result == {"error": "out of memory: needed more than its 0.7 GB limit (70% of the 1.0 GB available)"}


def test_a_worker_failing_for_another_reason_is_not_called_out_of_memory(tmp_path: Path):
    script = tmp_path / "fails.py"
    script.write_text("raise ValueError('not a memory problem')\n", encoding="utf-8")
    with pytest.raises(RuntimeError) as failure:
        run_worker(str(script), [], memory_limit_gb=2.0)
    assert not isinstance(failure.value, WorkerOutOfMemory)
    assert str(failure.value) == "fails.py  failed: ValueError: not a memory problem"


def test_an_s2dc_checkout_without_losses_utils_passes_and_gets_the_stand_in(tmp_path: Path):
    source, files = SOURCES["s2dc"]
    assert "losses/utils.py" not in files and STAND_INS["s2dc"] == ("losses/utils.py",)
    for name in files:
        (tmp_path / source / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / source / name).write_text("", encoding="utf-8")
    args = vs_official._parser().parse_args(["--s2dc-official", str(tmp_path)])
    assert vs_official._checkouts(args) == {"s2dc": tmp_path.resolve(), "gvsl": None}


def test_the_match_loss_stand_in_is_the_specified_formula_on_a_hand_checked_case():
    torch = pytest.importorskip("torch")
    plan = torch.tensor([[0.5, 0.25], [0.125, 1.0]], dtype=torch.float64)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # Y = 1 at (0,0) and (1,1): mean(−log 0.5, −log(1 − 1e-6)) (1.0 is clamped to 1 − 1e-6) = (0.6931472 + 0.000001) / 2
    # Y = 0 at (0,1) and (1,0): mean(−log 0.75, −log 0.875) = (0.2876821 + 0.1335314) / 2
    expected_pos, expected_neg = 0.3465741, 0.2106067
    for loss, pos, neg in (match_loss_terms(plan, labels), match_loss_module().MatchLoss()(plan[None], labels[None])):
        assert pos.item() == pytest.approx(expected_pos, abs=1e-7)
        assert neg.item() == pytest.approx(expected_neg, abs=1e-7)
        assert loss.item() == pytest.approx(expected_pos + expected_neg, abs=1e-7)
    loss, pos, neg = match_loss_terms(plan, torch.ones_like(plan))  # no Y = 0 entry: the negative term is 0
    assert neg.item() == 0.0 and pos.item() == pytest.approx((0.6931472 + 1.3862944 + 2.0794415 + 0.000001) / 4, abs=1e-7)


def _recorded_s2dc_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, list]:
    """An empty S²DC checkout and a recorded vs_official.json in tmp_path; workers replaced by a recorder of the
    (implementation, configuration) calls. Returns the recorded figures and the calls list."""
    import json

    source, files = SOURCES["s2dc"]
    for name in files:
        (tmp_path / "S2DC" / source / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "S2DC" / source / name).write_text("", encoding="utf-8")
    figures = _figures({"s2dc": {"official": _run(37.0, 4.0)}})
    (tmp_path / "vs_official.json").write_text(json.dumps(figures), encoding="utf-8")
    monkeypatch.setattr(vs_official, "FIGURES", tmp_path / "vs_official.json")
    monkeypatch.setattr(vs_official, "RESULTS", tmp_path / "vs_official.md")
    monkeypatch.setattr(vs_official, "available_gb", lambda: 100.0)
    calls: list = []
    monkeypatch.setattr(vs_official, "_run", lambda implementation, config, *rest: calls.append((implementation, config)) or _run(9.25, 9.0))
    return figures, calls


def test_only_adds_the_named_implementations_to_a_kept_configuration(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import json

    figures, calls = _recorded_s2dc_results(tmp_path, monkeypatch)
    vs_official.main(["--keep", "--methods", "s2dc", "--s2dc-crops", "96", "--only", "ours-checkpointed", "--s2dc-official", str(tmp_path / "S2DC")])
    assert calls == [("ours-checkpointed", "s2dc-96")]
    entry = json.loads((tmp_path / "vs_official.json").read_text(encoding="utf-8"))["configs"]["s2dc-96"]
    assert sorted(entry["runs"]) == ["floor", "official", "ours", "ours-checkpointed"]
    assert entry["runs"]["official"] == figures["configs"]["s2dc-96"]["runs"]["official"]
    assert len(entry["command"]) == 2 and "--only ours-checkpointed" in entry["command"][1]
    report = (tmp_path / "vs_official.md").read_text(encoding="utf-8")
    s2dc = "| S²DC, field 192×192×96, 4 crops of 96³, feature size 12, window 7: official CPU s/step ÷ mssl, --checkpoint-activations"
    assert _row(report, f"{s2dc} (official, as shipped)").endswith("| 4.00 | **met** |")  # 37 / 9.25


def test_the_bf16_speed_option_runs_at_the_speed_configurations_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(vs_official, "FIGURES", tmp_path / "vs_official.json")
    monkeypatch.setattr(vs_official, "RESULTS", tmp_path / "vs_official.md")
    monkeypatch.setattr(vs_official, "available_gb", lambda: 1000.0)
    calls = []
    monkeypatch.setattr(vs_official, "_run", lambda implementation, config, *rest: calls.append((implementation, config)) or _run(9.25, 0.1))
    vs_official.main(["--sizes", "64", "128", "--s2dc-crops", "64", "96"])
    bf16 = sorted(config for implementation, config in calls if implementation == "ours-bf16")
    assert bf16 == ["gvsl-64", "s2dc-64"]  # not the GVSL memory-only size, nor S²DC 96³ (mssl out of memory there)


def test_the_gvsl_speed_target_is_also_set_against_mssl_with_bf16():
    figures = _figures({"gvsl": {"official": _run(42.0, 2.6)}})
    figures["configs"]["gvsl-64"]["runs"]["ours-bf16"] = _run(21.0, 2.0)
    report = vs_official._report(figures)
    assert _row(report, "| GVSL, U-Net 32–512, 64³ pair, batch 1: official CPU s/step ÷ mssl, --precision bf16-mixed").endswith("| 2.00 | **met** |")
    assert _row(report, "| mssl, --precision bf16-mixed |").split(" | ")[1] == "21.00"


def test_the_two_crop_s2dc_configuration_is_described_and_carries_the_speed_targets_against_mssl_and_mssl_bf16():
    assert vs_official._describe("s2dc-96x2") == "S²DC, field 192×96×96, 2 crops of 96³, feature size 12, window 7"
    assert vs_official._s2dc("s2dc-96x2") == ((192, 96, 96), 96) and vs_official._split("s2dc-96x2") == ("s2dc", 96)
    figures = _figures({"s2dc": {"official": _run(37.0, 4.0)}})
    runs = {"ours": _run(20.0, 8.5), "ours-bf16": _run(10.0, 9.0), "official": _run(41.0, 10.2), "official-anomaly-off": _run(24.0, 10.1)}
    figures["configs"]["s2dc-96x2"] = {"runs": runs, "steps": 3, "command": "python benchmarks/vs_official.py"}
    report = vs_official._report(figures)
    target = "| S²DC, field 192×96×96, 2 crops of 96³, feature size 12, window 7: official CPU s/step ÷ "
    assert _row(report, f"{target}mssl (official, as shipped) ≥ 2.0").endswith("| 2.05 | **met** |")  # 41 / 20
    assert _row(report, f"{target}mssl (official, anomaly detection off) ≥ 1.3").endswith("| 1.20 | **not met** |")  # 24 / 20
    assert _row(report, f"{target}mssl, --precision bf16-mixed (official, as shipped) ≥ 2.0").endswith("| 4.10 | **met** |")
    assert _row(report, f"{target}mssl, --precision bf16-mixed (official, anomaly detection off) ≥ 1.3").endswith("| 2.40 | **met** |")
    # the 4-crop configuration keeps its own rows, and the 2-crop table comes right after it
    assert _row(report, "| S²DC, field 192×192×96, 4 crops of 96³, feature size 12, window 7: official CPU s/step ÷ mssl (official, as shipped)")
    tables = [line for line in report.splitlines() if line.startswith("### S²DC")]
    assert tables == [f"### {vs_official._describe(c)}" for c in ("s2dc-64", "s2dc-96", "s2dc-96x2")]


def test_the_two_crop_configuration_runs_every_s2dc_implementation_and_keep_merges_it_with_the_recorded_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import json

    figures, calls = _recorded_s2dc_results(tmp_path, monkeypatch)
    assert vs_official._parser().parse_args([]).s2dc_crops == ["64", "96", "96x2"]
    vs_official.main(["--keep", "--methods", "s2dc", "--s2dc-crops", "96x2", "--s2dc-official", str(tmp_path / "S2DC")])
    assert calls == [(implementation, "s2dc-96x2") for implementation in vs_official.IMPLEMENTATIONS["s2dc"]]
    kept = json.loads((tmp_path / "vs_official.json").read_text(encoding="utf-8"))["configs"]
    assert kept["s2dc-96"] == figures["configs"]["s2dc-96"] and kept["s2dc-64"] == figures["configs"]["s2dc-64"]
    assert sorted(kept["s2dc-96x2"]["runs"]) == sorted(vs_official.IMPLEMENTATIONS["s2dc"])


def test_the_official_grid_substitutions_apply_once_each_and_refuse_a_file_they_were_not_written_for():
    lines = [old for old, _, times in S2DC_RECTANGULAR_GRID for _ in range(times)]
    patched = substituted_source("\n".join(lines), S2DC_RECTANGULAR_GRID, "s2dc_head.py").splitlines()
    assert patched == [new for _, new, times in S2DC_RECTANGULAR_GRID for _ in range(times)]
    with pytest.raises(RuntimeError, match="s2dc_head.py: expected 1 occurrence"):
        substituted_source("\n".join(lines[1:]), S2DC_RECTANGULAR_GRID, "s2dc_head.py")
