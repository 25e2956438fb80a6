"""Cost before the run: plan, measured time per step with a fake clock, ETA, projection, plain progress lines."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mssl.train.cost import MEASURED_STEPS, WARMUP_STEPS, CostReporter, ParameterCount, Projection, RunPlan, StepTimer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_parameter_count_splits_trainable_and_frozen() -> None:
    network = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))  # 16 + 10 parameters
    network[1].requires_grad_(False)
    assert ParameterCount.of(network) == ParameterCount(trainable=16, frozen=10)


def test_plan_counts_crops_and_voxels_per_step() -> None:
    plan = RunPlan(ParameterCount(1_500_000, 0), {(64, 64, 64): 2, (32, 32, 16): 4}, planned_steps=100_000, devices=8)
    assert plan.crops_per_step == 6 and plan.voxels_per_step == 2 * 64**3 + 4 * 32 * 32 * 16
    text = plan.describe()
    assert "1.50 M trainable, 0 frozen" in text and "2 × 64×64×64 + 4 × 32×32×16" in text
    assert "100,000 steps on 8 devices" in text and "per device" in text


def test_timer_skips_warmup_and_keeps_validation_apart() -> None:
    clock = FakeClock()
    timer = StepTimer(warmup_steps=2, clock=clock)
    for seconds in (9.0, 5.0, 2.0, 2.0):  # two slow warm-up steps, then 2 s steps
        clock.now += seconds
        timer.step_done()
    with timer.paused():
        clock.now += 30.0  # a validation between steps
    clock.now += 2.0
    timer.step_done()
    assert timer.warmup_seconds == 14.0 and timer.measured_steps == 3
    assert timer.seconds_per_step == pytest.approx(2.0) and timer.seconds_per_pause == pytest.approx(30.0)


def test_projection_arithmetic_and_data_parallel_assumption() -> None:
    projection = Projection(steps=1000, seconds_per_step=2.0, warmup_steps=2, warmup_seconds=10.0, validations=11, seconds_per_validation=30.0)
    assert projection.total_seconds == pytest.approx(10.0 + 998 * 2.0 + 11 * 30.0)
    assert "≈ 38m 56s" in projection.describe()
    several = Projection(steps=1000, seconds_per_step=2.0, devices=4)
    assert several.total_seconds == 2000.0  # same time per step on each device
    assert "on 4 devices" in several.describe() and "250 steps" in several.describe() and "ideal data-parallel" in several.describe()


def _reporter(clock: FakeClock, out: list[str], **options) -> CostReporter:
    plan = RunPlan(ParameterCount(10, 5), {(8, 8, 8): 1}, planned_steps=options.pop("planned_steps", 100))
    return CostReporter(plan, torch.device("cpu"), emit=out.append, clock=clock, **options)


def test_reporter_prints_plan_then_measured_cost_with_eta_and_peak_memory() -> None:
    clock, lines = FakeClock(), []
    reporter = _reporter(clock, lines, lines=False, every_steps=10, every_seconds=60.0)
    reporter.start()
    assert lines == [reporter.plan.describe()]
    for step in range(1, WARMUP_STEPS + MEASURED_STEPS + 1):
        clock.now += 1.5
        reporter.step_done(step, dict)
    assert reporter.measured and len(lines) == 2
    remaining = 100 - WARMUP_STEPS - MEASURED_STEPS
    assert lines[1].startswith("measured: 1.500 s/step · ETA ") and "peak RSS" in lines[1]
    assert f"ETA {remaining * 3 // 2 // 60}m" in lines[1]
    projection = reporter.projection()
    assert projection.total_seconds == pytest.approx(100 * 1.5)


def test_progress_lines_every_n_steps_or_s_seconds() -> None:
    clock, lines = FakeClock(), []
    reporter = _reporter(clock, lines, lines=True, every_steps=4, every_seconds=10.0, planned_steps=20)
    reporter.start()
    steps_with_line = []
    for step in range(1, 21):
        clock.now += 1.0
        before = len(lines)
        reporter.step_done(step, lambda: {"loss": 0.5, "lr": 1e-3})
        if any(line.startswith("step ") for line in lines[before:]):
            steps_with_line.append(step)
    assert steps_with_line == [4, 8, 12, 16, 20]
    clock2, lines2 = FakeClock(), []
    slow = _reporter(clock2, lines2, lines=True, every_steps=100, every_seconds=8.0, planned_steps=30)
    slow.start()
    for step in range(1, 8):
        clock2.now += 4.0
        slow.step_done(step, lambda: {"loss": 0.25, "lr": 2e-4})
    progress = [line for line in lines2 if line.startswith("step ")]
    assert progress[0] == "step 2/30 · loss 0.2500 · lr 2.000e-04 · timing after warm-up"  # 8 s since the start
    assert progress[1] == "step 4/30 · loss 0.2500 · lr 2.000e-04 · 4.000 s/step · ETA 1m 44s"


def test_eta_counts_the_validations_still_to_come() -> None:
    clock, lines = FakeClock(), []
    reporter = _reporter(clock, lines, lines=False, every_steps=100, every_seconds=1e9, planned_steps=25, validate_every=10)
    assert [reporter.validations_after(s) for s in (0, 9, 10, 20, 24, 25)] == [3, 3, 2, 1, 1, 0]
    reporter.start()
    for step in range(1, 8):
        clock.now += 1.0
        reporter.step_done(step, dict)
        if step == 3:
            with reporter.paused():
                clock.now += 20.0
    assert reporter.timer.seconds_per_step == pytest.approx(1.0)
    assert "ETA 1m 18s" in lines[-1]  # 18 steps × 1 s + 3 validations × 20 s
