"""mssl.data.cache: round trip, crops equal windows of the full array, determinism, padding, workers."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import synthetic_ct, write_nifti

from mssl.data.cache import CacheIndex, CropDataset
from mssl.data.errors import DataError
from mssl.data.prepare import prepare
from mssl.data.preprocess import PresetConfig, load_case
from mssl.data.sources import find_cases
from mssl.data.crops import CropRequest

SHAPES = [(40, 36, 24), (30, 34, 28), (44, 30, 26)]


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("source")
    for number, shape in enumerate(SHAPES):
        hu, label = synthetic_ct(shape, seed=number)
        write_nifti(root / "imagesTr" / f"c{number}.nii.gz", hu)
        write_nifti(root / "labelsTr" / f"c{number}.nii.gz", label)
    entries = [
        {"image": f"imagesTr/c{n}.nii.gz", "label": f"labelsTr/c{n}.nii.gz", "split": "train" if n else "test"} for n in range(len(SHAPES))
    ]
    (root / "dataset.json").write_text(__import__("json").dumps({"training": entries}), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def cache(source: Path, tmp_path_factory) -> CacheIndex:
    out = tmp_path_factory.mktemp("cache")
    report = prepare(source, out, PresetConfig(name="ct"))
    assert len(report.written) == len(SHAPES) and not report.failed
    return CacheIndex.open(out)


def test_round_trip_is_byte_exact(source: Path, cache: CacheIndex) -> None:
    for case in find_cases(source):
        expected = load_case(case, cache.preset)
        image, label = cache.image(case.case_id), cache.label(case.case_id)
        assert isinstance(image, np.memmap) and image.dtype == np.float32 and image.flags.c_contiguous
        assert image.tobytes() == expected["image"].tobytes()
        assert label.dtype == np.uint8 and label.tobytes() == expected["label"].tobytes()
        record = cache.case(case.case_id).record
        assert record["shape"] == list(image.shape[1:]) and record["affine"] == expected["affine"]
        assert record["extra"]["split"] in ("train", "test") and record["source_hash"]


def test_index_select_and_hash(cache: CacheIndex) -> None:
    assert [c.case_id for c in cache.select(split="test").cases] == ["c0"]
    assert [c.case_id for c in cache.select(split=["train"], case_ids=["c2", "c0"]).cases] == ["c2"]
    with pytest.raises(KeyError, match="nope"):
        cache.select(case_ids=["nope"])
    again = CacheIndex.open(cache.root)
    assert cache.hash() == again.hash() and len(cache.hash()) == 64
    assert cache.select(case_ids=["c0", "c1"]).hash() != cache.hash()
    reordered = CacheIndex(cache.root, cache.preset, [c.record for c in reversed(cache.cases)])
    assert reordered.hash() == cache.hash()


def test_crops_equal_the_same_window_of_the_full_array(cache: CacheIndex) -> None:
    """Re-derive each crop's position by searching the full array: it must be found exactly."""
    dataset = CropDataset(cache, {"x": CropRequest((16, 12, 8))}, length=6, seed=3)
    for item in range(len(dataset)):
        crop = dataset[item]["x"][0, 0].numpy()  # (16, 12, 8)
        matches = []
        for case in cache.cases:
            full = np.asarray(cache.image(case.case_id))[0]
            windows = np.lib.stride_tricks.sliding_window_view(full, crop.shape)
            matches += [case.case_id for _ in np.argwhere((windows == crop).all(axis=(3, 4, 5)))]
        assert len(matches) >= 1


def test_items_are_pure_functions_of_seed_and_index(cache: CacheIndex) -> None:
    requests = {"pair": CropRequest((16, 16, 16), volumes=2), "one": CropRequest((8, 16, 12))}
    first = CropDataset(cache, requests, length=20, seed=7)
    second = CropDataset(cache, requests, length=20, seed=7)
    for item in (19, 0, 5):  # any order
        a, b = first[item], second[item]
        assert a.keys() == b.keys() == {"pair", "one"}
        assert a["pair"].shape == (2, 1, 16, 16, 16) and a["one"].shape == (1, 1, 8, 16, 12)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(first[1]["pair"], first[2]["pair"])
    assert not torch.equal(first[1]["pair"], CropDataset(cache, requests, length=20, seed=8)[1]["pair"])


def test_volumes_of_one_sample_come_from_different_cases(cache: CacheIndex, monkeypatch) -> None:
    dataset = CropDataset(cache, {"pair": CropRequest((8, 8, 8), volumes=3)}, length=30, seed=0)
    seen: list[str] = []
    original = dataset._crop
    monkeypatch.setattr(dataset, "_crop", lambda case, size, rng: seen.append(case.case_id) or original(case, size, rng))
    for item in range(len(dataset)):
        seen.clear()
        dataset[item]
        assert sorted(seen) == ["c0", "c1", "c2"]


def _crop_start(cache: CacheIndex, crop: np.ndarray) -> tuple[str, tuple[int, ...]]:
    """The case and start of the window of its full array that equals ``crop`` (first match)."""
    for case in cache.cases:
        full = np.asarray(cache.image(case.case_id))[0]
        found = np.argwhere((np.lib.stride_tricks.sliding_window_view(full, crop.shape) == crop).all(axis=(3, 4, 5)))
        if len(found):
            return case.case_id, tuple(int(v) for v in found[0])
    raise AssertionError("crop not found in any case")


@pytest.mark.parametrize("jitter", [0, 2])
def test_corresponding_crops_share_a_relative_position_up_to_the_jitter(cache: CacheIndex, jitter: int) -> None:
    size = (16, 12, 8)
    request = CropRequest(size, volumes=2, corresponding=True, jitter=jitter)
    dataset = CropDataset(cache, {"pair": request}, length=8, seed=4)
    shapes = {c.case_id: c.shape for c in cache.cases}
    for item in range(len(dataset)):
        (case_a, start_a), (case_b, start_b) = (_crop_start(cache, crop[0].numpy()) for crop in dataset[item]["pair"])
        ranges_a = [d - s for d, s in zip(shapes[case_a], size)]
        ranges_b = [d - s for d, s in zip(shapes[case_b], size)]
        for a, b, ra, rb in zip(start_a, start_b, ranges_a, ranges_b):
            # both starts are round(r · range) + a jitter in [-jitter, jitter] for one shared r
            low = max((a - jitter - 0.5) / ra, (b - jitter - 0.5) / rb)
            high = min((a + jitter + 0.5) / ra, (b + jitter + 0.5) / rb)
            assert low <= high + 1e-9


def test_small_volumes_are_padded_with_a_warning(cache: CacheIndex) -> None:
    full = np.asarray(cache.image("c1"))[0]  # (X, Y, Z), smaller than the crop along X and Z
    size = (full.shape[0] + 6, full.shape[1] - 4, full.shape[2] + 3)
    with pytest.warns(UserWarning, match="smaller than the 'big' crop"):
        dataset = CropDataset(cache, {"big": CropRequest(size)}, length=3, seed=0, case_ids=["c1"])
    [pad] = cache.case("c1").pad_value
    for item in range(len(dataset)):
        crop = dataset[item]["big"][0, 0].numpy()
        assert crop.shape == size
        found = False
        for ox in range(7):
            for oz in range(4):
                block = crop[ox : ox + full.shape[0], :, oz : oz + full.shape[2]]
                for sy in range(5):
                    if np.array_equal(block, full[:, sy : sy + size[1]]):
                        outside = crop.copy()
                        outside[ox : ox + full.shape[0], :, oz : oz + full.shape[2]] = pad
                        found = found or bool((outside == pad).all())
        assert found  # the whole volume along padded axes, a window along the other, pad value elsewhere


def test_foreground_bias_centres_crops_on_labelled_voxels(tmp_path: Path) -> None:
    """A 4³ labelled bony blob in a 40³ soft-tissue volume: biased crops always contain it."""
    hu = np.full((40, 40, 40), 40, np.int16)
    label = np.zeros(hu.shape, np.uint8)
    hu[30:34, 5:9, 20:24], label[30:34, 5:9, 20:24] = 700, 1
    hu[0, 0, 0] = -1000  # not constant
    write_nifti(tmp_path / "src" / "blob.nii.gz", hu)
    write_nifti(tmp_path / "src" / "labels" / "blob.nii.gz", label)
    (tmp_path / "list.json").write_text('{"training": [{"image": "src/blob.nii.gz", "label": "src/labels/blob.nii.gz"}]}', encoding="utf-8")
    prepare(tmp_path / "list.json", tmp_path / "cache", PresetConfig(name="ct", foreground_crop=False))
    index = CacheIndex.open(tmp_path / "cache")
    assert len(index.foreground("blob")) == 64

    def hit_rate(bias: float) -> float:
        dataset = CropDataset(index, {"x": CropRequest((8, 8, 8))}, length=50, seed=1, foreground_bias=bias)
        return float(np.mean([dataset[i]["x"].max() > 0.8 for i in range(len(dataset))]))  # 700 HU → 0.85

    assert hit_rate(1.0) == 1.0
    assert hit_rate(0.0) < 0.3


def test_dataset_pickles_without_memory_maps_and_works_in_workers(cache: CacheIndex) -> None:
    dataset = CropDataset(cache, {"x": CropRequest((8, 8, 8))}, length=8, seed=2)
    dataset[0]  # opens memory maps in this process
    clone = pickle.loads(pickle.dumps(dataset))
    assert len(clone.index._maps) == 0
    assert torch.equal(clone[3]["x"], dataset[3]["x"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context="fork")
    batches = list(loader)
    assert torch.equal(torch.cat([b["x"] for b in batches]), torch.stack([dataset[i]["x"] for i in range(8)]))


@pytest.mark.slow
def test_spawned_dataloader_worker_matches(cache: CacheIndex) -> None:
    dataset = CropDataset(cache, {"x": CropRequest((8, 8, 8), volumes=2)}, length=4, seed=5)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=1, multiprocessing_context="spawn")
    assert torch.equal(next(iter(loader))["x"], torch.stack([dataset[i]["x"] for i in range(4)]))


def test_open_memory_maps_are_bounded(cache: CacheIndex, monkeypatch) -> None:
    monkeypatch.setattr("mssl.data.cache.MAX_OPEN_MAPS", 2)
    index = CacheIndex.open(cache.root)
    for case in cache.cases:
        index.image(case.case_id)
    assert list(index._maps) == [("c1", "image_file"), ("c2", "image_file")]
    np.testing.assert_array_equal(index.image("c0"), cache.image("c0"))  # reopened on demand


def test_bad_arguments(cache: CacheIndex, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="foreground_bias"):
        CropDataset(cache, {"x": CropRequest((8, 8, 8))}, length=1, seed=0, foreground_bias=2.0)
    with pytest.raises(DataError, match="no cache index"):
        CacheIndex.open(tmp_path)
    with pytest.raises(IndexError):
        CropDataset(cache, {"x": CropRequest((8, 8, 8))}, length=2, seed=0)[2]
