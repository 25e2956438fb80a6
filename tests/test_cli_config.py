"""One config convention on the command line: defaults come from the models, --config/--set work the same
on every command with a config, and sizes/spacings have one type that also reads older spellings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_DATA
from typer.main import get_command
from typer.testing import CliRunner

from mssl.cli import app
from mssl.config import (
    ConfigError,
    GVSLConfig,
    PretrainConfig,
    S2DCConfig,
    Size3,
    build_config,
    config_field,
    default_text,
    option_help,
)
from mssl.data.config import PrepareConfig
from mssl.downstream.config import BenchmarkConfig, EvaluateConfig, FinetuneConfig, ProbeConfig

# command → the model its options set
MODELS = {
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "probe": ProbeConfig,
    "evaluate": EvaluateConfig,
    "benchmark": BenchmarkConfig,
    "prepare": PrepareConfig,
}
# options whose key is neither their name nor in the model's FLAT_OPTIONS
KEYS = {("pretrain", "roi"): "s2dc.roi", ("pretrain", "compile_"): "compile"}
# options that are about the call, not a config key
NOT_CONFIG = {
    "pretrain": {"config", "set_", "print_config", "dry_run"},
    "finetune": {"config", "set_", "print_config"},
    "probe": {"config", "set_", "print_config"},
    "evaluate": {"config", "set_", "print_config"},
    "benchmark": {"config", "set_", "print_config"},
    "prepare": {"config", "set_", "print_config"},
}
COMMANDS = get_command(app).commands


def config_options(command: str) -> list[tuple[object, str]]:
    """(click parameter, config key) of every option of ``command`` that sets a config key."""
    params = [p for p in COMMANDS[command].params if p.name not in NOT_CONFIG[command] | {"help"}]
    return [(p, KEYS.get((command, p.name), p.name)) for p in params]


@pytest.mark.parametrize("command", sorted(MODELS))
def test_every_cli_default_is_the_config_default(command: str) -> None:
    model = MODELS[command]
    for param, key in config_options(command):
        field = config_field(model, key)  # KeyError: an option that maps to no config key
        if param.default is not None:  # None: "the config's", anything else must be the config's value
            assert param.default == field.get_default(call_default_factory=True), f"mssl {command} --{param.name}"
        shown = re.findall(r"\(default: ([^)]*)\)", param.help or "")
        if default_text(field) is not None and param.default is None:
            assert shown == [default_text(field)], f"mssl {command} --{param.name}: help shows {shown}, the model {default_text(field)!r}"


def test_the_help_follows_a_changed_model_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FinetuneConfig.model_fields["lr"], "default", 0.5)
    assert option_help(FinetuneConfig, "lr", "Peak learning rate.") == "Peak learning rate. (default: 0.5)"
    assert option_help(PretrainConfig, "steps") == "Optimiser steps. (default: 100000)"  # the description, the default
    assert option_help(BenchmarkConfig, "finetune_steps", "Steps.") == "Steps. (default: 1000)"  # through the finetune: section


def write_yaml(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def printed(args: list[str]) -> dict:
    result = CliRunner().invoke(app, [*args, "--print-config"])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output)


def test_finetune_yaml_then_flags_then_set(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "ft.yaml", {"data": "d.json", "lr": 0.01, "roi": 64, "batch_size": 4, "backbone": {"name": "unet"}})
    values = printed(["finetune", "--config", str(config), "--batch-size", "3", "--set", "batch_size=5", "--set", "backbone.unet_channels=8,16",
                      "--spacing", "2", "--set", "roi=[32, 32, 16]"])
    assert values["data"] == "d.json" and values["lr"] == 0.01  # from the file
    assert values["batch_size"] == 5  # --set beats the flag, which beats the file
    assert values["roi"] == [32, 32, 16] and values["spacing"] == [2.0, 2.0, 2.0]
    assert values["backbone"]["name"] == "unet" and values["backbone"]["unet_channels"] == [8, 16]


def test_probe_and_evaluate_take_the_same_three_layers(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "probe.yaml", {"data": "d.json", "train_cases": 2, "fit_steps": 50, "size": "64,64,32"})
    values = printed(["probe", "--config", str(config), "--fit-steps", "60", "--set", "test_cases=3", "--classes", "Brainstem,Mandible"])
    assert (values["train_cases"], values["fit_steps"], values["test_cases"]) == (2, 60, 3)
    assert values["size"] == [64, 64, 32] and values["classes"] == ["Brainstem", "Mandible"]
    config = write_yaml(tmp_path / "eval.yaml", {"data": "d.json", "split": "validation", "tta": False})
    values = printed(["evaluate", "runs/ft", "--config", str(config), "--set", "nsd_tolerance_mm=1.5", "--no-predictions"])
    assert (values["run"], values["split"], values["tta"], values["save_predictions"], values["nsd_tolerance_mm"]) == ("runs/ft", "validation", False, False, 1.5)


def test_print_config_marks_missing_required_keys() -> None:
    result = CliRunner().invoke(app, ["finetune", "--print-config"])
    assert result.exit_code == 0 and "data: null  # required" in result.output


def test_a_bad_set_names_its_key(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["probe", "--data", "d.json", "--set", "size=3,4", "--print-config"])
    assert result.exit_code == 2 and "config key 'size': expected one number or three" in result.output
    result = CliRunner().invoke(app, ["evaluate", "run", "--data", "d.json", "--set", "tta_typo=1", "--print-config"])
    assert result.exit_code == 2 and "'tta_typo': unknown option" in result.output


def test_prepare_print_config_takes_the_file_then_flags_then_set(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "prepare.yaml", {"source": "data/", "preset": {"name": "mri", "spacing": 2, "lower": 1}, "workers": 2, "on_error": "stop"})
    values = printed(["prepare", "--config", str(config), "-o", "cache", "--spacing", "4", "--workers", "3", "--set", "preset.spacing=[6, 6, 8]", "--set", "on_error=skip"])
    assert (values["source"], values["out"]) == ("data/", "cache")  # the file's, the flag's
    assert values["preset"]["name"] == "mri" and values["preset"]["lower"] == 1.0  # the file's
    assert values["workers"] == 3  # the flag beats the file
    assert values["preset"]["spacing"] == [6.0, 6.0, 8.0] and values["on_error"] == "skip"  # --set beats the flag and the file
    assert values["preset"]["a_min"] == -1000.0 and values["base_dir"] is None  # the model's defaults
    assert printed(["prepare", "data/", "--set", "preset=none"])["preset"]["name"] == "none"  # --set of the flat name


def test_prepare_caches_with_the_file_the_flags_and_set_combined(tmp_path: Path) -> None:
    two_demo_cts = str(DEMO_DATA / "imagesTr" / "pt_1[13]*.nii.gz")
    config = write_yaml(tmp_path / "prepare.yaml", {"source": two_demo_cts, "preset": {"name": "mri", "spacing": 2, "lower": 1}})
    cache = tmp_path / "cache"
    result = CliRunner().invoke(app, ["prepare", "--config", str(config), "--out", str(cache), "--spacing", "4", "--lower", "2", "--set", "preset.spacing=[8,8,6]"])
    assert result.exit_code == 0, result.output
    index = json.loads((cache / "index.json").read_text(encoding="utf-8"))
    assert (index["preset"]["name"], index["preset"]["lower"], index["preset"]["spacing"]) == ("mri", 2.0, [8.0, 8.0, 6.0])
    assert len(index["cases"]) == 2 and all(case["spacing"] == pytest.approx([8.0, 8.0, 6.0]) for case in index["cases"])


def test_a_misspelt_prepare_key_is_one_line_naming_it(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "prepare.yaml", {"source": "data/", "workrs": 2})
    for args, key in [(["--config", str(config)], "'workrs'"), (["data/", "--set", "preset.spacng=2"], "'preset.spacng'")]:
        result = CliRunner().invoke(app, ["prepare", *args, "--out", str(tmp_path / "cache")])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and key in lines[0] and "unknown option" in lines[0], result.output
    assert not (tmp_path / "cache").exists()  # refused before anything is written


@pytest.mark.parametrize("text", [96, "96", "96,96,96", "96x96x96", "96 96 96", [96, 96, 96], [96], (96, 96, 96)])
def test_size3_reads_every_spelling(text: object) -> None:
    assert build_config(FinetuneConfig, None, data="d.json", roi=text).roi == (96, 96, 96)


def test_size3_refusals_name_the_key() -> None:
    for bad, expected in [("3,4", "one number or three"), ("0", "greater than 0"), ("a,b,c", "valid integer"), (96.5, "valid integer")]:
        with pytest.raises(ConfigError, match=f"'roi.*{expected}"):
            build_config(FinetuneConfig, None, data="d.json", roi=bad)
    assert build_config(FinetuneConfig, None, data="d.json", spacing="1.5,1.5,2").spacing == (1.5, 1.5, 2.0)


def test_an_old_run_config_with_an_integer_roi_still_loads(tmp_path: Path) -> None:
    saved = PretrainConfig().model_dump(mode="json")
    saved["s2dc"]["roi"] = 64  # how RUN/config.yaml stored S²DC's crop before it became a 3-vector
    saved["s2dc"]["field_size"] = [256, 256, 64]
    path = write_yaml(tmp_path / "config.yaml", saved)
    config = PretrainConfig.from_yaml(path)
    assert config.s2dc.roi == (64, 64, 64) and config.s2dc.crop_side == 64
    assert PretrainConfig.from_yaml(write_yaml(tmp_path / "again.yaml", config.model_dump(mode="json"))) == config


def test_s2dc_roi_is_a_cube_and_alone_keeps_the_papers_grid() -> None:
    assert S2DCConfig(roi=32).field_size == (128, 128, 32)
    assert S2DCConfig(roi="48,48,48").field_size == (192, 192, 48)
    with pytest.raises(ValueError, match="roi must be a cube for S²DC"):
        S2DCConfig(roi=(64, 64, 32), field_size=(128, 128, 64))
    assert GVSLConfig(roi="64,64,32").roi == (64, 64, 32)  # GVSL crops need not be cubes


def test_benchmark_sections_are_checked_when_the_config_is_built() -> None:
    with pytest.raises(ConfigError, match="finetune.*roi: expected one number or three"):
        build_config(BenchmarkConfig, None, data="d.json", roi="3,4")
    with pytest.raises(ConfigError, match="probe_options.*train_casez"):
        build_config(BenchmarkConfig, None, data="d.json", probe_options={"train_casez": 2})


def test_the_one_size_type_is_the_cli_reader() -> None:
    from pydantic import TypeAdapter

    assert TypeAdapter(Size3).validate_python("128,128,64") == (128, 128, 64)
    result = CliRunner().invoke(app, ["nnunet-plans", "--dataset", "x", "--weights", ".", "--patch-size", "32,32"])
    assert result.exit_code == 2 and "expected one number or three" in result.output
