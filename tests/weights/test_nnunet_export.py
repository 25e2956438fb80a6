"""`mssl export --format nnunet` loads through nnU-Net's own loader; `mssl nnunet-plans` adapts a target's plans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("nnunetv2")

from nnunetv2.run.load_pretrained_weights import load_pretrained_weights  # noqa: E402
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: E402
from conftest import TINY_UNET  # noqa: E402
from test_export_exporter import make_run  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mssl.cli import app  # noqa: E402
from mssl.config import BackboneConfig  # noqa: E402
from mssl.models.backbones import build_backbone  # noqa: E402
from mssl.weights.nnunet import export_nnunet  # noqa: E402
from mssl.weights.nnunet_plans import PlansError, adapt_plans, plans_spacing  # noqa: E402
from mssl.weights.stem import adapt_input_channels  # noqa: E402

RESENC = BackboneConfig(name="resenc", nnunet={"preset": "tiny"})


def nnunet_network(plans: dict, in_channels: int, classes: int = 3) -> torch.nn.Module:
    """The network nnU-Net's trainer builds from these plans (deep supervision on, as in training)."""
    architecture = plans["configurations"]["3d_fullres"]["architecture"]
    return get_network_from_plans(
        architecture["network_class_name"], architecture["arch_kwargs"], architecture["_kw_requires_import"],
        in_channels, classes, allow_init=True, deep_supervision=True,
    )


@pytest.fixture
def run(tmp_path: Path) -> Path:
    torch.manual_seed(1)
    run, _, _ = make_run(tmp_path, RESENC, method="gvsl")
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    backbone = build_backbone(RESENC)
    with torch.no_grad():  # not nnU-Net's init: a load that silently kept the init would pass otherwise
        for parameter in backbone.parameters():
            parameter.normal_()
    checkpoint["state_dict"] |= {f"method.backbone.{k}": v for k, v in backbone.state_dict().items()}
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    return run


def test_export_loads_through_nnunets_load_pretrained_weights(run: Path):
    weights = export_nnunet(run)
    assert weights == run / "export" / "nnunet_pretrained.pth"
    plans = json.loads((run / "export" / "nnunet_plans.json").read_text(encoding="utf-8"))
    saved = torch.load(weights, weights_only=True)["network_weights"]
    trained = {k.removeprefix("method.backbone."): v for k, v in torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"].items() if k.startswith("method.backbone.")}

    network = nnunet_network(plans, in_channels=1)
    load_pretrained_weights(network, str(weights))
    state = network.state_dict()
    non_seg = [k for k in state if ".seg_layers." not in k]
    assert sorted(non_seg) == sorted(saved) and len(non_seg) > 100
    assert all(torch.equal(state[k], saved[k]) for k in non_seg)
    assert all(torch.equal(saved[k], trained[k.removeprefix("decoder.")] if k.startswith("decoder.encoder.") else trained[k]) for k in saved)
    assert plans["mssl"]["in_channels"] == 1 and plans["mssl"]["total_stride"] == 4
    sidecar = json.loads((run / "export" / "nnunet_pretrained.json").read_text(encoding="utf-8"))
    assert sidecar["backbone"]["name"] == "resenc" and sidecar["stem_adapted_from"] is None
    assert sidecar["parameters"] == sum(p.numel() for p in build_backbone(RESENC).parameters())  # shared encoder once


def test_stem_adapted_to_more_channels_loads_into_a_multichannel_nnunet(run: Path, tmp_path: Path):
    single = torch.load(export_nnunet(run, tmp_path / "one"), weights_only=True)["network_weights"]
    weights = export_nnunet(run, tmp_path / "three", in_channels=3)
    plans = json.loads((tmp_path / "three" / "nnunet_plans.json").read_text(encoding="utf-8"))
    assert plans["mssl"]["in_channels"] == 3
    network = nnunet_network(plans, in_channels=3)
    load_pretrained_weights(network, str(weights))
    stem = "encoder.stem.convs.0.conv.weight"
    torch.testing.assert_close(network.state_dict()[stem], adapt_input_channels(single[stem], 3))
    assert network.state_dict()[stem].shape[1] == 3


def test_cli_export_and_its_errors(run: Path, tmp_path: Path):
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(run), "--format", "nnunet"])
    assert result.exit_code == 0, result.output
    assert "nnunet_pretrained.pth" in result.output
    result = runner.invoke(app, ["export", str(run), "--format", "monai", "--in-channels", "2"])
    assert result.exit_code == 2 and "format='nnunet' only" in result.output
    unet_run, _, _ = make_run(tmp_path / "unet", TINY_UNET)
    result = runner.invoke(app, ["export", str(unet_run), "--format", "nnunet"])
    assert result.exit_code == 2 and "trained backbone 'unet'; --format nnunet needs" in result.output


def test_a_nan_checkpoint_is_refused_naming_the_tensor_and_nothing_is_written(run: Path):
    """The same refusal as the monai/torch exports: a diverged run's weights never reach nnU-Net."""
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    name = next(k for k in checkpoint["state_dict"] if k.startswith("method.backbone.") and k.endswith(".weight"))
    checkpoint["state_dict"][name].view(-1)[0] = float("nan")
    torch.save(checkpoint, last)
    result = CliRunner().invoke(app, ["export", str(run), "--format", "nnunet"])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    # nnU-Net's networks hold a tensor under several names (the decoder's view of the encoder): all are listed
    assert f"{last}: NaN/inf values in " in errors[0] and f"({name.removeprefix('method.backbone.')}, " in errors[0]
    assert not (run / "export").exists()


# ----------------------------------------------------------------------------------------------
# plans for a target dataset
# ----------------------------------------------------------------------------------------------

def target_plans(patch=(40, 48, 56), spacing=(2.5, 1.0, 1.0), norm="CTNormalization") -> dict:
    """The parts of a plans file nnU-Net's planner writes that the adaptation reads or must keep."""
    return {
        "dataset_name": "Dataset501_Tiny",
        "plans_name": "nnUNetPlans",
        "transpose_forward": [0, 1, 2],
        "foreground_intensity_properties_per_channel": {"0": {"mean": 40.0}},
        "configurations": {
            "2d": {"patch_size": [48, 56], "architecture": {}},
            "3d_fullres": {
                "data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 2, "patch_size": list(patch),
                "spacing": list(spacing), "normalization_schemes": [norm],
                "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet", "arch_kwargs": {}},
            },
        },
    }


DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "organ": 1}, "file_ending": ".nii.gz"}


@pytest.fixture
def pretrained(run: Path) -> dict:
    export_nnunet(run)
    return json.loads((run / "export" / "nnunet_plans.json").read_text(encoding="utf-8"))


def test_plans_copy_the_architecture_keep_spacing_and_data_and_fit_the_patch(pretrained: dict):
    pretrained["mssl"]["normalization"] = "CTNormalization"
    adapted = adapt_plans(target_plans(patch=(42, 48, 57)), DATASET_JSON, pretrained, "nnUNetPlans_mssl")
    config = adapted.plans["configurations"]["3d_fullres"]
    assert list(adapted.plans["configurations"]) == ["3d_fullres"] and adapted.plans["plans_name"] == "nnUNetPlans_mssl"
    assert config["architecture"] == pretrained["configurations"]["3d_fullres"]["architecture"]
    assert config["patch_size"] == [40, 48, 56] and config["spacing"] == [2.5, 1.0, 1.0]
    assert config["data_identifier"] == "nnUNetPlans_3d_fullres" and not adapted.needs_preprocessing
    assert adapted.notes == ["patch size [42, 48, 57] → [40, 48, 56] (multiples of the network's total stride 4)"]
    assert adapted.plans["foreground_intensity_properties_per_channel"] == {"0": {"mean": 40.0}}


def test_new_spacing_means_new_preprocessed_data(pretrained: dict):
    pretrained["mssl"]["normalization"] = "CTNormalization"
    adapted = adapt_plans(target_plans(), DATASET_JSON, pretrained, "mine", spacing=(2.0, 2.0, 2.0))
    config = adapted.plans["configurations"]["3d_fullres"]
    assert config["spacing"] == [2.0, 2.0, 2.0] and config["data_identifier"] == "mine_3d_fullres" and adapted.needs_preprocessing


def test_plans_at_another_spacing_than_the_pre_training_say_which_spacing_matches(pretrained: dict):
    # OpenKBP: 4.68 × 4.68 × 3 mm images, which nnU-Net transposes to (y, z, x); the encoder saw 4 × 4 × 3 mm (x, y, z)
    pretrained["mssl"].update(normalization="CTNormalization", spacing=[4.0, 4.0, 3.0])
    target = {**target_plans(spacing=(4.684, 3.0, 4.684)), "transpose_forward": [1, 0, 2]}
    kept = adapt_plans(target, DATASET_JSON, pretrained, "mine")
    assert kept.notes == [
        "spacing [4.684, 3.0, 4.684] (plans' axis order) differs from the pre-training spacing [4.0, 4.0, 3.0] mm (x, y, z): "
        "organs appear at another scale than the encoder learned; --spacing 4,3,4 matches it"
    ]
    assert plans_spacing([4.0, 4.0, 3.0], [1, 0, 2]) == [4.0, 3.0, 4.0] and plans_spacing([1.0, 2.0, 3.0], [0, 1, 2]) == [3.0, 2.0, 1.0]
    matched = adapt_plans(target, DATASET_JSON, pretrained, "mine", spacing=(4.0, 3.0, 4.0))
    assert matched.notes == ["spacing [4.684, 3.0, 4.684] → [4.0, 3.0, 4.0]: preprocess with these plans before training"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"patch_size": (40, 48, 54)}, r"not divisible by the network's total stride 4 \(axes \[54\]\); try \[40, 48, 52\]"),
        ({"patch_size": (4, 4, 4)}, "1-voxel bottleneck"),
        ({"dataset_json": {"channel_names": {"0": "T1", "1": "T2"}}}, r"2 input channel\(s\) \(T1, T2\) but the weights have 1.*--in-channels 2.*scaled by 1/2"),
        ({"norm": "ZScoreNormalization"}, "normalises with ZScoreNormalization but the encoder was pre-trained with the 'ct' preset"),
    ],
)
def test_what_no_plans_can_fix_is_a_clear_error(pretrained: dict, change: dict, message: str):
    pretrained["mssl"].update(preset="ct", normalization="CTNormalization")
    plans = target_plans(norm=change.get("norm", "CTNormalization"))
    with pytest.raises(PlansError, match=message):
        adapt_plans(plans, change.get("dataset_json", DATASET_JSON), pretrained, "mine", patch_size=change.get("patch_size"))


def test_unknown_pretraining_preset_is_a_note_not_a_guess(pretrained: dict):
    assert pretrained["mssl"]["normalization"] is None  # make_run's cache does not exist
    adapted = adapt_plans(target_plans(), DATASET_JSON, pretrained, "mine")
    assert adapted.notes == ["the pre-training intensity preset is unknown (its cache was not found at export time); normalisation not checked"]


def test_cli_writes_plans_next_to_the_targets(run: Path, tmp_path: Path):
    folder = tmp_path / "preprocessed" / "Dataset501_Tiny"
    folder.mkdir(parents=True)
    (folder / "nnUNetPlans.json").write_text(json.dumps(target_plans()), encoding="utf-8")
    (folder / "dataset.json").write_text(json.dumps(DATASET_JSON), encoding="utf-8")
    runner = CliRunner()
    assert runner.invoke(app, ["export", str(run), "--format", "nnunet"]).exit_code == 0
    args = ["nnunet-plans", "--dataset", "501", "--weights", str(run), "--preprocessed", str(tmp_path / "preprocessed")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    written = json.loads((folder / "nnUNetPlans_mssl.json").read_text(encoding="utf-8"))
    assert written["mssl"]["weights"] == str((run / "export" / "nnunet_pretrained.pth").resolve())
    assert f"nnUNetv2_train 501 3d_fullres FOLD -p nnUNetPlans_mssl -pretrained_weights {written['mssl']['weights']}" in result.output.replace("\n", "")
    result = runner.invoke(app, args[:-2] + ["--preprocessed", str(tmp_path)])
    assert result.exit_code == 2 and "no single dataset folder for '501'" in result.output
