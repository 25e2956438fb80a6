import math

import pytest
import torch
from torch.nn import functional as F

from mssl.config import S2DCConfig
from mssl.methods.s2dc import view_params
from mssl.views.correspondence import UNMATCHED, correspondence_matrix, token_correspondence, token_grid_shape
from mssl.views import s2dc_views
from mssl.views.s2dc_views import grid_crops, make_s2dc_views, tokens_to_field
from mssl.views.similarity_warp import random_crop_affines, random_similarity, warp_volume

# the default 384×384×96 field with 32-voxel tokens, scaled down 4× (same 12×12×3 token grid)
FIELD = (96, 96, 24)
STRIDE = 8


def _token_id_field(size, stride):
    """(1, 1, X, Y, Z) field whose every token cell holds its own id + 1 (0 = outside)."""
    grid = token_grid_shape(size, stride)
    ids = torch.arange(1, math.prod(grid) + 1, dtype=torch.float32).reshape(1, 1, *grid)
    return F.interpolate(ids, scale_factor=stride, mode="nearest")


def _cell_content(volume, stride):
    """(B, N) most frequent value inside each token cell of (B, 1, X, Y, Z)."""
    b = volume.shape[0]
    gx, gy, gz = (s // stride for s in volume.shape[2:])
    cells = volume.reshape(b, gx, stride, gy, stride, gz, stride).permute(0, 1, 3, 5, 2, 4, 6)
    return cells.reshape(b, gx * gy * gz, -1).mode(-1).values


def test_correspondences_point_where_the_content_really_lands():
    config = S2DCConfig()
    warps = random_similarity(50, FIELD, config.rotation_deg, config.scale_range, config.shift_fraction, torch.device("cpu"))
    ids = _token_id_field(FIELD, STRIDE).expand(50, -1, -1, -1, -1)
    landed = _cell_content(warp_volume(ids, warps, mode="nearest"), STRIDE) - 1  # (50, N) student token seen in each teacher cell
    match = token_correspondence(warps, FIELD, STRIDE)  # (50, N)
    positive = match != UNMATCHED
    correct = torch.gather(landed, 1, match.clamp(min=0)) == torch.arange(match.shape[1])
    angles = torch.rad2deg(torch.atan2(warps[:, 1, 0], warps[:, 0, 0])).abs()
    large = (angles > 20)[:, None] & positive
    assert large.sum() > 0
    assert (correct & positive).sum() / positive.sum() >= 0.95
    assert (correct & large).sum() / large.sum() >= 0.95
    assert positive.float().mean() > 0.5  # most tokens stay in view for these ranges


def test_identity_warp_matches_every_token_to_itself():
    match = token_correspondence(torch.eye(4, dtype=torch.float64)[None], FIELD, STRIDE)
    assert torch.equal(match[0], torch.arange(match.shape[1]))


def test_tokens_leaving_the_field_are_unmatched():
    shift = torch.eye(4, dtype=torch.float64)[None].clone()
    shift[0, 0, 3] = FIELD[0] / 2  # teacher shows the right half of the field at its left
    match = token_correspondence(shift, FIELD, STRIDE).reshape(*token_grid_shape(FIELD, STRIDE))
    assert (match[:6] == UNMATCHED).all() and (match[6:] != UNMATCHED).all()


@pytest.mark.parametrize("shift", [(22.34, -14.01), (14.0, 17.0), (-8.0, 5.0), (3.0, -30.0)])
def test_translations_match_every_token_that_stays_in_view(shift):
    # sub-cell sample points split evenly between two cells must not leave every token unmatched
    warp = torch.eye(4, dtype=torch.float64)[None].clone()
    warp[0, :2, 3] = torch.tensor(shift, dtype=torch.float64)
    size, stride = (384, 384, 96), 32
    match = token_correspondence(warp, size, stride).reshape(*token_grid_shape(size, stride))
    inner = match[2:-2, 2:-2]  # at most 30 voxels = one cell of shift: these tokens stay in view
    assert (inner != UNMATCHED).all()


def test_correspondence_matrix_has_one_positive_per_matched_row():
    match = torch.tensor([[2, UNMATCHED, 0]])
    assert torch.equal(correspondence_matrix(match, 3)[0], torch.tensor([[0.0, 0, 1], [0, 0, 0], [1, 0, 0]]))


def test_identity_matrix_and_integer_shift_warps():
    volume = torch.rand(2, 1, 8, 6, 4)
    identity = torch.eye(4, dtype=torch.float64).expand(2, 4, 4)
    assert torch.allclose(warp_volume(volume, identity), volume, atol=1e-6)
    shift = identity.clone()
    shift[:, 1, 3] = 2.0  # warped(x, y, z) = volume(x, y + 2, z)
    assert torch.allclose(warp_volume(volume, shift)[:, :, :, :-2], volume[:, :, :, 2:], atol=1e-6)


def test_grid_crops_and_token_mosaic_agree_with_the_whole_field():
    field = torch.rand(2, 3, 32, 16, 16)
    crops = grid_crops(field, 8)  # (2·8, 3, 8, 8, 8)
    assert torch.equal(crops[1], field[0, :, 0:8, 0:8, 8:16])  # crop order x, y, z
    pooled = tokens_to_field(F.avg_pool3d(crops, 4), (4, 2, 2))  # (2, N, 3)
    expected = F.avg_pool3d(field, 4).flatten(2).transpose(1, 2)
    assert torch.allclose(pooled, expected, atol=1e-6)


def test_views_without_augmentation_reproduce_the_grid():
    config = S2DCConfig(
        field_size=(64, 64, 32), roi=32, rotation_deg=0, scale_range=(1, 1), shift_fraction=0,
        crop_rotation_deg=0, crop_scale_range=(1, 1), crop_shift_fraction=0, intensity_shift_prob=0,
    )
    field = torch.rand(2, 1, 64, 64, 32)
    views = make_s2dc_views(field, view_params(config), token_stride=16)
    for crops in (views.student, views.teacher_tokens, views.teacher_global):
        assert torch.allclose(crops, grid_crops(field, 32), atol=1e-5)
    assert torch.equal(views.match, torch.arange(32).expand(2, -1))


def _decompose(matrices: torch.Tensor, centre: torch.Tensor):
    """(N, 4, 4) ``p ↦ c + Rz(θ) S (p − c) + shift`` → angle (deg), per-axis scales, shift, and the linear part."""
    linear = matrices[:, :3, :3]
    angle = torch.rad2deg(torch.atan2(linear[:, 1, 0], linear[:, 0, 0]))
    scales = linear.norm(dim=1)  # column norms of Rz S
    shift = matrices[:, :3, 3] - centre + linear @ centre
    return angle, scales, shift, linear


def test_global_view_gives_each_crop_its_own_mild_affine(monkeypatch):
    config = S2DCConfig(field_size=(64, 64, 32), roi=32, intensity_shift_prob=0)
    drawn = []

    def spy(*args, **kwargs):
        drawn.append((args, kwargs))
        return random_crop_affines(*args, **kwargs)

    monkeypatch.setattr(s2dc_views, "random_crop_affines", spy)
    field = torch.rand(1, 1, 64, 64, 32)
    views = make_s2dc_views(field, view_params(config), token_stride=16)
    assert views.teacher_global.shape == views.student.shape == (4, 1, 32, 32, 32)
    change = (views.teacher_global - views.student).abs().flatten(1).mean(1)
    assert (change > 0).all()
    # resampled from the field, so no zero padding appears at the borders of a shifted crop
    assert (views.teacher_global[:, :, 4:-4, 4:-4] > 0).float().mean() > 0.99
    (args, _), = drawn
    assert args[:5] == ((1, 4), 32, config.crop_rotation_deg, config.crop_scale_range, config.crop_shift_fraction)


def test_crop_affines_stay_within_their_ranges_over_many_draws():
    config = S2DCConfig()  # ±10° about z, scale 0.95–1.05 per axis, in-plane shift ±0.0625 roi
    roi = config.crop_side
    matrices = random_crop_affines(
        (4000,), roi, config.crop_rotation_deg, config.crop_scale_range, config.crop_shift_fraction, torch.device("cpu")
    )
    angle, scales, shift, linear = _decompose(matrices, torch.full((3,), (roi - 1) / 2, dtype=torch.float64))
    assert angle.abs().max() <= 10 + 1e-9 and angle.abs().max() > 9.9
    assert torch.allclose(linear[:, 2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand(4000, 3) * scales[:, 2:])
    assert scales.min() >= 0.95 and scales.max() <= 1.05 and scales.min() < 0.951 and scales.max() > 1.049
    bound = 0.0625 * roi  # 6 voxels at roi 96
    assert shift[:, :2].abs().max() <= bound and shift[:, :2].abs().max() > 0.99 * bound
    assert (shift[:, 2] == 0).all()


def test_token_view_warp_stays_within_its_ranges_over_many_draws():
    config = S2DCConfig()  # rotation ±30° about z, isotropic scale 0.9–1.2, in-plane shift ±0.0625 of the side
    size = (384, 384, 96)
    matrices = random_similarity(4000, size, config.rotation_deg, config.scale_range, config.shift_fraction, torch.device("cpu"))
    centre = torch.tensor([(s - 1) / 2 for s in size], dtype=torch.float64)
    angle, scales, shift, _ = _decompose(matrices, centre)
    assert angle.abs().max() <= 30 + 1e-9 and angle.abs().max() > 29.9
    assert torch.allclose(scales, scales[:, :1].expand(-1, 3))  # isotropic
    assert scales.min() >= 0.9 and scales.max() <= 1.2 and scales.min() < 0.901 and scales.max() > 1.199
    assert shift[:, :2].abs().max() <= 24 and shift[:, :2].abs().max() > 23.8 and (shift[:, 2] == 0).all()


def test_bad_field_size_is_a_clear_error():
    config = S2DCConfig(field_size=(64, 64, 32), roi=32)
    with pytest.raises(ValueError, match="multiple of roi 32"):
        make_s2dc_views(torch.rand(1, 1, 48, 64, 32), view_params(config), token_stride=16)


def test_intensity_shift_is_one_per_warped_field_and_one_per_global_crop():
    still = dict(rotation_deg=0, scale_range=(1, 1), shift_fraction=0, crop_rotation_deg=0, crop_scale_range=(1, 1), crop_shift_fraction=0)
    config = S2DCConfig(field_size=(64, 64, 32), roi=32, intensity_shift_prob=1.0, **still)
    field = torch.rand(2, 1, 64, 64, 32)
    torch.manual_seed(0)
    views = make_s2dc_views(field, view_params(config), token_stride=16)
    for crops in (views.teacher_tokens, views.teacher_global):
        offsets = (crops - views.student).reshape(2, 4, -1)  # (B, K, voxels): a constant per crop
        assert torch.allclose(offsets, offsets[..., :1], atol=1e-5)
        assert offsets.abs().max() <= 0.1 + 1e-6
    token_offsets = (views.teacher_tokens - views.student).reshape(2, 4, -1)[..., 0]
    global_offsets = (views.teacher_global - views.student).reshape(2, 4, -1)[..., 0]
    assert torch.allclose(token_offsets, token_offsets[:, :1], atol=1e-6)  # shared by the crops of a field
    assert not torch.allclose(token_offsets[0], token_offsets[1], atol=1e-4)  # but drawn per field
    assert (global_offsets.std(1) > 1e-3).all()  # each global crop draws its own


def test_the_method_maps_every_view_field_of_its_config():
    config = S2DCConfig(
        field_size=(64, 64, 32), roi=32, rotation_deg=11, scale_range=(0.8, 1.3), shift_fraction=0.02,
        crop_rotation_deg=3, crop_scale_range=(0.9, 1.1), crop_shift_fraction=0.03, intensity_shift=0.4, intensity_shift_prob=0.6,
    )
    assert view_params(config) == s2dc_views.S2DCViewParams(
        crop_side=32, rotation_deg=11, scale_range=(0.8, 1.3), shift_fraction=0.02, crop_rotation_deg=3,
        crop_scale_range=(0.9, 1.1), crop_shift_fraction=0.03, intensity_shift=0.4, intensity_shift_prob=0.6,
    )
