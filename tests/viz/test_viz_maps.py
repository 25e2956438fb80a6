"""viz: structure maps, deformation grid, curves and slices on synthetic inputs (fast, no run folder)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY_UNET_CHANNELS
from mssl.models.backbones import UNetBackbone
from mssl.viz.curves import moving_average, plot_curves, read_metrics
from mssl.viz.features import plot_structure_maps, structure_maps
from mssl.viz.registration import deformation_grid, plot_registration
from mssl.viz.slices import slice_centre, slice_specs, take_slice

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5_000


def phantom(shape=(32, 32, 24)) -> torch.Tensor:
    """A bright ellipsoid body with a brighter core on a zero background, (1, X, Y, Z)."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    radius = np.sqrt((grid[0] / 0.7) ** 2 + (grid[1] / 0.6) ** 2 + (grid[2] / 0.8) ** 2)
    image = np.where(radius < 1, 0.4, 0.0) + np.where(radius < 0.4, 0.5, 0.0)
    return torch.from_numpy(image[None].astype(np.float32))


def test_structure_maps_cover_the_body_and_are_drawn(tmp_path):
    image = phantom()
    maps = structure_maps(UNetBackbone(1, TINY_UNET_CHANNELS), image, stride=2, clusters=3)
    assert maps.rgb.shape == (32, 32, 24, 3) and maps.clusters.shape == (32, 32, 24)
    assert maps.rgb.min() >= 0 and maps.rgb.max() <= 1
    body = image[0].numpy() > 0.1
    assert (maps.clusters[~body] == -1).mean() > 0.9  # outside the body is left out (up to upsampling blur)
    assert set(np.unique(maps.clusters[body])) - {-1} == {0, 1, 2}
    assert sum(maps.explained_variance) <= 1.0
    assert_png(plot_structure_maps(maps, tmp_path / "features.png", spacing=(2.0, 2.0, 3.0), title="phantom"))
    with pytest.raises(ValueError, match="strides"):
        structure_maps(UNetBackbone(1, TINY_UNET_CHANNELS), image, stride=8)


def test_slices_are_centred_on_the_body_and_oriented_for_display():
    volume = np.zeros((10, 20, 30))
    volume[2:5, 10:15, 20:23] = 1
    assert slice_centre(volume) == (3, 12, 21)
    assert take_slice(volume, 2, 21).shape == (20, 10)  # axial: rows = Y (up), columns = X
    assert take_slice(np.zeros((10, 20, 30, 3)), 0, 1).shape == (30, 20, 3)
    assert [s.view for s in slice_specs()] == ["axial", "coronal", "sagittal"]
    assert slice_specs((1.0, 1.0, 3.0))[1].aspect == 3.0


def test_deformation_grid_is_identity_without_motion_and_follows_a_shift():
    shape = (6, 7, 8)
    identity = deformation_grid(None, torch.zeros(1, 3, *shape), shape)
    assert identity[2, 3, 4].tolist() == [2.0, 3.0, 4.0]
    shift = torch.zeros(1, 3, 4)
    shift[0, :, :3] = torch.eye(3)
    shift[0, 1, 3] = 1.5  # sample 1.5 voxels further along Y
    moved = deformation_grid(shift, torch.zeros(1, 3, *shape), shape)
    np.testing.assert_allclose(moved - identity, np.broadcast_to([0.0, 1.5, 0.0], identity.shape), atol=1e-5)


def test_registration_figure(tmp_path):
    fixed = phantom((16, 16, 16))[None]
    visuals = {"fixed": fixed, "moving": fixed.roll(2, dims=3), "warped": fixed, "flow": torch.randn(1, 3, 16, 16, 16) * 0.5,
               "affine": torch.cat([torch.eye(3), torch.zeros(3, 1)], 1)[None]}
    assert_png(plot_registration(visuals, tmp_path / "registration.png"))


def test_curves_from_metrics_csv(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    rows = ["epoch,step,train/crops_per_s,train/loss,train/lr,train/ncc"]
    rows += [f"0,{s},1.0,{10 - s},0.001,{0.5 if s % 2 else ''}" for s in range(10)]
    (logs / "metrics.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    series = read_metrics(tmp_path)
    assert set(series) == {"loss", "ncc"}  # lr and throughput are not losses
    assert series["ncc"][0].tolist() == [1, 3, 5, 7, 9]
    np.testing.assert_allclose(moving_average(np.array([1.0, 3.0, 5.0, 7.0]), window=2), [1.0, 2.0, 4.0, 6.0])
    assert_png(plot_curves(tmp_path, tmp_path / "curves.png"))
    with pytest.raises(FileNotFoundError, match="no training log"):
        read_metrics(tmp_path / "absent")


def test_volumes_are_fitted_to_the_encoder_grid_around_the_body():
    from mssl.viz.visualize import fit_to_grid, stride_size

    assert stride_size((67, 110, 80), 32) == (96, 128, 96)
    assert stride_size((300, 40, 33), 16, max_side=192) == (192, 48, 48)
    image = torch.arange(10.0).view(1, 10, 1, 1).expand(1, 10, 4, 2) + 1
    fitted = fit_to_grid(image, (4, 8, 2), centre=(8, 2, 1))
    assert fitted.shape == (1, 4, 8, 2)
    assert fitted[0, :, 2, 0].tolist() == [7.0, 8.0, 9.0, 10.0]  # cut around the centre, kept inside the volume
    assert fitted[0, 0, :2, 0].tolist() == [1.0, 1.0] and fitted[0, 0, 2, 0] == 7.0  # padded with the minimum
