import pytest
import torch

from mssl.losses.gvsl import local_ncc_loss, restoration_loss, smoothness_loss

EPS = 1e-5  # GVSLConfig.ncc_eps


def _ncc(x: torch.Tensor, y: torch.Tensor, window: int = 9) -> torch.Tensor:
    return local_ncc_loss(x, y, window, EPS)


def test_ncc_of_an_affine_intensity_map_is_zero():
    x = torch.rand(2, 1, 20, 16, 12)
    assert _ncc(x, 3.0 * x + 2.0).item() == pytest.approx(0.0, abs=1e-4)
    assert _ncc(x, -0.5 * x + 1.0).item() == pytest.approx(0.0, abs=1e-4)  # squared NCC


def test_ncc_of_independent_noise_is_near_one():
    x, y = torch.rand(2, 1, 24, 24, 24), torch.rand(2, 1, 24, 24, 24)
    assert _ncc(x, y).item() > 0.98


def test_ncc_is_finite_on_constant_regions_with_finite_gradients():
    x = torch.full((1, 1, 12, 12, 12), 0.5, requires_grad=True)
    y = torch.rand(1, 1, 12, 12, 12)
    loss = _ncc(x, y)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(1.0, abs=1e-4)
    assert torch.isfinite(x.grad).all()


def test_ncc_runs_in_fp32_under_bf16_autocast():
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = _ncc(x.bfloat16(), (2 * x + 1).bfloat16())
    assert loss.dtype == torch.float32 and loss.item() < 0.02


def test_ncc_window_changes_the_result_and_shapes_must_match():
    x = torch.rand(1, 1, 16, 16, 16)
    y = x + 0.3 * torch.rand_like(x)
    assert _ncc(x, y, window=3).item() != pytest.approx(_ncc(x, y, window=9).item(), abs=1e-3)
    with pytest.raises(ValueError, match="equal shapes"):
        _ncc(x, y[..., :8])


def test_smoothness_is_zero_for_a_constant_flow_and_exact_for_a_ramp():
    constant = torch.tensor([1.5, -2.0, 0.25]).view(1, 3, 1, 1, 1).expand(2, 3, 8, 6, 5)
    assert smoothness_loss(constant).item() == 0.0
    ramp = torch.zeros(1, 3, 8, 6, 5)
    ramp[:, 0] = 0.5 * torch.arange(8.0).view(8, 1, 1)  # d u_x / dx = 0.5 only
    # mean over all channels of the x-differences is 0.25 / 3; the three axes are averaged
    assert smoothness_loss(ramp).item() == pytest.approx(0.25 / 9, rel=1e-6)


def test_restoration_loss_is_mse():
    a, b = torch.rand(2, 1, 4, 4, 4), torch.rand(2, 1, 4, 4, 4)
    assert restoration_loss(a, b).item() == pytest.approx((a - b).square().mean().item(), rel=1e-6)
    assert restoration_loss(a, a).item() == 0.0


def test_ncc_by_hand_with_border_boxes_counting_only_voxels_inside():
    # values vary along X only (constant over a 3 × 3 Y-Z plane), so each 3³ box's NCC is the 1-D NCC along X
    x = torch.tensor([0.0, 1.0, 3.0, 2.0]).view(1, 1, 4, 1, 1).expand(1, 1, 4, 3, 3)
    y = torch.tensor([1.0, 0.0, 2.0, 2.0]).view(1, 1, 4, 1, 1).expand(1, 1, 4, 3, 3)
    # windows along X: voxel 0 sees {0, 1}, voxel 1 {0, 1, 2}, voxel 2 {1, 2, 3}, voxel 3 {2, 3}.
    # voxel 0: cross = −½, var_x = ½, var_y = ½; voxel 1: cross = 2, var_x = 14/3, var_y = 2;
    # voxel 2: cross = 2, var_x = 2, var_y = 8/3; voxel 3: var_y = 0. cc = cross² / (var_x var_y) = 1, 3/7, 3/4, 0
    expected = 1 - (1 + 3 / 7 + 3 / 4 + 0) / 4
    assert expected == pytest.approx(0.4553571, abs=1e-7)
    assert _ncc(x, y, window=3).item() == pytest.approx(expected, abs=1e-4)  # eps = 1e-5 shifts it < 1e-4


def test_restoration_loss_by_hand():
    restored = torch.tensor([0.0, 0.5, 1.0, 1.0]).view(1, 1, 4, 1, 1)
    clean = torch.tensor([0.0, 1.0, 1.0, 0.0]).view(1, 1, 4, 1, 1)
    assert restoration_loss(restored, clean).item() == pytest.approx((0.25 + 1.0) / 4)
