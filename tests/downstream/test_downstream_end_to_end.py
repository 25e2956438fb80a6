"""finetune → evaluate → probe → benchmark on a handful of real cases at tiny size."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import TINY_UNET_OPTIONS, demo_subset, write_random_export
from mssl.cli import app

TINY_TRAINING = {"roi": (32, 32, 32), "steps": 2, "val_every": 2, "crops_per_case": 1}




@pytest.fixture(scope="module")
def openkbp_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four of the package's demo CTs: two to train on, one to validate (a demo training case), one to test."""
    from conftest import DEMO_DATA

    picks = {"train": ("train", 0, 2), "validation": ("train", 2, 3), "test": ("test", 0, 1)}
    return demo_subset(DEMO_DATA, tmp_path_factory.mktemp("openkbp"), picks)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export of a (random) tiny U-Net with the sidecar `mssl export` writes."""
    return write_random_export(tmp_path_factory.mktemp("export"), TINY_UNET_OPTIONS)


@pytest.fixture(scope="module")
def finetuned(openkbp_small: Path, tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mssl.downstream.finetune import finetune

    return finetune(data=openkbp_small, weights=tiny_export, out=tmp_path_factory.mktemp("ft") / "run", **TINY_TRAINING)


def test_finetune_writes_a_loadable_run(finetuned: Path, tiny_export: Path) -> None:
    from mssl.downstream.run_files import load_finetuned

    network, description = load_finetuned(finetuned)
    assert description["method"] == "test" and len(description["labelled_cases"]) == 2
    assert description["backbone"]["unet_channels"] == [8, 16, 32]
    assert math.isfinite(json.loads((finetuned / "result.json").read_text(encoding="utf-8"))["best_val_dice"])
    # the encoder started from the export: two small steps moved it only slightly
    source = load_file(str(tiny_export))
    key = "encoders.0.0.weight"
    assert torch.allclose(network.state_dict()[key], source[key], atol=1e-2)


def test_evaluate_scores_on_the_input_grid(finetuned: Path, openkbp_small: Path, tmp_path: Path) -> None:
    from mssl.downstream.evaluate import evaluate

    result = evaluate(run=finetuned, data=openkbp_small, out=tmp_path)
    case = json.loads(openkbp_small.read_text(encoding="utf-8"))["training"][-1]
    prediction = nib.load(str(tmp_path / "predictions" / f"{Path(case['image']).name.split('.')[0]}.nii.gz"))
    image = nib.load(case["image"])
    assert prediction.shape == image.shape and np.allclose(prediction.affine, image.affine)
    contoured = set(case["present_labels"])
    for name, values in result.per_class.items():
        assert values["n"] == (1 if name in contoured else 0)
        if name in contoured:
            assert 0.0 <= values["dice"] <= 1.0 and values["hd95"] >= 0.0
    assert (tmp_path / "per_case.csv").read_text(encoding="utf-8").count("\n") == 1 + 2 * len(result.per_class)  # raw and post-processed rows


def test_probe_compares_with_a_random_encoder(openkbp_small: Path, tiny_export: Path, tmp_path: Path) -> None:
    from mssl.downstream.probe import probe

    result = probe(weights=tiny_export, data=openkbp_small, train_cases=2, test_cases=1, voxels_per_class=50, out=tmp_path)
    assert result.pretrained is not None and result.random is not None
    for scores in (result.pretrained, result.random):
        assert 0.0 <= scores.mean_dice <= 1.0
    assert json.loads((tmp_path / "probe.json").read_text(encoding="utf-8"))["test_cases"] == result.test_cases


@pytest.mark.realdata
def test_classification_on_ixi_sex(ixi_dir: Path, tmp_path: Path) -> None:
    from mssl.downstream.evaluate import evaluate
    from mssl.downstream.finetune import finetune

    meta = json.loads((ixi_dir / "dataset.json").read_text(encoding="utf-8"))
    entries = [{**e, "image": str(ixi_dir / e["image"]), "label": str(ixi_dir / e["label"])} for e in meta["training"][:4]]
    data = tmp_path / "dataset.json"
    data.write_text(json.dumps({**meta, "training": entries}), encoding="utf-8")
    run = finetune(task="cls", target="sex", data=data, backbone=TINY_UNET_OPTIONS, roi=(32, 32, 32), steps=2, out=tmp_path / "cls")
    result = evaluate(run=run, data=data)
    assert 0.0 <= result.scores["accuracy"] <= 1.0
    age = finetune(task="cls", target="age", data=data, backbone=TINY_UNET_OPTIONS, roi=(32, 32, 32), steps=1, out=tmp_path / "age")
    assert evaluate(run=age, data=data).scores["mae"] >= 0.0


def test_benchmark_resumes_without_training(openkbp_small: Path, tiny_export: Path, tmp_path: Path) -> None:
    from mssl.pipelines.benchmark import benchmark

    options = dict(
        data=openkbp_small,
        out=tmp_path,
        methods=["scratch", "tiny"],
        runs={"tiny": tiny_export},
        labels=[1],
        seeds=1,
        backbone=TINY_UNET_OPTIONS,
        finetune=TINY_TRAINING,
        classes=["Brainstem", "SpinalCord"],
        probe_options={"train_cases": 1, "test_cases": 1, "voxels_per_class": 20},
    )
    first = benchmark(**options)
    assert first.trained == 2
    weights = sorted(tmp_path.glob("finetune/*/k1/seed0/best.safetensors"))
    stamps = [w.stat().st_mtime_ns for w in weights]
    second = benchmark(**options)
    assert second.trained == 0 and second.dice == first.dice
    assert [w.stat().st_mtime_ns for w in weights] == stamps
    assert "| scratch |" in (tmp_path / "benchmark.md").read_text(encoding="utf-8") and (tmp_path / "label_efficiency.png").is_file()
    with pytest.raises(ValueError, match="other settings"):  # cached runs are never mistaken for another budget
        benchmark(**{**options, "finetune": {**TINY_TRAINING, "steps": 3}})


def test_cli_evaluate_and_clear_errors(finetuned: Path, openkbp_small: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["evaluate", str(finetuned), "--data", str(openkbp_small), "--out", str(tmp_path), "--no-predictions", "--classes", "Brainstem"])
    assert done.exit_code == 0, done.output
    assert "Brainstem" in (tmp_path / "summary.md").read_text(encoding="utf-8")
    bad = runner.invoke(app, ["finetune", "--data", str(openkbp_small), "--roi", "3,4"])
    assert bad.exit_code == 2 and "config key 'roi': expected one number or three" in bad.output
