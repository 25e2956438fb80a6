import math

import pytest
import torch

from conftest import TINY_UNET
from mssl.config import BackboneConfig, GVSLConfig
from mssl.losses.gvsl import local_ncc_loss, restoration_loss, smoothness_loss
from mssl.data.crops import CropRequest
from mssl.methods.gvsl import GVSLMethod, affine_bounds
from mssl.models.backbones import build_backbone
from mssl.models.warp import warp
from mssl.models.zmatch import AffineBounds, ZMatchHead

TERMS = {"ncc", "restore", "smooth"}
VISUALS = {"fixed", "moving", "warped", "flow", "restored", "damaged"}


def _method(backbone: BackboneConfig = TINY_UNET, **config) -> GVSLMethod:
    return GVSLMethod(build_backbone(backbone), GVSLConfig(**config))


def _pair(batch: int, size: int = 32) -> dict[str, torch.Tensor]:
    return {"pair": torch.rand(batch, 2, 1, size, size, size)}


def test_crop_request_is_a_pair_of_roi_crops_and_such_a_batch_runs():
    method = _method(roi=(32, 24, 16))
    request = method.crop_requests()
    assert request == {"pair": CropRequest(size=(32, 24, 16), volumes=2, corresponding=True, jitter=4)}
    independent = _method(roi=(32, 24, 16), pair_sampling="independent").crop_requests()["pair"]
    assert not independent.corresponding
    assert method.name == "gvsl"
    batch = {"pair": torch.rand(2, request["pair"].volumes, 1, *request["pair"].size)}
    output = method(batch)
    assert output.visuals["warped"].shape == output.visuals["restored"].shape == (2, 1, 32, 24, 16)
    assert output.visuals["flow"].shape == (2, 3, 32, 24, 16)


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
    volume = torch.rand(1, 1, 1, 32, 32, 32)
    batch = {"pair": volume.expand(1, 2, 1, 32, 32, 32).clone()}  # B is the same volume as A
    train = method(batch).visuals
    assert not torch.allclose(train["fixed"], volume[:, 0], atol=1e-2)
    assert torch.equal(train["moving"], train["fixed"])  # one transform for A and B
    method.eval()
    evaluation = method(batch).visuals
    assert torch.equal(evaluation["fixed"], volume[:, 0]) and torch.equal(evaluation["moving"], volume[:, 0])


def _with_a_rough_flow(method: GVSLMethod) -> GVSLMethod:
    torch.nn.init.normal_(method.zmatch.deformable.flow.weight, std=0.5)  # a flow of a few voxels, far from smooth
    return method


def test_loss_weights_are_applied():
    torch.manual_seed(0)
    method = _with_a_rough_flow(_method(w_ncc=2.0, w_restore=0.5, w_smooth=3.0, spatial_aug=False))
    output = method(_pair(1))
    assert output.terms["smooth"] > 0.05
    expected = 2.0 * output.terms["ncc"] + 0.5 * output.terms["restore"] + 3.0 * output.terms["smooth"]
    assert torch.allclose(output.loss, expected, rtol=1e-6)


def test_each_term_compares_the_right_images():
    torch.manual_seed(1)
    method = _with_a_rough_flow(_method())
    output = method(_pair(2))
    visuals = output.visuals
    assert torch.allclose(output.terms["ncc"], local_ncc_loss(visuals["warped"], visuals["fixed"], method.config.ncc_window, method.config.ncc_eps), atol=1e-6)
    assert not torch.allclose(output.terms["ncc"], local_ncc_loss(visuals["warped"], visuals["damaged"], method.config.ncc_window, method.config.ncc_eps), atol=1e-3)
    assert torch.allclose(output.terms["restore"], restoration_loss(visuals["restored"], visuals["fixed"]), atol=1e-7)
    assert torch.allclose(output.terms["smooth"], smoothness_loss(visuals["flow"]), atol=1e-7)
    assert torch.allclose(visuals["warped"], warp(visuals["moving"], visuals["affine"], visuals["flow"]), atol=1e-6)


def test_backbone_sees_damaged_a_and_b_and_restoration_reads_damaged_a():
    method = _method()
    seen = {}
    method.backbone.register_forward_hook(lambda _m, inputs, out: seen.update(input=inputs[0], local=out.local))
    method.restoration.register_forward_hook(lambda _m, inputs, _out: seen.update(restoration=inputs[0]))
    visuals = method(_pair(2)).visuals
    assert torch.equal(seen["input"], torch.cat([visuals["damaged"], visuals["moving"]]))
    assert torch.equal(seen["restoration"], seen["local"][:2])  # the damaged A half, never B's


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


def test_deformable_branch_reads_b_features_warped_by_the_predicted_affine():
    torch.manual_seed(2)
    head = ZMatchHead(global_channels=8, local_channels=4, bounds=affine_bounds(GVSLConfig()))
    with torch.no_grad():  # a clearly non-identity affine: rotation and shift heads away from zero
        head.affine.rotation.bias.fill_(0.8)
        head.affine.shift.bias.fill_(0.8)
    seen = {}
    head.deformable.register_forward_hook(lambda _m, inputs, _out: seen.update(moving=inputs[0], fixed=inputs[1]))
    moving_local, fixed_local = torch.rand(2, 4, 16, 16, 16), torch.rand(2, 4, 16, 16, 16)
    affine, _ = head(torch.rand(2, 8, 2, 2, 2), torch.rand(2, 8, 2, 2, 2), moving_local, fixed_local)
    assert (affine[:, :, 3].abs() > 1).all()
    assert torch.allclose(seen["moving"], warp(moving_local, affine), atol=1e-6)
    assert not torch.allclose(seen["moving"], moving_local, atol=1e-2)
    assert torch.equal(seen["fixed"], fixed_local)


def test_the_method_maps_every_bound_of_its_config_to_the_head():
    config = GVSLConfig(max_rotation_deg=7.0, max_scale_delta=0.1, max_shear_deg=3.0, max_shift_fraction=0.4)
    assert affine_bounds(config) == AffineBounds(rotation_deg=7.0, scale_delta=0.1, shear_deg=3.0, shift_fraction=0.4)
    branch = GVSLMethod(build_backbone(TINY_UNET), config).zmatch.affine
    assert (branch.max_rotation, branch.max_scale_delta) == (pytest.approx(math.radians(7.0)), 0.1)
    assert (branch.max_shear, branch.max_shift_fraction) == (pytest.approx(math.radians(3.0)), 0.4)
