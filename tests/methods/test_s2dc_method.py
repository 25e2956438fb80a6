import math

import pytest
import torch

from conftest import TINY_UNET
from mssl.config import BackboneConfig, S2DCConfig
from mssl.losses.s2dc import p2s_loss
from mssl.losses.sinkhorn import log_sinkhorn
from mssl.data.crops import CropRequest
from mssl.methods import s2dc as s2dc_module
from mssl.methods.s2dc import S2DCMethod, matching_accuracy
from mssl.models.backbones import build_backbone
from mssl.models.ema import cosine_momentum

SWIN = BackboneConfig(name="swin", feature_size=12, window_size=4)


def _method(backbone=TINY_UNET, **overrides):
    small = dict(field_size=(32, 32, 16), roi=16, head_hidden=32, head_out=16, queue_size=6, sinkhorn_iters=20)
    if backbone.name == "swin":
        small.update(field_size=(64, 64, 32), roi=32, token_stage=-2)  # 4 crops of 32³, 4×4×2 tokens of stride 16
    return S2DCMethod(build_backbone(backbone), S2DCConfig(**{**small, **overrides}))


def _field(method, batch=2):
    return {"field": torch.rand(batch, 1, 1, *method.config.field_size)}


def test_declares_one_field_crop_and_keeps_the_student_under_backbone():
    method = _method()
    assert method.crop_requests() == {"field": CropRequest(size=(32, 32, 16), volumes=1)}
    keys = method.state_dict().keys()
    assert any(k.startswith("backbone.") for k in keys) and any(k.startswith("teacher.backbone.") for k in keys)
    assert {"dustbin", "queue.keys", "queue.pointer", "queue.filled"} <= set(keys)
    assert "dustbin" in method.no_weight_decay()


@pytest.mark.parametrize("batch", [1, 2])
def test_swin_step_gradients_reach_student_heads_and_dustbin_never_the_teacher(batch):
    method = _method(SWIN)
    out = method(_field(method, batch))
    out.loss.backward()
    assert set(out.terms) == {"p2p", "p2s", "global"} and set(out.metrics) == {"match_acc"}
    assert all(math.isfinite(v.item()) for v in out.terms.values())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.backbone.swinViT.parameters())
    for head in (method.token_head, method.global_head):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert method.dustbin.grad is not None and method.dustbin.grad != 0
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert out.visuals["student_tokens"].shape == (batch, 16, 4, 4, 2)
    assert out.visuals["plan"].shape == (batch, 33, 33)
    assert out.visuals["correspondence"].shape == (batch, 32)
    assert out.visuals["teacher_field"].shape == out.visuals["student_field"].shape == (batch, 1, 64, 64, 32)
    assert int(method.queue.filled) == batch


def test_teacher_is_the_ema_of_the_student():
    method = _method(ema_start=0.5, ema_end=0.9)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    expected = {n: p.detach().clone() for n, p in method.teacher.named_parameters()}
    for step in range(1, 4):
        optimizer.zero_grad()
        method(_field(method)).loss.backward()
        optimizer.step()
        method.after_optimizer_step(step, max_steps=6)
        momentum = cosine_momentum(step, 6, 0.5, 0.9)
        student = dict(method._student().named_parameters())
        expected = {n: momentum * e + (1 - momentum) * student[n].detach() for n, e in expected.items()}
    teacher = dict(method.teacher.named_parameters())
    assert max((teacher[n] - e).abs().max().item() for n, e in expected.items()) < 1e-6
    assert any((teacher[n] - student[n]).abs().max() > 1e-3 for n in teacher)


def test_teacher_backbone_has_no_decoder():
    method = _method(SWIN)
    assert not any(n.startswith("backbone.decoder") for n, _ in method.teacher.named_parameters())
    assert any(n.startswith("backbone.decoder") for n, _ in method._student().named_parameters())
    with pytest.raises(RuntimeError, match="encoder-only"):
        method.teacher.backbone(torch.zeros(1, 1, 64, 64, 64))


def test_momentum_schedule_runs_from_start_to_end():
    assert cosine_momentum(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_momentum(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert cosine_momentum(100, 100, 0.996, 1.0) == pytest.approx(1.0)


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_constant_fields_give_finite_losses(value):
    method = _method(SWIN)
    out = method({"field": torch.full((1, 1, 1, 64, 64, 32), value)})
    out.loss.backward()
    assert all(math.isfinite(v.item()) for v in out.terms.values())
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)


def test_bf16_autocast_step_and_eval_mode_leave_the_queue_alone():
    method = _method()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(_field(method))
    out.loss.backward()
    assert out.loss.dtype == torch.float32 and math.isfinite(out.loss.item())
    method.eval()
    with torch.no_grad():
        method(_field(method))
    assert int(method.queue.filled) == 2


def test_token_cosine_is_fp32_under_bf16_autocast(monkeypatch):
    seen = {}

    def spy(cosine, correspondence):
        seen["cosine"] = cosine
        return p2s_loss(cosine, correspondence)

    monkeypatch.setattr(s2dc_module, "p2s_loss", spy)
    method = _method()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(_field(method))
    student, teacher = (_tokens(out.visuals[k]) for k in ("student_tokens", "teacher_tokens"))
    assert seen["cosine"].dtype == torch.float32
    assert torch.allclose(seen["cosine"], student.float() @ teacher.float().transpose(1, 2), atol=1e-6)


def _tokens(grid: torch.Tensor) -> torch.Tensor:
    """(B, D, TX, TY, TZ) token visual → (B, N, D) tokens."""
    return grid.flatten(2).transpose(1, 2)


def test_plan_is_sinkhorn_on_the_cosine_divided_by_tau_ot():
    assert S2DCConfig().tau_ot == 0.1  # DESIGN §4: the official solver had no temperature (near-uniform plan)
    method = _method()
    out = method(_field(method))
    student, teacher = (_tokens(out.visuals[k]) for k in ("student_tokens", "teacher_tokens"))
    expected = log_sinkhorn(student @ teacher.transpose(1, 2) / 0.1, method.dustbin, method.config.sinkhorn_iters)
    assert torch.allclose(out.visuals["plan"], expected.exp(), atol=1e-5)


def test_the_queue_receives_one_teacher_key_per_volume():
    method = _method()
    method.teacher.global_head.mlp[-1].weight.data.mul_(-1)  # teacher keys now differ clearly from the student's
    outputs = {}
    for name, head in (("teacher", method.teacher.global_head), ("student", method.global_head)):
        head.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out.detach()))
    method(_field(method))
    keys = method.queue.valid()  # 2 volumes × 4 crops each: one key per volume, from its own crops
    assert keys.shape == (2, 16) and outputs["teacher"].shape == (8, 16)
    for volume, key in enumerate(keys):
        own = slice(4 * volume, 4 * volume + 4)
        assert (outputs["teacher"][own] - key).abs().amax(1).min() < 1e-6
        assert (outputs["student"] - key).abs().amax(1).min() > 1e-2


def test_shallower_token_stage_gives_a_finer_token_grid():
    method = _method(token_stage=1)  # stride 2 on the (8, 16, 32) U-Net
    out = method(_field(method, 1))
    assert out.visuals["student_tokens"].shape == (1, 16, 16, 16, 8)


def test_matching_accuracy_counts_only_matched_tokens():
    cosine = torch.eye(3)[None]
    assert matching_accuracy(cosine, torch.tensor([[0, 2, -1]])).item() == pytest.approx(0.5)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="token_stage=5"):
        _method(token_stage=5)
    with pytest.raises(ValueError, match="not a multiple of the unet backbone.s stride 4"):
        S2DCMethod(build_backbone(TINY_UNET), S2DCConfig(field_size=(36, 36, 18), roi=18))
    method = _method()
    with pytest.raises(ValueError, match=r"batch\['field'\] must be"):
        method({"field": torch.rand(1, 1, 32, 32, 16)})
    single_crop = _method(field_size=(16, 16, 16))
    with pytest.raises(ValueError, match="at least 2 grid crops"):
        single_crop(_field(single_crop, batch=1))
