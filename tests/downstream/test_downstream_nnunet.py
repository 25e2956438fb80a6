"""Fine-tuning, classification and inspection build nnU-Net's networks for runs pre-trained on them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("dynamic_network_architectures")

from mssl.config import BackboneConfig  # noqa: E402
from mssl.data.demo import demo_dataset, demo_datalist  # noqa: E402
from mssl.models.task_networks import build_classifier, build_segmentation_network, freeze_encoder, output_layer  # noqa: E402
from mssl.models.backbones import build_backbone  # noqa: E402
from mssl.weights.loading import load_pretrained  # noqa: E402
from mssl.weights.safe_io import read_checkpoint, read_weights, write_safetensors  # noqa: E402

PLAINCONV = {"name": "plainconv", "nnunet": {"preset": "tiny"}}
COARSE = (8.0, 8.0, 8.0)  # mm: demo CTs of ~30×50×40 voxels
# tiny sizes for both objectives: 16³ crops, an S²DC field of 2×2×1 crops
TINY_METHODS = {
    "s2dc.roi": 16, "gvsl.roi": [16, 16, 16], "s2dc.field_size": [32, 32, 16],
    "s2dc.head_hidden": 32, "s2dc.head_out": 16, "s2dc.queue_size": 8, "s2dc.sinkhorn_iters": 10,
}
STUDENT = "method.backbone."


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mssl.data.prepare import prepare
    from mssl.data.preprocess import PresetConfig

    out = tmp_path_factory.mktemp("demo_cache")
    report = prepare(str(demo_dataset() / "imagesTr" / "pt_1*.nii.gz"), out, PresetConfig(name="ct", spacing=COARSE))
    assert len(report.written) == 3
    return out


@pytest.fixture(scope="module")
def datalist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two demo training cases and one validation case."""
    folder = tmp_path_factory.mktemp("demo_data")
    meta = json.loads(demo_datalist(folder / "source.json").read_text(encoding="utf-8"))
    train = [e for e in meta["training"] if e["split"] == "train"]
    path = folder / "dataset.json"
    path.write_text(json.dumps({**meta, "training": [train[0], train[1], dict(train[2], split="validation")]}), encoding="utf-8")
    return path


def _pretrain(method: str, cache: Path, out: Path) -> Path:
    from mssl.train.pretrain import pretrain

    return pretrain(method=method, data=str(cache), out=str(out), backbone=PLAINCONV, steps=2, progress_bar=False, **TINY_METHODS)


@pytest.mark.parametrize("method", ["gvsl", "s2dc"])
def test_finetune_from_a_plainconv_pretraining_loads_its_encoder(method: str, demo_cache: Path, datalist: Path, tmp_path: Path) -> None:
    from mssl.downstream.finetune import finetune
    from mssl.downstream.run_files import load_finetuned

    run = _pretrain(method, demo_cache, tmp_path / "run")
    out = finetune(
        data=datalist, weights=run, spacing=COARSE, roi=(16, 16, 16), steps=2, val_every=2, augment=False,
        postprocess=False, out=tmp_path / "ft",
    )
    result = json.loads((out / "result.json").read_text(encoding="utf-8"))
    assert math.isfinite(result["best_val_dice"]) and result["steps"] == 2

    network, description = load_finetuned(out)
    assert description["backbone"]["name"] == "plainconv" and description["method"] == method
    backbone = BackboneConfig(**PLAINCONV)
    # every student tensor of the run has its home in the fine-tuning network; only the task head is new
    trained = {k[len(STUDENT):]: v for k, v in read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"].items() if k.startswith(STUDENT)}
    report = load_pretrained(build_segmentation_network(backbone, 6), run)
    assert sorted(report.loaded) == sorted(trained) and not report.mismatched
    encoder = [k for k in trained if k.startswith("encoder.")]
    assert len(encoder) == 24 and len(report.loaded) == (68 if method == "gvsl" else 24)
    assert set(report.missing) - {"head.weight", "head.bias"} <= {k for k in build_backbone(backbone).state_dict() if k.startswith("decoder.")}
    # fine-tuning started from those tensors: two small AdamW steps moved the encoder only slightly
    for key in encoder:
        torch.testing.assert_close(network.state_dict()[key], trained[key], atol=2e-2, rtol=0)


def test_classifier_and_frozen_encoder_on_nnunets_network() -> None:
    backbone = BackboneConfig(**PLAINCONV)
    network = build_segmentation_network(backbone, num_classes=3)
    assert output_layer(network).out_channels == 3 and network(torch.randn(1, 1, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
    assert set(network.state_dict()) == set(build_backbone(backbone).state_dict()) | {"head.weight", "head.bias"}
    frozen = freeze_encoder(network, backbone)  # 12 parameters, listed twice in the state dict (nnU-Net's all_modules)
    assert frozen == 12 and all(p.requires_grad == (not n.startswith("encoder.")) for n, p in network.named_parameters())

    classifier = build_classifier(backbone, num_outputs=2)
    assert classifier(torch.randn(2, 1, 16, 16, 16)).shape == (2, 2)
    assert freeze_encoder(classifier, backbone) == 12


def test_inspect_loads_a_plainconv_export_into_nnunets_own_network(demo_cache: Path, tmp_path: Path) -> None:
    from mssl.weights.exporter import export
    from mssl.weights.inspect import inspect_weights
    from mssl.runs import sidecar_of

    weights = export(_pretrain("gvsl", demo_cache, tmp_path / "run"))
    report = inspect_weights(weights)
    assert report.target.startswith("dynamic_network_architectures.architectures.unet.PlainConvUNet(")
    assert report.ok and len(report.loaded) == 68 and all(".seg_layers." in k for k in report.missing)

    sidecar = json.loads(sidecar_of(weights).read_text(encoding="utf-8"))
    sidecar["backbone"]["nnunet"]["features_per_stage"] = [10**6, 10**6, 10**6]  # would need terabytes
    sidecar_of(weights).write_text(json.dumps(sidecar), encoding="utf-8")
    with pytest.raises(ValueError, match=r"encoder.json: the backbone description \(plainconv\) does not match the weights \(shapes differ"):
        inspect_weights(weights)
    bare = write_safetensors(read_weights(weights), tmp_path / "bare.safetensors", {})  # no sidecar, none in the header
    with pytest.raises(ValueError, match="--into plainconv needs the sidecar"):
        inspect_weights(bare, into="plainconv")


def test_inspect_reads_the_backbone_of_a_plainconv_run_from_the_run_itself(demo_cache: Path, datalist: Path, tmp_path: Path) -> None:
    """No export, so no sidecar: the pre-training run's config and the fine-tuned run's model.json say plainconv
    (the keys alone would be guessed as the mssl U-Net's, which they are not)."""
    from mssl.downstream.finetune import finetune
    from mssl.weights.inspect import inspect_weights

    plainconv = "dynamic_network_architectures.architectures.unet.PlainConvUNet("
    run = _pretrain("gvsl", demo_cache, tmp_path / "run")
    for weights in (run, run / "checkpoints" / "last.ckpt"):
        report = inspect_weights(weights)
        assert report.target.startswith(plainconv) and len(report.loaded) == 68 and not report.mismatched

    out = finetune(
        data=datalist, backbone=PLAINCONV, spacing=COARSE, roi=(16, 16, 16), steps=1, val_every=1, augment=False,
        postprocess=False, out=tmp_path / "ft",
    )
    for weights in (out, out / "best.safetensors"):
        report = inspect_weights(weights)
        # the whole fine-tuned network: nnU-Net's, plus the task's output layer
        assert report.target.startswith(plainconv) and "fine-tuned seg network" in report.target
        assert len(report.loaded) == 70 and "head.weight" in report.loaded and not (report.mismatched or report.unexpected or report.missing)
