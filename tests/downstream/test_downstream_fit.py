"""The fine-tuning loop on its own: a one-weight network and a task whose validation scores are scripted."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterator, Sequence

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from mssl.config import build_config
from mssl.data.demo import demo_datalist
from mssl.downstream.config import FinetuneConfig
from mssl.downstream.fit import FinetuneLoop, Task, Validation


def _loop(tmp_path: Path, **overrides: object) -> FinetuneLoop:
    data = demo_datalist(tmp_path / "data" / "dataset.json", {"train": 2, "test": 1})
    config = build_config(FinetuneConfig, None, data=data, out=tmp_path / "run", val_every=2, lr=0.1, **overrides)
    return FinetuneLoop(config, Console(file=io.StringIO()))


def _task(network: torch.nn.Module, scores: Sequence[float], **options: object) -> Task:
    """Validations return ``scores`` in turn; each also records the network's one weight."""
    queue = iter(scores)

    def validate() -> Validation:
        score = next(queue)
        return Validation(score, {"score": score}, [f"{score:.2f}", f"{network.weight.item():.6f}"], f"score {score}")

    return Task(loss=lambda outputs, batch: outputs.square().mean(), validate=validate, validation_columns=["score", "weight"], **options)


def _batches() -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield {"image": torch.ones(1, 1)}


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def _fit(tmp_path: Path, scores: Sequence[float], resume: bool = False, steps: int = 4, **options: object) -> FinetuneLoop:
    loop = _loop(tmp_path, steps=steps, resume=resume)
    network = loop.prepare(torch.nn.Linear(1, 1, bias=False))
    assert loop.fit(_task(network, scores, **options), _batches(), (1, 1, 1), 1) is None
    loop.finish({"task": "toy"}, {})
    return loop


@pytest.mark.parametrize("ties_to_later, best_step", [(False, 2), (True, 4)])
def test_best_weights_are_those_of_the_best_validation(tmp_path: Path, ties_to_later: bool, best_step: int) -> None:
    loop = _fit(tmp_path, [0.5, 0.5], ties_to_later=ties_to_later)
    rows = _rows(loop.out)
    assert [r["step"] for r in rows] == ["1", "2", "3", "4"] and [r["score"] for r in rows] == ["", "0.50", "", "0.50"]
    weight = float(rows[best_step - 1]["weight"])
    assert load_file(str(loop.out / "best.safetensors"))["weight"].item() == pytest.approx(weight, abs=1e-6)
    result = json.loads((loop.out / "result.json").read_text(encoding="utf-8"))
    assert result["best_step"] == best_step and result["validation"] == {"score": 0.5} and result["validation_history"] == [0.5, 0.5]


def test_initial_validation_is_step_zero_and_never_the_best(tmp_path: Path) -> None:
    loop = _fit(tmp_path, [0.9, 0.1, 0.2], validate_initial=True)
    assert [r["step"] for r in _rows(loop.out)][:2] == ["0", "1"] and _rows(loop.out)[0]["loss"] == ""
    assert loop.progress.best_step == 4 and loop.progress.history == [0.9, 0.1, 0.2]


def test_gradient_clipping_bounds_the_step(tmp_path: Path) -> None:
    moved = []
    for clip in (None, 1e-3):
        loop = _loop(tmp_path / str(clip), steps=3, optimizer="sgd", weight_decay=0.0)
        network = loop.prepare(torch.nn.Linear(1, 1, bias=False))
        start = network.weight.item()
        loop.fit(_task(network, [0.0, 0.0], clip_grad_norm=clip), _batches(), (1, 1, 1), 1)
        moved.append(abs(network.weight.item() - start))
    # SGD with Nesterov momentum 0.99 moves by lr × (1.99 + 2.97 + 3.94) clipped gradients at most in three steps
    assert moved[1] <= 0.1 * 8.9 * 1e-3 < moved[0]


def test_resume_continues_the_counters_and_the_log(tmp_path: Path) -> None:
    _fit(tmp_path, [0.3], steps=2)
    loop = _fit(tmp_path, [0.1, 0.4], steps=6, resume=True)
    assert [r["step"] for r in _rows(loop.out)] == ["1", "2", "3", "4", "5", "6"]
    assert loop.progress.history == [0.3, 0.1, 0.4] and loop.progress.best_step == 6
    assert torch.load(loop.out / "last.ckpt", weights_only=True)["loop"]["step"] == 6


def test_without_validation_the_last_weights_are_kept(tmp_path: Path) -> None:
    loop = _loop(tmp_path, steps=3)
    network = loop.prepare(torch.nn.Linear(1, 1, bias=False))
    loop.fit(Task(loss=lambda outputs, batch: outputs.square().mean(), validate=None, validation_columns=["score"]), _batches(), (1, 1, 1), 1)
    assert loop.progress.best_step == 3
    assert torch.equal(load_file(str(loop.out / "best.safetensors"))["weight"], network.weight.detach())


def test_weights_gone_nan_under_a_finite_loss_stop_the_run_at_the_next_validation(tmp_path: Path) -> None:
    """A buffer overflows at step 3 while the loss stays finite: step 4 (due) finds it before validating or
    writing last.ckpt; the files still describe step 2's best weights and say where the run diverged."""
    from mssl.train.checkpoint import NonFiniteStateError

    loop = _loop(tmp_path, steps=4)
    network = torch.nn.Linear(1, 1, bias=False)
    network.register_buffer("running", torch.zeros(1))
    network = loop.prepare(network)
    calls = []

    def loss(outputs: torch.Tensor, batch: object) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 3:
            network.running.fill_(float("inf"))
        return outputs.square().mean()

    task = _task(network, [0.5, 0.9])
    task.loss = loss
    assert loop.fit(task, _batches(), (1, 1, 1), 1) is None
    assert loop.diverged == {"step": 4, "problem": "NaN/inf in 1 tensor (running)"} and loop.progress.history == [0.5]
    with pytest.raises(NonFiniteStateError, match=r"diverged at step 4 \(NaN/inf in 1 tensor \(running\)\).*keeps the best weights \(step 2\)"):
        loop.finish({"task": "toy"}, {})
    result = json.loads((loop.out / "result.json").read_text(encoding="utf-8"))
    assert result["diverged"]["step"] == 4 and result["best_step"] == 2 and result["steps"] == 4
    assert json.loads((loop.out / "model.json").read_text(encoding="utf-8"))["task"] == "toy"
    assert torch.load(loop.out / "last.ckpt", weights_only=True)["loop"]["step"] == 2  # the diverged state was not saved
    assert [r["step"] for r in _rows(loop.out)] == ["1", "2", "3", "4"] and _rows(loop.out)[-1]["score"] == ""
