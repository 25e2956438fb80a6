"""Labelled cases → nnU-Net raw dataset: file layout, dataset.json, kept classes renumbered, geometry kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import DEMO_DATA

from mssl.data.nnunet_raw import label_lookup, write_raw_dataset
from mssl.downstream.datasets import load_dataset

KEEP = ["Mandible", "Brainstem"]  # out of source order on purpose: the raw labels follow this order


@pytest.fixture(scope="module")
def demo():
    return load_dataset(DEMO_DATA / "dataset.json")


def test_kept_classes_are_renumbered_in_the_given_order_and_the_rest_is_background(demo, tmp_path: Path) -> None:
    train, test = demo.splits["train"][:1], demo.splits["test"][:1]
    dataset_json = write_raw_dataset(tmp_path / "Dataset900_Demo", train, demo.class_names, KEEP, test=test, subsample=2)

    meta = json.loads(dataset_json.read_text(encoding="utf-8"))
    assert meta == {"channel_names": {"0": "CT"}, "labels": {"background": 0, "Mandible": 1, "Brainstem": 2}, "numTraining": 1, "file_ending": ".nii.gz"}
    for case, images, labels in ((train[0], "imagesTr", "labelsTr"), (test[0], "imagesTs", "labelsTs")):
        source = sitk.ReadImage(str(case.label))[::2, ::2, ::2]
        written = sitk.ReadImage(str(tmp_path / "Dataset900_Demo" / labels / f"{case.case_id}.nii.gz"))
        image = sitk.ReadImage(str(tmp_path / "Dataset900_Demo" / images / f"{case.case_id}_0000.nii.gz"))
        src, out = sitk.GetArrayFromImage(source), sitk.GetArrayFromImage(written)
        mandible, brainstem = demo.class_names.index("Mandible"), demo.class_names.index("Brainstem")
        assert np.array_equal(out == 1, src == mandible) and np.array_equal(out == 2, src == brainstem)
        assert (out == 1).any() and (out == 2).any() and set(np.unique(out)) == {0, 1, 2}
        for written_image in (written, image):  # every 2nd voxel: twice the spacing, same origin and direction
            assert written_image.GetSpacing() == pytest.approx(tuple(2 * s for s in sitk.ReadImage(str(case.label)).GetSpacing()))
            assert written_image.GetOrigin() == pytest.approx(source.GetOrigin()) and written_image.GetDirection() == source.GetDirection()
        assert image.GetSize() == written.GetSize() == tuple(s // 2 for s in sitk.ReadImage(str(case.image)).GetSize())


def test_unknown_class_and_unlabelled_case_are_refused(demo, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\['Cochlea'\] are not among"):
        label_lookup(demo.class_names, ["Brainstem", "Cochlea"])
    unlabelled = demo.splits["train"][0].__class__(case_id="x", image=demo.splits["train"][0].image)
    with pytest.raises(ValueError, match="case x has no label"):
        write_raw_dataset(tmp_path / "Dataset901_Demo", [unlabelled], demo.class_names)
