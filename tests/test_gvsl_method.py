import pytest
import torch

from mssl.config import BackboneConfig, GVSLConfig
from mssl.methods.base import CropRequest
from mssl.methods.gvsl import GVSLMethod
from mssl.models.backbones import build_backbone

TINY_UNET = BackboneConfig(name="unet", unet_channels=(8, 16, 32))
TERMS = {"ncc", "restore", "smooth"}
VISUALS = {"fixed", "moving", "warped", "flow", "restored", "damaged"}


def _method(backbone: BackboneConfig = TINY_UNET, **config) -> GVSLMethod:
    return GVSLMethod(build_backbone(backbone), GVSLConfig(**config))


def _pair(batch: int, size: int = 32) -> dict[str, torch.Tensor]:
    return {"pair": torch.rand(batch, 2, 1, size, size, size)}


def test_crop_request_is_a_pair_of_roi_crops_from_two_volumes():
    method = _method(roi=(64, 48, 32))
    assert method.crop_requests() == {"pair": CropRequest(size=(64, 48, 32), volumes=2)}
    assert method.name == "gvsl"
    assert all(name.startswith(("backbone.", "zmatch.", "restoration.")) for name, _ in method.named_parameters())


def test_one_backward_reaches_every_parameter():
    method = _method()
    output = method(_pair(2))
    output.loss.backward()
    groups = ("backbone.", "zmatch.affine.", "zmatch.deformable.", "restoration.")
    names = [name for name, _ in method.named_parameters()]
    assert all(any(name.startswith(g) for name in names) for g in groups)
    missing = [n for n, p in method.named_parameters() if p.grad is None or not (p.grad.abs().sum() > 0)]
    assert missing == []


@pytest.mark.parametrize("batch", [1, 2, 3])
def test_batch_sizes_run_and_report_every_term_and_visual(batch):
    method = _method()
    output = method(_pair(batch))
    assert set(output.terms) == TERMS
    assert VISUALS <= set(output.visuals)
    assert all(torch.isfinite(v) and v.ndim == 0 for v in output.terms.values())
    expected = sum(output.terms.values())  # default weights are 1
    assert torch.allclose(output.loss, expected)
    assert output.visuals["flow"].shape == (batch, 3, 32, 32, 32)
    assert output.visuals["warped"].shape == output.visuals["restored"].shape == (batch, 1, 32, 32, 32)
    assert not any(v.requires_grad for v in output.visuals.values())


def test_without_spatial_augmentation_b_is_untouched_and_only_a_is_damaged():
    method = _method(spatial_aug=False)
    batch = _pair(2)
    visuals = method(batch).visuals
    assert torch.equal(visuals["moving"], batch["pair"][:, 1])
    assert torch.equal(visuals["fixed"], batch["pair"][:, 0])
    assert not torch.equal(visuals["damaged"], visuals["fixed"])


def test_spatial_augmentation_moves_a_and_b_together_in_training_only():
    method = _method()
    batch = _pair(1)
    train = method(batch).visuals
    assert not torch.allclose(train["fixed"], batch["pair"][:, 0], atol=1e-2)
    method.eval()
    evaluation = method(batch).visuals
    assert torch.equal(evaluation["fixed"], batch["pair"][:, 0])


def test_loss_weights_are_applied():
    method = _method(w_ncc=2.0, w_restore=0.5, w_smooth=0.0, spatial_aug=False)
    output = method(_pair(1))
    expected = 2.0 * output.terms["ncc"] + 0.5 * output.terms["restore"]
    assert torch.allclose(output.loss, expected)


def test_bf16_autocast_on_cpu_gives_finite_losses():
    method = _method()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = method(_pair(2))
    assert torch.isfinite(output.loss)
    assert all(v.dtype == torch.float32 for v in output.terms.values())
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.grad is not None)


def test_runs_on_the_swin_backbone():
    method = _method(BackboneConfig(name="swin", feature_size=12, window_size=4))
    output = method(_pair(1, size=64))
    assert all(torch.isfinite(v) for v in output.terms.values())
    output.loss.backward()
    grads = [p.grad for p in method.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert method.zmatch.affine.conv[0].weight.grad.abs().sum() > 0
    assert method.backbone.swinViT.patch_embed.proj.weight.grad.abs().sum() > 0


def test_bad_batch_is_a_clear_error():
    method = _method()
    with pytest.raises(ValueError, match=r"batch\['pair'\]"):
        method({"image": torch.rand(1, 2, 1, 32, 32, 32)})
    with pytest.raises(ValueError, match=r"\(B, 2, C, X, Y, Z\)"):
        method({"pair": torch.rand(1, 3, 1, 32, 32, 32)})


def test_after_optimizer_step_changes_nothing():
    method = _method()
    before = {k: v.clone() for k, v in method.state_dict().items()}
    method.after_optimizer_step(1, 10)
    assert all(torch.equal(before[k], v) for k, v in method.state_dict().items())
