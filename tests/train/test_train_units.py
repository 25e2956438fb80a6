"""Engine pieces on their own: schedule, sampler, atomic checkpoint writes, optimiser groups, combined method."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import TINY_UNET
from mssl.config import OptimConfig
from mssl.data.crops import CropRequest
from mssl.methods.base import MethodOutput, PretrainMethod
from mssl.methods.combined import CombinedMethod
from mssl.models.backbones import build_backbone
from mssl.train.checkpoint import AtomicCheckpointIO, atomic_torch_save, remove_partial_writes
from mssl.train.datamodule import StepSampler
from mssl.train.optimizer import build_optimizer
from mssl.train.schedules import WarmupCosine, warmup_cosine
from mssl.train.seeding import rng_state, seed_step, set_rng_state, step_seed



class Reconstruction(PretrainMethod):
    """Test double: masked reconstruction through the backbone, with an EMA-like buffer and a frozen copy."""

    name = "reconstruction"

    def __init__(self, backbone: nn.Module, key: str = "image", size: int = 16) -> None:
        super().__init__()
        self.backbone = backbone
        self.key, self.size = key, size
        self.head = nn.Conv3d(backbone.local_channels, 1, 1)
        self.frozen = nn.Linear(2, 2).requires_grad_(False)
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    def crop_requests(self) -> dict[str, CropRequest]:
        return {self.key: CropRequest((self.size,) * 3, volumes=1)}

    def forward(self, batch: dict[str, torch.Tensor]) -> MethodOutput:
        image = batch[self.key][:, 0]
        mask = (torch.rand_like(image) > 0.5).to(image.dtype)
        loss = (self.head(self.backbone(image * mask).local) - image).square().mean()
        return MethodOutput(loss=loss, terms={"mse": loss.detach()}, metrics={"kept": mask.mean()})

    def after_optimizer_step(self, step: int, max_steps: int) -> None:
        self.steps_seen.fill_(step)


def test_warmup_then_cosine_to_floor() -> None:
    schedule = WarmupCosine(warmup_steps=4, max_steps=14, schedule="cosine", min_ratio=0.1)
    assert [schedule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule(4) == pytest.approx(1.0)
    assert schedule(9) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert schedule(14) == pytest.approx(0.1) and schedule(100) == pytest.approx(0.1)
    values = [schedule(s) for s in range(4, 15)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    constant = WarmupCosine(warmup_steps=0, max_steps=10, schedule="constant")
    assert {constant(s) for s in range(12)} == {1.0}


def test_scheduler_state_holds_only_numbers() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, 2, 10, "cosine")
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == 1.0
    state = scheduler.state_dict()
    assert state["lr_lambdas"] == [{"warmup_steps": 2, "max_steps": 10, "schedule": "cosine", "min_ratio": 0.0}]


def test_sampler_splits_ranks_and_starts_at_the_restored_step() -> None:
    full = [list(StepSampler(0, 6, batch_size=2, rank=r, world_size=2)) for r in range(2)]
    assert sorted(full[0] + full[1]) == list(range(24))  # every sample once across ranks
    assert full[0][:4] == [0, 1, 4, 5] and full[1][:4] == [2, 3, 6, 7]
    for rank in range(2):
        resumed = list(StepSampler(4, 6, batch_size=2, rank=rank, world_size=2))
        assert resumed == full[rank][8:]  # micro-batches 4 and 5: what the uninterrupted run would draw
    with pytest.raises(TypeError):
        len(StepSampler(0, 6, batch_size=2))  # endless for Lightning: max_steps bounds the run


def test_step_seed_depends_on_every_component_and_is_reproducible() -> None:
    seeds = {step_seed(s, t, m, r) for s in (0, 1) for t in (0, 1) for m in (0, 1) for r in (0, 1)}
    assert len(seeds) == 16
    seed_step(3, 10, 0, 1)
    first = torch.rand(4)
    seed_step(3, 10, 0, 1)
    assert torch.equal(first, torch.rand(4))


def test_rng_state_round_trip_is_weights_only_loadable(tmp_path: Path) -> None:
    state = rng_state()
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    expected = torch.rand(3)
    torch.rand(5)
    set_rng_state(torch.load(path, weights_only=True))
    assert torch.equal(torch.rand(3), expected)


def test_atomic_save_replaces_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, path)
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(2)}, path)
    assert torch.load(path, weights_only=True)["step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_crash_during_checkpoint_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"weights": torch.arange(10.0)}, path)
    before = path.read_bytes()

    def dies_half_way(obj: object, file) -> None:
        file.write(b"\x00" * 1000)  # part of a checkpoint reaches the disk...
        raise KeyboardInterrupt("killed while writing")  # ...then the process is interrupted

    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"weights": torch.zeros(10)}, path, save=dies_half_way)
    assert path.read_bytes() == before
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.arange(10.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


WRITER = """
import sys, torch
from mssl.train.checkpoint import atomic_torch_save
for i in range(10**6):
    atomic_torch_save({"i": torch.tensor(i), "w": torch.full((4_000_000,), float(i))}, sys.argv[1])  # 16 MB
    print(i, flush=True)
"""


@pytest.mark.slow
def test_kill_9_during_checkpoint_writes_leaves_a_whole_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, encoding="utf-8")
    for _ in range(3):  # a few complete writes, then the kill lands while the next one is in flight
        assert writer.stdout.readline(), "writer died"
    time.sleep(0.01)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    checkpoint = torch.load(path, weights_only=True)
    assert int(checkpoint["i"]) >= 2
    assert torch.equal(checkpoint["w"], torch.full((4_000_000,), float(checkpoint["i"])))  # never a torn file
    remove_partial_writes(tmp_path)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_optimizer_exempts_norms_and_skips_frozen_parameters() -> None:
    method = Reconstruction(build_backbone(TINY_UNET))
    optim = OptimConfig().resolve(OptimConfig(optimizer="adamw", lr=1e-3, weight_decay=0.1, warmup_steps=0, schedule="cosine"))
    optimizer = build_optimizer(method, optim)
    decayed, exempt = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in exempt["params"])
    trainable = [p for p in method.parameters() if p.requires_grad]
    assert len(decayed["params"]) + len(exempt["params"]) == len(trainable)
    assert not any(p is method.frozen.weight for group in optimizer.param_groups for p in group["params"])


def _combined() -> CombinedMethod:
    backbone = build_backbone(TINY_UNET)
    return CombinedMethod({"first": Reconstruction(backbone), "second": Reconstruction(backbone, size=8)})


def test_combined_method_namespaces_crops_and_prefixes_terms() -> None:
    method = _combined()
    requests = method.crop_requests()
    assert requests == {"first/image": CropRequest((16, 16, 16)), "second/image": CropRequest((8, 8, 8))}
    batch = {key: torch.rand(2, 1, 1, *r.size) for key, r in requests.items()}
    output = method(batch)
    assert set(output.terms) == {"first/mse", "second/mse"} and set(output.metrics) == {"first/kept", "second/kept"}
    assert torch.allclose(output.loss, output.terms["first/mse"] + output.terms["second/mse"])
    method.after_optimizer_step(5, 10)
    assert all(int(m.steps_seen) == 5 for m in method.objectives.values())


def test_combined_method_stores_the_shared_backbone_once_and_loads_back() -> None:
    method = _combined()
    state = method.state_dict()
    assert any(k.startswith("backbone.") for k in state)
    assert not any(".backbone." in k for k in state if k.startswith("objectives."))
    other = _combined()
    other.load_state_dict(state)  # strict: the objectives' backbone keys are restored from backbone.*
    assert all(torch.equal(v, other.state_dict()[k]) for k, v in state.items())
    assert other.objectives["first"].backbone is other.backbone and other.objectives["second"].backbone is other.backbone
    exempt = method.no_weight_decay()
    assert "objectives.first.backbone.encoders.0.1.weight" in exempt  # a GroupNorm weight, named by its objective


def test_combined_method_requires_one_shared_backbone() -> None:
    with pytest.raises(ValueError, match="same backbone"):
        CombinedMethod({"a": Reconstruction(build_backbone(TINY_UNET)), "b": Reconstruction(build_backbone(TINY_UNET))})
