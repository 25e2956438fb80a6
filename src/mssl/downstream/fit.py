"""The supervised fine-tuning loop of every task, on Lightning Fabric.

A task (segmentation, classification) supplies its network, batches, loss and validation; the loop owns
the rest: the optimiser and poly schedule, validation every ``val_every`` steps (best weights kept,
``steps="auto"`` stops on a plateau), RUN/last.ckpt and ``--resume``, metrics.csv, TensorBoard, progress
lines and result.json.

A run that diverges (a NaN/inf loss, or NaN/inf weights at a validation) stops there, every process at
once, without another optimiser step or checkpoint: the task still finishes its run files, so model.json
describes the best weights kept so far (``mssl evaluate`` uses them) and result.json says where the run
diverged; then :meth:`FinetuneLoop.finish` raises :class:`~mssl.train.checkpoint.NonFiniteStateError`.

A plain loop on Fabric rather than a ``Trainer``: the steps are short (partial-label loss, whole-volume
validation), and Fabric still gives precision, devices and DDP for free.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from rich.console import Console
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from mssl.downstream.config import FinetuneConfig
from mssl.downstream.convergence import on_plateau
from mssl.downstream.last_checkpoint import load_last, open_log, save_last
from mssl.downstream.optim import build_optimizer
from mssl.downstream.progress import finetune_reporter, planned_validations
from mssl.downstream.run_files import save_weights, write_json
from mssl.downstream.setup import start_finetune
from mssl.runs import FinetuneRun
from mssl.train.checkpoint import NonFiniteStateError
from mssl.train.cost import CostReporter, Projection
from mssl.train.memory import memory_ceiling
from mssl.train.schedules import poly
from mssl.weights.checks import listed, nonfinite_names

FINETUNE_MEMORY_ADVICE = "make the patch smaller (--roi, --max-roi-voxels), use --batch-size 1, or a larger machine"


@dataclass
class Validation:
    """One validation of the network."""

    score: float  # higher is better: picks the best weights and feeds the plateau test
    scores: dict[str, float]  # TensorBoard's val/<name>; the best's go to result.json and last.ckpt (plain floats)
    cells: list[str]  # metrics.csv, under the task's validation columns
    summary: str  # the console line


@dataclass
class Task:
    """What a task supplies to the loop."""

    loss: Callable[[Any, Any], torch.Tensor]  # (network output, batch) → loss; the network is called on batch["image"]
    validate: Callable[[], Validation] | None  # None: no validation cases, the last weights are the result
    validation_columns: Sequence[str]
    clip_grad_norm: float | None = None
    validate_initial: bool = False  # also validate the untrained network, as step 0
    ties_to_later: bool = False  # an equal score replaces the best (the later, longer-trained weights)


@dataclass
class Progress:
    """The loop's counters, kept in last.ckpt as plain values."""

    step: int = 0
    best: float = -math.inf
    best_step: int = 0
    history: list[float] = field(default_factory=list)  # every validation's score
    scores: dict[str, float] = field(default_factory=dict)  # the best validation's scores

    def improved(self, score: float, ties_to_later: bool) -> bool:
        return score > self.best or (ties_to_later and score == self.best)


class FinetuneLoop:
    """One fine-tuning run: :meth:`prepare` the network, :meth:`fit` it, :meth:`finish` with the run's files."""

    def __init__(self, config: FinetuneConfig, console: Console) -> None:
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        self.config, self.console = config, console
        self.setup, self.fabric, self.out = start_finetune(config)
        self.files = FinetuneRun(self.out)
        self.total_steps = config.max_steps if config.steps == "auto" else config.steps
        self.progress = Progress()
        self.diverged: dict[str, Any] | None = None  # {"step", "problem"} once the run diverged

    def prepare(self, network: nn.Module) -> nn.Module:
        """The optimiser (trainable parameters) and poly schedule, through Fabric; resuming, their state, the
        loop's counters and the RNG from last.ckpt. Returns the Fabric-wrapped network."""
        optimizer = build_optimizer([p for p in network.parameters() if p.requires_grad], self.config)
        self.schedule = poly(optimizer, self.total_steps)
        self.network, self.optimizer = self.fabric.setup(network, optimizer)
        if self.config.resume:
            self.progress = Progress(**load_last(self.out, self.network, self.optimizer, self.schedule))
        return self.network

    def fit(self, task: Task, batches: Iterable[Any], patch: Sequence[int], patches_per_step: int) -> Projection | None:
        """Train from the current step to the planned one (or a plateau); a dry run stops after the measured
        steps and returns the projection of the planned run."""
        config, fabric, progress, network = self.config, self.fabric, self.progress, self.network
        validating = task.validate is not None
        reporter = finetune_reporter(
            config, network, patch, patches_per_step, self.total_steps, fabric.device, self.console, validating=validating
        )
        writer = SummaryWriter(str(self.files.tensorboard)) if fabric.is_global_zero else None
        header = ["step", "loss", "lr", *task.validation_columns, "seconds"]
        log_file, log = open_log(self.files.metrics, header, progress.step if config.resume else None)
        no_validation = [""] * len(task.validation_columns)
        reporter.start(progress.step)
        # on CPU a step too large for the machine is one line, not the OOM killer; last.ckpt and the best weights stay
        ceiling = memory_ceiling(str(self.out), FINETUNE_MEMORY_ADVICE, processes=fabric.world_size, on_cpu=fabric.device.type == "cpu")
        with log_file, ceiling:
            if validating and task.validate_initial and not progress.step:
                log.writerow([0, "", "", *self._validate(task, 0, reporter, writer).cells, self._seconds()])
            for step, batch in zip(range(progress.step + 1, self.total_steps + 1), batches):
                network.train()
                loss = task.loss(network(batch["image"]), batch)
                if self._stop_if_diverged(step, None if bool(torch.isfinite(loss.detach())) else f"loss {loss.item()}"):
                    log.writerow([step, f"{loss.item():.6f}", "", *no_validation, self._seconds()])  # the step was not taken
                    break
                self.optimizer.zero_grad(set_to_none=True)
                fabric.backward(loss)
                if task.clip_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(network.parameters(), task.clip_grad_norm)
                self.optimizer.step()
                self.schedule.step()
                lr = self.schedule.get_last_lr()[0]
                progress.step = step
                due = step % config.val_every == 0 or step == self.total_steps
                # a finite loss does not prove finite weights (an enormous step overflows them)
                stopped = due and self._stop_if_diverged(step, nonfinite_weights(network))
                validation = self._validate(task, step, reporter, writer) if validating and due and not stopped else None
                if writer is not None:
                    writer.add_scalar("train/loss", loss.item(), step)
                    writer.add_scalar("train/lr", lr, step)
                cells = validation.cells if validation is not None else no_validation
                log.writerow([step, f"{loss.item():.6f}", f"{lr:.3e}", *cells, self._seconds()])
                log_file.flush()
                if stopped:
                    break
                if fabric.is_global_zero and due:
                    save_last(self.out, network, self.optimizer, self.schedule, asdict(progress))
                reporter.step_done(step, lambda: {"loss": loss.item(), "lr": lr})
                if config.dry_run and reporter.measured:
                    break
                if config.steps == "auto" and validation is not None and self.converged():
                    self.console.print(
                        f"validation on a plateau (no gain > {config.plateau_delta} in {config.plateau_window} validations): stopping"
                    )
                    break
        if writer is not None:
            writer.close()
        if self.diverged is not None:
            return None
        if config.dry_run:
            if validating and not task.validate_initial:  # one validation, timed, for what the planned ones cost
                with reporter.paused(), fabric.autocast():
                    task.validate()  # type: ignore[misc]
            return reporter.dry_run_report(planned_validations(reporter, initial=validating and task.validate_initial))
        if not validating:  # no validation split: the last weights are the result
            progress.best_step = progress.step
            if fabric.is_global_zero:
                save_weights(network, self.out)
        return None

    def _validate(self, task: Task, step: int, reporter: CostReporter, writer: SummaryWriter | None) -> Validation:
        """Validate; keep the best weights (step 0, the initial network, never counts as best); say it."""
        progress = self.progress
        with reporter.paused():  # validation time is not step time
            with self.fabric.autocast():
                validation = task.validate()  # type: ignore[misc]
            progress.history.append(validation.score)
            if step and progress.improved(validation.score, task.ties_to_later):
                progress.best, progress.best_step, progress.scores = validation.score, step, validation.scores
                if self.fabric.is_global_zero:
                    save_weights(self.network, self.out)
            best = f" (best {progress.best:.4f} @ {progress.best_step})" if step else " (the initial network)"
            self.console.print(f"step {step}/{self.total_steps} · {validation.summary}{best} · {time.perf_counter() - self.start:.0f} s")
            if writer is not None:
                for name, value in validation.scores.items():
                    writer.add_scalar(f"val/{name}", value, step)
        return validation

    def _stop_if_diverged(self, step: int, problem: str | None) -> bool:
        """Whether any process found the run diverged at ``step`` (``problem``: this process's finding, None
        when all is finite); every process gets the same answer, so all stop together."""
        if self.fabric.strategy.reduce_boolean_decision(problem is None, all=True):
            return False
        self.diverged = {"step": step, "problem": problem or "NaN/inf on another process"}
        self.console.print(f"[red]step {step}/{self.total_steps} · the run diverged: {self.diverged['problem']}; stopping[/]")
        return True

    @property
    def has_best_weights(self) -> bool:
        """Whether best.safetensors holds weights of this run (a run that diverged early may have none)."""
        return self.files.weights.is_file()

    def converged(self) -> bool:
        return on_plateau(self.progress.history, self.config.plateau_window, self.config.plateau_delta)

    @property
    def method(self) -> str:
        """The pre-training method of the starting weights, or "scratch"."""
        return self.setup.pretrained.method if self.setup.pretrained else "scratch"

    def finish(self, description: dict[str, Any], result: dict[str, Any]) -> Path:
        """Write model.json (the run's setup and the task's ``description``) and result.json (the loop's
        outcome and the task's ``result``); returns the run folder."""
        progress, config, setup = self.progress, self.config, self.setup
        model = {
            "task": config.task,
            "backbone": setup.backbone.model_dump(mode="json"),
            "preset": setup.preset.model_dump(mode="json"),
            **description,
            "weights": str(config.weights) if config.weights else None,
            "method": self.method,
            "config": config.model_dump(mode="json"),
        }
        outcome = {
            "diverged": self.diverged,  # None, or where and why the run stopped
            "best_step": progress.best_step,
            **result,
            "validation": progress.scores,
            "steps": progress.step,
            "planned_steps": self.total_steps,
            "stopped_on_plateau": self.config.steps == "auto" and progress.step < self.total_steps,
            "converged": self.converged(),
            "validation_history": progress.history,
            "seconds": round(time.perf_counter() - self.start, 1),
            "cpu_seconds": round(time.process_time() - self.cpu_start, 1),
        }
        if self.fabric.is_global_zero:
            write_json(self.files.model, model)
            write_json(self.files.result, outcome)
        if self.diverged is not None:
            kept = (
                f"{self.files.weights.name} keeps the best weights (step {progress.best_step}), which {self.files.model.name} describes "
                f"(`mssl evaluate {self.out}` uses them)"
                if self.has_best_weights
                else "no weights were kept (none validated before)"
            )
            raise NonFiniteStateError(
                f"{self.out}: the fine-tuning diverged at step {self.diverged['step']} ({self.diverged['problem']}) and stopped; "
                f"{kept}; {self.files.result.name} says so. Try a lower --lr."
            )
        scores = ", ".join(f"{name} {value:.4f}" for name, value in progress.scores.items())
        best = f"best validation {scores} at step {progress.best_step}" if scores else f"the weights of step {progress.best_step} kept"
        convergence = (" · converged" if outcome["converged"] else " · not converged (still rising)") if progress.history else ""
        self.console.print(f"[green]done[/] {self.out} · {best}{convergence} · {outcome['cpu_seconds'] / 60:.1f} CPU-min")
        return self.out

    def _seconds(self) -> str:
        return f"{time.perf_counter() - self.start:.1f}"


def nonfinite_weights(network: nn.Module) -> str | None:
    """What is NaN/inf in the network's weights and buffers, or None."""
    bad = nonfinite_names(network.state_dict())
    return f"NaN/inf in {listed(bad)}" if bad else None
