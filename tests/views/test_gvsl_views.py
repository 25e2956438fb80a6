import math

import pytest
import torch

from mssl.config import GVSLConfig
from mssl.methods.gvsl import spatial_augmentation
from mssl.views import appearance
from mssl.views.appearance import bezier_intensity, damage_appearance, inpaint, local_pixel_shuffle
from mssl.views.spatial_aug import SpatialAugmentation, smooth_noise


DEFAULT = GVSLConfig()
DAMAGE = (DEFAULT.shuffle_prob, DEFAULT.bezier_prob, DEFAULT.inpaint_prob)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(batch: int = 3, shape=(32, 24, 20)) -> torch.Tensor:
    return torch.rand(batch, 1, *shape, generator=_gen(123))


def test_damage_is_deterministic_under_a_seeded_generator():
    images = _images()
    first = damage_appearance(images, *DAMAGE, generator=_gen(7))
    assert torch.equal(first, damage_appearance(images, *DAMAGE, generator=_gen(7)))
    assert not torch.equal(first, damage_appearance(images, *DAMAGE, generator=_gen(8)))


def test_damage_changes_the_image_without_touching_the_input_and_stays_in_range():
    images = _images()
    before = images.clone()
    damaged = damage_appearance(images, *DAMAGE, generator=_gen(0))
    assert torch.equal(images, before)
    assert damaged.shape == images.shape and damaged.dtype == images.dtype
    assert torch.isfinite(damaged).all() and damaged.min() >= 0 and damaged.max() <= 1
    for b in range(images.shape[0]):  # every sample is damaged (in-painting is always on)
        assert not torch.equal(damaged[b], images[b])


def test_z_scored_images_are_damaged_within_their_own_range():
    images = torch.randn(2, 1, 24, 24, 24, generator=_gen(9))
    damaged = damage_appearance(images, *DAMAGE, generator=_gen(0))
    assert torch.isfinite(damaged).all() and not torch.equal(damaged, images)
    assert damaged.min() >= images.min() - 1e-5 and damaged.max() <= images.max() + 1e-5
    assert (damaged < 0).float().mean() > 0.1  # negative intensities survive (no clamp to [0, 1])


def test_each_channel_is_damaged_within_its_own_range():
    """A [0, 1] CT-window channel next to a wide z-scored channel: the wide one must not drag the other out of [0, 1]."""
    images = torch.cat([torch.rand(2, 1, 24, 24, 24, generator=_gen(3)), 10 * torch.randn(2, 1, 24, 24, 24, generator=_gen(4))], dim=1)
    damaged = damage_appearance(images, *DAMAGE, generator=_gen(0))
    assert damaged[:, 0].min() >= 0 and damaged[:, 0].max() <= 1
    assert damaged[:, 1].min() >= images[:, 1].min() - 1e-4 and damaged[:, 1].max() <= images[:, 1].max() + 1e-4
    assert not torch.equal(damaged[:, 0], images[:, 0]) and not torch.equal(damaged[:, 1], images[:, 1])


def test_zero_probabilities_leave_the_image_untouched():
    images = _images()
    assert torch.equal(damage_appearance(images, 0.0, 0.0, 0.0, generator=_gen(0)), images)


def test_pixel_shuffle_only_moves_values_within_a_sample():
    images = torch.randperm(2 * 32 * 24 * 20, generator=_gen(1)).float().view(2, 1, 32, 24, 20)  # all distinct
    shuffled = local_pixel_shuffle(images, _gen(1))
    for b in range(2):  # blocks overlap and are cut from the input, so values move but none is invented
        assert torch.isin(shuffled[b], images[b]).all()
        assert not torch.isin(shuffled[b], images[1 - b]).any()
    changed = (shuffled != images).float().mean()
    assert 0.1 < changed < 0.9


def test_bezier_curve_is_monotone_and_keeps_the_end_points():
    ramp = torch.linspace(0, 1, 4096).view(1, 1, 16, 16, 16).repeat(4, 1, 1, 1, 1)
    mapped = bezier_intensity(ramp, _gen(2)).flatten(1)
    assert (mapped.diff(dim=1) >= -1e-6).all()
    assert torch.allclose(mapped[:, 0], torch.zeros(4), atol=1e-4)
    assert torch.allclose(mapped[:, -1], torch.ones(4), atol=1e-4)
    assert not torch.allclose(mapped, ramp.flatten(1), atol=1e-2)


def test_inpainting_changes_boxes_away_from_the_border_only():
    images = torch.full((2, 1, 40, 40, 40), 2.0)  # out of the noise range: every painted voxel shows
    painted = inpaint(images, _gen(3)) != 2.0
    assert painted.any(dim=(1, 2, 3, 4)).all()
    border = 3
    assert not painted[..., :border, :, :].any() and not painted[..., :, :border, :].any()
    assert not painted[..., :, :, :border].any()


def test_spatial_augmentation_applies_the_same_transform_to_every_input():
    images = _images(2)
    augment = spatial_augmentation(DEFAULT)
    one, scaled, copy = augment(images, 2 * images, images.clone(), generator=_gen(4))
    assert torch.allclose(scaled, 2 * one, atol=1e-6)
    assert torch.equal(copy, one)
    assert not torch.allclose(one, images, atol=1e-2)
    again = augment(images, generator=_gen(4))[0]
    assert torch.equal(again, one)  # deterministic under a generator


def test_spatial_augmentation_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="equal batch and spatial sizes"):
        spatial_augmentation(DEFAULT)(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 4))


def test_elastic_field_is_mild_and_smooth():
    sigma = torch.tensor([10.0])
    field = 512 * smooth_noise(1, (48, 48, 48), sigma, torch.device("cpu"), _gen(5))
    # official (reference/gvsl.md §1.4): std ≈ 1.3 voxels at alpha 512, sigma 10
    assert 0.8 < field.std().item() < 2.0
    assert field.diff(dim=2).abs().max() < 0.5


def test_every_shuffle_block_draws_its_own_permutation():
    shape = (24, 24, 24)  # blocks of 2³ voxels
    index = torch.arange(math.prod(shape)).float().view(1, 1, *shape)  # each voxel holds its own linear index
    shuffled = local_pixel_shuffle(index, _gen(11)).long().flatten()
    target = torch.arange(shuffled.numel())
    moved = shuffled != target
    strides = torch.tensor([shape[1] * shape[2], shape[2], 1])
    displacement = ((shuffled[moved, None] // strides) % 24) - ((target[moved, None] // strides) % 24)  # (M, 3)
    assert displacement.abs().max() <= 1  # values move only within their 2³ block
    # one permutation shared by all blocks moves block element j always by the same vector: ≤ 8 distinct moves;
    # independent permutations give every non-zero move a 2³ block allows
    assert len({tuple(d) for d in displacement.tolist()}) == 26


def test_inpainting_box_sides_span_a_tenth_to_a_fifth_of_each_axis(monkeypatch):
    monkeypatch.setattr(appearance, "INPAINT_CONTINUE", 0.0)  # exactly one box per sample, so it can be measured
    images = torch.full((200, 1, 40, 30, 20), 2.0)
    painted = inpaint(images, _gen(12))[:, 0] != 2.0  # (B, X, Y, Z)
    for axis, n in enumerate((40, 30, 20)):
        others = tuple(a + 1 for a in range(3) if a != axis)
        sides = painted.any(dim=others).sum(-1)  # (B,) extent of the box along ``axis``
        assert sides.min() == n // 10 and sides.max() == n // 5 - 1  # randint(n/10, n/5), as officially


def _augmentation(**ranges) -> SpatialAugmentation:
    return spatial_augmentation(GVSLConfig(**ranges))


def _linear_parts(augment: SpatialAugmentation, shape=(5, 9, 17), batch=1000) -> tuple[torch.Tensor, torch.Tensor]:
    affine, _ = augment.sample(batch, shape, torch.device("cpu"), _gen(13))
    return affine[:, :, :3], affine[:, :, 3]


def test_augmentation_rotations_are_uniform_within_the_configured_range():
    linear, _ = _linear_parts(_augmentation(aug_scale_range=(1.0, 1.0), aug_shear_deg=0.0))
    # R = Rz Ry Rx: angles back from the matrix entries
    about_y = torch.asin(-linear[:, 2, 0])
    about_x = torch.atan2(linear[:, 2, 1], linear[:, 2, 2])
    about_z = torch.atan2(linear[:, 1, 0], linear[:, 0, 0])
    for angles in (about_x, about_y, about_z):
        degrees = torch.rad2deg(angles).abs()
        assert degrees.max() <= 20.0 + 1e-3 and degrees.max() > 19.5
        assert degrees.mean().item() == pytest.approx(10.0, abs=0.5)  # uniform on ±20°


def test_augmentation_scales_shears_and_shifts_stay_within_the_configured_ranges():
    linear, _ = _linear_parts(_augmentation(aug_rotation_deg=0.0, aug_shear_deg=0.0))
    scales = linear.diagonal(dim1=1, dim2=2)
    assert scales.min() >= 0.75 and scales.min() < 0.76 and scales.max() <= 1.25 and scales.max() > 1.24
    linear, shift = _linear_parts(_augmentation(aug_rotation_deg=0.0, aug_scale_range=(1.0, 1.0)))
    off_diagonal = linear[:, ~torch.eye(3, dtype=torch.bool)]
    bound = math.tan(math.radians(10.0))
    assert off_diagonal.abs().max() <= bound + 1e-6 and off_diagonal.abs().max() > 0.97 * bound
    half_extent = torch.tensor([2.0, 4.0, 8.0])  # (size - 1) / 2 of (5, 9, 17)
    ratio = (shift / half_extent).abs()
    assert ratio.max() <= 0.1 + 1e-6 and (ratio.amax(0) > 0.098).all()  # ±10 % of the half extent on each axis


def test_elastic_flow_follows_alpha():
    still = _augmentation(elastic_alpha=(0.0, 0.0)).sample(2, (24, 24, 24), torch.device("cpu"), _gen(14))[1]
    assert torch.equal(still, torch.zeros_like(still))
    flow = _augmentation().sample(8, (32, 32, 32), torch.device("cpu"), _gen(14))[1]
    assert 0 < flow.abs().max() < 10  # α ≤ 512, σ ≥ 10: a few voxels at most


def test_the_method_maps_every_augmentation_range_of_its_config():
    config = GVSLConfig(
        aug_rotation_deg=7, aug_scale_range=(0.9, 1.1), aug_shear_deg=3, aug_shift_fraction=0.3,
        elastic_alpha=(1.0, 2.0), elastic_sigma=(4.0, 5.0),
    )
    assert spatial_augmentation(config) == SpatialAugmentation(
        rotation_deg=7, scale_range=(0.9, 1.1), shear_deg=3, shift_fraction=0.3, elastic_alpha=(1.0, 2.0), elastic_sigma=(4.0, 5.0)
    )
