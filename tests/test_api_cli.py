"""The Python API is the CLI: each command's options are keywords its function accepts, with the same values."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from typer.main import get_command

import mssl
from mssl.cli import app
from mssl.config import PretrainConfig
from mssl.data.config import PrepareConfig, PresetConfig
from mssl.config import build_config
from mssl.downstream.config import BenchmarkConfig, EvaluateConfig, FinetuneConfig, ProbeConfig
from mssl.train.pretrain import ROI_FLAG

# command → (API function, config model its **overrides build, flat names it maps)
API = {
    "demo": ("demo", None, {}),
    "prepare": ("prepare", PrepareConfig, PrepareConfig.FLAT_OPTIONS),
    "export": ("export", None, {}),
    "inspect": ("inspect_weights", None, {}),
    "visualize": ("visualize", None, {}),
    "pretrain": ("pretrain", PretrainConfig, {**PretrainConfig.FLAT_OPTIONS, ROI_FLAG: ROI_FLAG}),
    "finetune": ("finetune", FinetuneConfig, FinetuneConfig.FLAT_OPTIONS),
    "evaluate": ("evaluate", EvaluateConfig, {}),
    "probe": ("probe", ProbeConfig, ProbeConfig.FLAT_OPTIONS),
    "benchmark": ("benchmark", BenchmarkConfig, BenchmarkConfig.FLAT_OPTIONS),
}
DEMO = Path(mssl.__file__).parent / "data" / "demo"
# flags about the call itself, not the job: the YAML file, dotted --set overrides, printing choices
PRESENTATION = {"config", "set", "print_config", "keys"}


@pytest.mark.parametrize("command", sorted(API))
def test_every_option_of_a_command_is_a_keyword_of_its_function(command: str) -> None:
    function_name, model, flat = API[command]
    parameters = inspect.signature(getattr(mssl, function_name)).parameters
    fields = set(model.model_fields) if model is not None else set()
    # a trailing underscore only keeps a parameter from shadowing a builtin (compile_, set_)
    options = [p.name.rstrip("_") for p in get_command(app).commands[command].params if p.name.rstrip("_") not in PRESENTATION | {"help"}]
    takes_keywords = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    unknown = [o for o in options if o not in parameters and not (takes_keywords and (o in fields or o in flat))]
    assert not unknown, f"mssl {command} options without a keyword in mssl.{function_name}: {unknown}"


def test_flat_options_reach_their_section() -> None:
    config = build_config(FinetuneConfig, None, data="d.json", backbone="unet", unet_channels=(8, 16), roi=(32, 32, 32))
    assert config.backbone.name == "unet" and config.backbone.unet_channels == (8, 16) and config.roi == (32, 32, 32)
    bench = build_config(BenchmarkConfig, None, data="d.json", roi=(32, 32, 32), finetune_steps="auto", feature_size=24)
    assert bench.finetune == {"roi": (32, 32, 32), "steps": "auto"} and bench.backbone.feature_size == 24


def test_prepare_takes_the_plain_values_of_the_command(tmp_path: Path) -> None:
    """The issue's example: ``mssl.prepare("x.json", out="c", preset="mri", spacing=(8, 8, 8))`` used to fail."""
    two_demo_cts = str(DEMO / "imagesTr" / "pt_1[13]*.nii.gz")
    report = mssl.prepare(two_demo_cts, out=str(tmp_path / "cache"), preset="ct", spacing=(8, 8, 8), a_min=-200, foreground_crop=False)
    assert report.ok and report.written
    index = json.loads((tmp_path / "cache" / "index.json").read_text())
    assert index["preset"]["spacing"] == [8.0, 8.0, 8.0] and index["preset"]["a_min"] == -200.0
    with pytest.raises(ValueError, match="either in the PresetConfig or as keywords"):
        mssl.prepare(two_demo_cts, out=str(tmp_path / "other"), preset=PresetConfig(), spacing=(8, 8, 8))


def test_prepare_takes_a_config_file_under_its_keywords(tmp_path: Path) -> None:
    """``mssl.prepare(config=...)`` ≡ ``mssl prepare --config ...``: the file, then the keywords given."""
    config = tmp_path / "prepare.yaml"
    config.write_text(f"source: {DEMO / 'imagesTr' / 'pt_119.nii.gz'}\npreset: {{name: none, spacing: 2, foreground_crop: false}}\n", encoding="utf-8")
    report = mssl.prepare(out=tmp_path / "cache", config=config, **{"preset.spacing": 8})
    assert report.written == ["pt_119"]
    preset = json.loads((tmp_path / "cache" / "index.json").read_text())["preset"]
    assert (preset["name"], preset["spacing"], preset["foreground_crop"]) == ("none", [8.0, 8.0, 8.0], False)


def test_load_pretrained_prints_its_report_and_the_swin_version_hint(capsys: pytest.CaptureFixture[str]) -> None:
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(0)
    v2 = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, use_v2=True)
    report = mssl.load_pretrained(SwinUNETR(in_channels=1, out_channels=2, feature_size=12), v2.state_dict())  # MONAI's default: v1
    printed = capsys.readouterr().err
    assert len(report.unexpected) == 8 and "swinViT" in printed and "build it with use_v2=True" in printed
    quiet = mssl.load_pretrained(v2, SwinUNETR(in_channels=1, out_channels=2, feature_size=12).state_dict(), verbose=False)
    assert capsys.readouterr().err == "" and quiet.hints == ["the network is SwinUNETR v2 but the weights are v1 (no swinViT.layers*c.* tensors): build it with use_v2=False"]
