import math

import pytest
import torch

from mssl.models.warp import affine_matrix, identity_grid, sampling_coordinates, warp

SHAPES = [(16, 16, 16), (12, 16, 10)]


def _identity(batch: int) -> torch.Tensor:
    return torch.eye(3, 4).expand(batch, 3, 4).clone()


def _params(batch: int, rotation=(0.0, 0.0, 0.0), translation=(0.0, 0.0, 0.0)):
    return dict(
        rotation=torch.tensor([rotation] * batch),
        scale=torch.ones(batch, 3),
        shear=torch.zeros(batch, 6),
        translation=torch.tensor([translation] * batch),
    )


@pytest.mark.parametrize("shape", SHAPES)
def test_identity_affine_and_zero_flow_reproduce_the_input(shape):
    image = torch.rand(2, 3, *shape)
    flow = torch.zeros(2, 3, *shape)
    for affine, field in [(_identity(2), flow), (_identity(2), None), (None, flow), (None, None)]:
        assert (warp(image, affine, field) - image).abs().max() < 1e-5
    assert torch.equal(affine_matrix(**_params(2)), _identity(2))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_translation_moves_a_point_by_k_voxels_along_each_axis(shape, axis):
    k = 3
    point = [n // 2 for n in shape]
    image = torch.zeros(1, 1, *shape)
    image[(0, 0, *point)] = 1.0
    shift = [0.0, 0.0, 0.0]
    shift[axis] = float(k)
    # pull-back: the output at p reads the input at p + t, so the content moves by -t
    expected = list(point)
    expected[axis] -= k
    by_affine = warp(image, affine_matrix(**_params(1, translation=shift)))
    by_flow = warp(image, None, torch.tensor(shift).view(1, 3, 1, 1, 1).expand(1, 3, *shape))
    for moved in (by_affine, by_flow):
        assert moved[(0, 0, *expected)] == pytest.approx(1.0, abs=1e-5)
        assert moved.sum() == pytest.approx(1.0, abs=1e-5)


def test_90_degree_rotation_maps_known_points_on_a_non_cubic_volume():
    shape = (12, 16, 10)
    centre = torch.tensor([(n - 1) / 2 for n in shape])
    rz = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90° about Z
    affine = affine_matrix(**_params(1, rotation=(0.0, 0.0, math.pi / 2)))
    assert torch.allclose(affine[0, :, :3], rz, atol=1e-6)
    sources = [(3, 9, 2), (8, 6, 7), (5, 10, 0)]
    image = torch.zeros(1, 1, *shape)
    for value, q in enumerate(sources, start=1):
        image[(0, 0, *q)] = float(value)
    rotated = warp(image, affine)
    for value, q in enumerate(sources, start=1):
        # the output voxel p reads q = R (p - c) + c, i.e. p = R^T (q - c) + c
        p = (rz.T @ (torch.tensor(q, dtype=torch.float32) - centre) + centre).round().long().tolist()
        assert rotated[(0, 0, *p)] == pytest.approx(float(value), abs=1e-5)
    assert rotated.sum() == pytest.approx(sum(range(1, len(sources) + 1)), abs=1e-4)


def test_sampling_coordinates_are_centred_voxel_indices():
    shape = (5, 6, 7)
    centre = torch.tensor([(n - 1) / 2 for n in shape]).view(1, 3, 1, 1, 1)
    coords = sampling_coordinates(None, None, shape, batch=2) + centre
    assert coords.shape == (2, 3, *shape)
    assert torch.equal(coords[0], identity_grid(shape))


def test_affine_matrix_is_per_sample_differentiable_and_matches_a_hand_built_matrix():
    torch.manual_seed(0)
    params = {k: v + 0.2 * torch.randn_like(v) for k, v in _params(3).items()}
    for value in params.values():
        value.requires_grad_(True)
    matrix = affine_matrix(**params)
    assert matrix.shape == (3, 3, 4)
    for b in range(3):  # each sample gets its own matrix, equal to the one built alone
        alone = affine_matrix(**{k: v[b : b + 1] for k, v in params.items()})
        assert torch.allclose(matrix[b], alone[0], atol=1e-6)
    (matrix * torch.randn_like(matrix)).sum().backward()  # a generic function of the matrix
    for name, value in params.items():
        assert (value.grad.abs() > 0).all(), name  # every parameter of every sample gets a gradient
    # rotations stay orthonormal
    rotation_only = affine_matrix(**_params(1, rotation=(0.3, -0.2, 0.5)))[0, :, :3]
    assert torch.allclose(rotation_only @ rotation_only.T, torch.eye(3), atol=1e-6)


def test_affine_matrix_composes_shear_scale_then_rz_ry_rx():
    c, s = math.cos(0.5), math.sin(0.5)
    about_x = affine_matrix(**_params(1, rotation=(0.5, 0.0, 0.0)))[0, :, :3]
    assert torch.allclose(about_x, torch.tensor([[1.0, 0, 0], [0, c, -s], [0, s, c]]), atol=1e-6)
    params = _params(1, rotation=(0.0, 0.0, 0.5), translation=(1.0, 2.0, 3.0))
    params["scale"] = torch.tensor([[2.0, 1.0, 1.0]])
    params["shear"] = torch.tensor([[math.atan(0.1), 0.0, 0.0, 0.0, 0.0, 0.0]])  # tan = 0.1 at (x, y)
    shear = torch.tensor([[1.0, 0.1, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    rz = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    expected = torch.cat([shear @ torch.diag(torch.tensor([2.0, 1.0, 1.0])) @ rz, torch.tensor([[1.0], [2.0], [3.0]])], 1)
    assert torch.allclose(affine_matrix(**params)[0], expected, atol=1e-6)


def test_flow_is_applied_before_the_affine():
    shape = (9, 9, 9)
    affine = affine_matrix(**_params(1, rotation=(0.0, 0.0, math.pi / 2)))  # (x, y, z) -> (-y, x, z)
    flow = torch.tensor([2.0, 0.0, 0.0]).view(1, 3, 1, 1, 1).expand(1, 3, *shape)
    centre = sampling_coordinates(affine, flow, shape)[0, :, 4, 4, 4]
    # T(p + u(p)) at the centre p = 0: R (2, 0, 0) = (0, 2, 0); the swapped order R p + u would give (2, 0, 0)
    assert torch.allclose(centre, torch.tensor([0.0, 2.0, 0.0]), atol=1e-5)
    image = torch.rand(1, 1, *shape)
    moved = warp(image, affine, flow)
    assert moved[0, 0, 4, 4, 4] == pytest.approx(image[0, 0, 4, 6, 4].item(), abs=1e-5)


def test_warp_under_bf16_autocast_keeps_dtype_and_precision():
    image = torch.rand(1, 2, 12, 16, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = warp(image, _identity(1), torch.zeros(1, 3, 12, 16, 10))
    assert out.dtype == image.dtype
    assert (out - image).abs().max() < 1e-5


def test_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="flow must have shape"):
        warp(torch.rand(1, 1, 8, 8, 8), None, torch.zeros(1, 3, 8, 8, 4))
    with pytest.raises(ValueError, match="affine must have shape"):
        warp(torch.rand(1, 1, 8, 8, 8), torch.eye(3).unsqueeze(0))
