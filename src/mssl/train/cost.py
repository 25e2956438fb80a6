"""What a run costs, said before it runs and again once its first steps are measured.

One reporter for ``mssl pretrain`` (through a Lightning callback) and ``mssl finetune`` (its Fabric
loops): the plan (parameters trainable / frozen, crops and voxels per step, planned steps) at the start;
after :data:`WARMUP_STEPS` + :data:`MEASURED_STEPS` steps the time per step, an ETA and the peak memory;
without a progress bar, one plain line every N steps or S seconds (step, losses, lr, s/step, ETA); and,
for ``--dry-run``, a projection of the whole run from those measured steps.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import torch
from torch import nn

WARMUP_STEPS = 2  # the first steps pay for lazy initialisation, allocator growth and worker start: not timed
MEASURED_STEPS = 5  # timed steps behind the first estimate; a dry run stops after WARMUP_STEPS + MEASURED_STEPS
DATA_PARALLEL_ASSUMPTION = "ideal data-parallel scaling: each device runs its own batch at the measured time per step"

Emit = Callable[[str], None]
Clock = Callable[[], float]


def print_line(text: str) -> None:
    """A plain line on stdout, flushed at once so a redirected log shows it now, not at exit."""
    print(text, flush=True)


@dataclass(frozen=True)
class ParameterCount:
    trainable: int
    frozen: int

    @classmethod
    def of(cls, module: nn.Module) -> "ParameterCount":
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        return cls(trainable, sum(p.numel() for p in module.parameters()) - trainable)


@dataclass(frozen=True)
class RunPlan:
    """What one run will do. ``crops`` maps each crop shape to how many one optimiser step reads per device."""

    parameters: ParameterCount
    crops: Mapping[tuple[int, ...], int]
    planned_steps: int
    devices: int = 1

    @property
    def crops_per_step(self) -> int:
        return sum(self.crops.values())

    @property
    def voxels_per_step(self) -> int:
        return sum(count * math.prod(shape) for shape, count in self.crops.items())

    def describe(self) -> str:
        shapes = " + ".join(f"{count} × {'×'.join(map(str, shape))}" for shape, count in self.crops.items())
        per_device = " per device" if self.devices > 1 else ""
        return (
            f"plan: parameters {_count(self.parameters.trainable)} trainable, {_count(self.parameters.frozen)} frozen · "
            f"per step{per_device}: {self.crops_per_step} crop{'s' if self.crops_per_step != 1 else ''} ({shapes}), {_count(self.voxels_per_step)} voxels · "
            f"{self.planned_steps:,} steps" + (f" on {self.devices} devices" if self.devices > 1 else "")
        )


def peak_memory(device: torch.device) -> str:
    """The process's peak memory so far: CUDA's peak allocation on a GPU, else the peak resident set (RSS)."""
    if device.type == "cuda":
        return f"peak CUDA memory {_bytes(torch.cuda.max_memory_allocated(device))}"
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kibibytes on Linux
    return f"peak RSS {_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)}"


class StepTimer:
    """Wall time per optimiser step after the warm-up steps; time spent in :meth:`paused` blocks
    (validation) is kept apart, so neither inflates the other's estimate."""

    def __init__(self, warmup_steps: int = WARMUP_STEPS, clock: Clock = time.perf_counter) -> None:
        self.warmup_steps = warmup_steps
        self.clock = clock
        self.steps = 0
        self.warmup_seconds = 0.0
        self.step_seconds = 0.0
        self.pauses: list[float] = []
        self._since = clock()

    def step_done(self) -> None:
        now = self.clock()
        self.steps += 1
        if self.steps <= self.warmup_steps:
            self.warmup_seconds += now - self._since
        else:
            self.step_seconds += now - self._since
        self._since = now

    @contextmanager
    def paused(self) -> Iterator[None]:
        begin = self.clock()
        try:
            yield
        finally:
            end = self.clock()
            self.pauses.append(end - begin)
            self._since += end - begin

    @property
    def measured_steps(self) -> int:
        return max(0, self.steps - self.warmup_steps)

    @property
    def seconds_per_step(self) -> float | None:
        return self.step_seconds / self.measured_steps if self.measured_steps else None

    @property
    def seconds_per_pause(self) -> float | None:
        return sum(self.pauses) / len(self.pauses) if self.pauses else None


@dataclass(frozen=True)
class Projection:
    """The whole run extrapolated from measured steps (and a measured validation, when there are validations)."""

    steps: int
    seconds_per_step: float
    warmup_steps: int = 0
    warmup_seconds: float = 0.0
    validations: int = 0
    seconds_per_validation: float = 0.0
    devices: int = 1

    @property
    def total_seconds(self) -> float:
        timed_steps = max(0, self.steps - self.warmup_steps)
        warmup = self.warmup_seconds * min(self.steps, self.warmup_steps) / max(1, self.warmup_steps)
        return warmup + timed_steps * self.seconds_per_step + self.validations * self.seconds_per_validation

    def describe(self) -> str:
        validations = (
            f" + {self.validations} validations × {self.seconds_per_validation:.2f} s" if self.validations else ""
        )
        text = (
            f"projection: {self.steps:,} steps × {self.seconds_per_step:.3f} s/step (after {self.warmup_steps} warm-up steps "
            f"of {self.warmup_seconds:.1f} s){validations} ≈ {format_duration(self.total_seconds)} on this machine"
        )
        if self.devices > 1:
            text += (
                f"; on {self.devices} devices about the same time for {self.devices}× the crops, "
                f"or {format_duration(self.total_seconds / self.devices)} for the same crops at {math.ceil(self.steps / self.devices):,} steps "
                f"(assumes {DATA_PARALLEL_ASSUMPTION}, each device as fast as this one)"
            )
        return text


class CostReporter:
    """Says the plan, the measured cost and (without a progress bar) one plain progress line at a time.

    Call :meth:`start` before the first step and :meth:`step_done` after every optimiser step; wrap
    validation in :meth:`paused`. ``lines``: print progress lines (a log file, or ``--no-progress``);
    ``validate_every``: steps between validations (validation at each multiple and at the last step),
    so the ETA counts the validations still to come. Process CPU time is timed alongside wall time: on a
    shared machine it says what the run needs whatever else runs.
    """

    def __init__(
        self,
        plan: RunPlan,
        device: torch.device,
        lines: bool,
        every_steps: int,
        every_seconds: float,
        validate_every: int | None = None,
        emit: Emit = print_line,
        clock: Clock = time.perf_counter,
        cpu_clock: Clock = time.process_time,
    ) -> None:
        self.plan, self.device, self.lines, self.validate_every = plan, device, lines, validate_every
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.emit, self.clock, self.cpu_clock = emit, clock, cpu_clock
        self.timer, self.cpu_timer = StepTimer(clock=clock), StepTimer(clock=cpu_clock)
        self._last_line: tuple[int, float] = (0, clock())

    def start(self, first_step: int = 0) -> None:
        """Print the plan and start the clock; ``first_step``: where a resumed run starts."""
        self.emit(self.plan.describe())
        self.timer, self.cpu_timer = StepTimer(clock=self.clock), StepTimer(clock=self.cpu_clock)
        self._last_line = (first_step, self.clock())

    @property
    def measured(self) -> bool:
        """Enough steps timed for an estimate (what a dry run waits for)."""
        return self.timer.measured_steps >= MEASURED_STEPS

    @contextmanager
    def paused(self) -> Iterator[None]:
        with ExitStack() as stack:
            for timer in (self.timer, self.cpu_timer):
                stack.enter_context(timer.paused())
            yield

    def step_done(self, step: int, values: Callable[[], Mapping[str, float]]) -> None:
        """``step``: steps completed so far; ``values``: the losses and lr to show (only called when a line is due)."""
        self.timer.step_done()
        self.cpu_timer.step_done()
        now = self.clock()
        if self.timer.measured_steps == MEASURED_STEPS:
            self.emit(f"measured: {self.timer.seconds_per_step:.3f} s/step · ETA {self._eta(step)} · {peak_memory(self.device)}")
        last_step, last_time = self._last_line
        due = step - last_step >= self.every_steps or now - last_time >= self.every_seconds or step == self.plan.planned_steps
        if self.lines and due:
            self._last_line = (step, now)
            self.emit(self.progress_line(step, values()))

    def progress_line(self, step: int, values: Mapping[str, float]) -> str:
        shown = " · ".join(f"{name} {value:.3e}" if name == "lr" else f"{name} {value:.4f}" for name, value in values.items())
        speed = self.timer.seconds_per_step
        timing = f"{speed:.3f} s/step · ETA {self._eta(step)}" if speed is not None else "timing after warm-up"
        return f"step {step}/{self.plan.planned_steps} · {shown} · {timing}"

    def projection(self, validations: int = 0, cpu: bool = False) -> Projection:
        """The planned run extrapolated from the steps (and pauses) measured so far, in wall or (``cpu``) process CPU seconds."""
        timer = self.cpu_timer if cpu else self.timer
        if timer.seconds_per_step is None:
            raise RuntimeError(f"no step measured yet (the first {WARMUP_STEPS} are warm-up)")
        return Projection(
            steps=self.plan.planned_steps,
            seconds_per_step=timer.seconds_per_step,
            warmup_steps=timer.warmup_steps,
            warmup_seconds=timer.warmup_seconds,
            validations=validations,
            seconds_per_validation=timer.seconds_per_pause or 0.0,
            devices=self.plan.devices,
        )

    def dry_run_report(self, validations: int = 0) -> Projection:
        """Print what a dry run measured and the projection of the planned run; returns the (wall-time) projection."""
        projection = self.projection(validations)
        cpu = self.projection(validations, cpu=True)
        self.emit(f"dry run: {self.timer.steps} steps run ({self.timer.warmup_steps} warm-up), {peak_memory(self.device)}")
        self.emit(projection.describe())
        self.emit(
            f"process CPU time: {cpu.seconds_per_step:.3f} CPU-s/step, ≈ {format_duration(cpu.total_seconds)} for the run "
            "(all threads; wall time above depends on what else runs on the machine)"
        )
        return projection

    def validations_after(self, step: int) -> int:
        """Validations still to run after ``step``: at each multiple of ``validate_every`` and at the last step."""
        every, planned = self.validate_every, self.plan.planned_steps
        if not every or step >= planned:
            return 0
        return planned // every - step // every + (1 if planned % every else 0)

    def _eta(self, step: int) -> str:
        steps = max(0, self.plan.planned_steps - step) * (self.timer.seconds_per_step or 0.0)
        return format_duration(steps + self.validations_after(step) * (self.timer.seconds_per_pause or 0.0))


def format_duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {seconds:02d}s" if hours else f"{minutes}m {seconds:02d}s"


def _count(value: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.2f} {unit}"
    return str(value)


def _bytes(value: int) -> str:
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"
