"""Run config: strict validation with messages that name the key, YAML, dotted overrides, flags, recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mssl.config import (
    ConfigError,
    GVSLConfig,
    PretrainConfig,
    S2DCConfig,
    build_config,
    merge_overrides,
    parse_assignment,
)
from mssl.train.pretrain import resolve_config


def test_defaults_validate_and_resolve_to_the_method_recipe() -> None:
    s2dc = resolve_config(method="s2dc")
    assert s2dc.optim.optimizer == "adamw" and s2dc.optim.lr == S2DCConfig().optim.lr
    assert s2dc.optim.weight_decay == 0.1 and s2dc.optim.warmup_steps == 500 and s2dc.optim.schedule == "cosine"
    gvsl = resolve_config(method="gvsl")
    assert (gvsl.optim.optimizer, gvsl.optim.lr, gvsl.optim.schedule) == ("adam", GVSLConfig().optim.lr, "constant")
    assert resolve_config(method="both").objectives == ("s2dc", "gvsl")


def test_explicit_optimiser_values_win_over_the_recipe() -> None:
    config = resolve_config(method="s2dc", lr=1e-3, optimizer="adam")
    assert (config.optim.lr, config.optim.optimizer, config.optim.weight_decay) == (1e-3, "adam", 0.1)


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"'trainer.max_stepz': unknown option"):
        build_config(PretrainConfig, {"trainer": {"max_stepz": 3}})


def test_wrong_value_names_key_expectation_and_value() -> None:
    with pytest.raises(ConfigError) as error:
        resolve_config(steps=0, precision="64", method="simclr")
    message = str(error.value)
    assert "'trainer.max_steps'" in message and "greater than or equal to 1" in message and "(got 0)" in message
    assert "'trainer.precision'" in message and "'32', 'bf16-mixed' or '16-mixed'" in message
    assert "'method'" in message and "'simclr'" in message


def test_cross_field_rule_is_reported_with_its_section() -> None:
    with pytest.raises(ConfigError, match=r"'s2dc'.*multiple of roi \(64, 64, 64\)"):
        resolve_config(method="s2dc", roi=64, **{"s2dc.field_size": [384, 384, 96]})  # 96 is not a multiple of 64


def test_roi_flag_sets_only_the_trained_objectives() -> None:
    config = resolve_config(method="gvsl", roi=32)
    assert config.gvsl.roi == (32, 32, 32) and config.s2dc.roi == S2DCConfig().roi
    both = resolve_config(method="both", roi=64, **{"s2dc.field_size": [128, 128, 64]})
    assert both.s2dc.roi == (64, 64, 64) and both.gvsl.roi == (64, 64, 64)


def test_speed_options_are_off_by_default_and_set_by_their_flags() -> None:
    default = resolve_config()
    assert not default.trainer.compile and not default.backbone.gradient_checkpointing and default.trainer.precision == "32"
    config = resolve_config(compile=True, checkpoint_activations=True, precision="bf16-mixed")
    assert config.trainer.compile and config.backbone.gradient_checkpointing and config.trainer.precision == "bf16-mixed"


def test_yaml_then_flags_then_dotted_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"method": "gvsl", "trainer": {"max_steps": 50, "precision": "bf16-mixed"}, "seed": 3}), encoding="utf-8")
    config = resolve_config(path, steps=7, **{"gvsl.w_smooth": 0.5, "backbone": {"name": "unet", "unet_channels": [8, 16]}})
    assert config.method == "gvsl" and config.seed == 3
    assert config.trainer.max_steps == 7 and config.trainer.precision == "bf16-mixed"
    assert config.gvsl.w_smooth == 0.5 and config.backbone.unet_channels == (8, 16)
    assert PretrainConfig.from_yaml(path, {"seed": 9}).seed == 9


def test_bad_yaml_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="bad.yaml: expected a mapping"):
        PretrainConfig.from_yaml(path)
    with pytest.raises(ConfigError, match="not found"):
        PretrainConfig.from_yaml(tmp_path / "missing.yaml")


def test_dotted_assignment_parsing_and_merging() -> None:
    assert parse_assignment("s2dc.tau_ot=0.05") == ("s2dc.tau_ot", 0.05)
    assert parse_assignment("s2dc.field_size=[128, 128, 64]") == ("s2dc.field_size", [128, 128, 64])
    assert parse_assignment("logging.progress_bar=false") == ("logging.progress_bar", False)
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_assignment("tau_ot")
    with pytest.raises(ConfigError, match="'seed' is a value, not a section"):
        merge_overrides({"seed": 1}, {"seed.x": 2})
    base = {"trainer": {"max_steps": 5}}
    assert merge_overrides(base, {"trainer": {"devices": 2}}) == {"trainer": {"max_steps": 5, "devices": 2}}
    assert base == {"trainer": {"max_steps": 5}}  # inputs are not modified


def test_resolved_config_round_trips_through_yaml(tmp_path: Path) -> None:
    config = resolve_config(method="both", roi=64, **{"s2dc.field_size": [128, 128, 64]}, data="/cache", devices="auto")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
    assert PretrainConfig.from_yaml(path) == config


def test_every_flag_points_at_a_config_key() -> None:
    fields = PretrainConfig.model_fields
    for flag, key in PretrainConfig.FLAT_OPTIONS.items():
        section, _, leaf = key.partition(".")
        assert section in fields, flag
        if leaf:
            assert leaf in fields[section].annotation.model_fields, flag


def test_several_devices_get_plain_ddp() -> None:
    from mssl.train.pretrain import lightning_strategy

    assert lightning_strategy(resolve_config().trainer) == "auto"
    assert lightning_strategy(resolve_config(devices=4).trainer) == "ddp"
    assert lightning_strategy(resolve_config(num_nodes=2, strategy="ddp").trainer) == "ddp"
    assert lightning_strategy(resolve_config(devices=1, strategy="ddp").trainer) == "ddp"


def test_defaults_live_in_the_configs_only() -> None:
    """What a config sets is a required argument of the views, losses and networks it maps to, so no second copy
    of a default can drift from the config's (the arguments left with defaults are the ones no config sets)."""
    import inspect

    from mssl.losses.gvsl import local_ncc_loss
    from mssl.models.backbones import SwinBackbone, UNetBackbone
    from mssl.models.heads import ProjectionHead
    from mssl.models.restoration import RestorationHead
    from mssl.models.zmatch import AffineBounds, AffineBranch, ZMatchHead
    from mssl.views.appearance import damage_appearance
    from mssl.views.s2dc_views import S2DCViewParams
    from mssl.views.spatial_aug import SpatialAugmentation

    unset_by_configs = {"generator", "dropout_path_rate"}
    off_switches = {"use_checkpoint", "checkpoint_activations"}  # memory for time, same results: off unless asked
    mapped = (
        S2DCViewParams, ProjectionHead, SpatialAugmentation, AffineBounds, AffineBranch, ZMatchHead, RestorationHead,
        damage_appearance, local_ncc_loss, SwinBackbone, UNetBackbone,
    )
    defaults = {
        f"{target.__name__}.{name}"
        for target in mapped
        for name, parameter in inspect.signature(target).parameters.items()
        if parameter.default is not inspect.Parameter.empty and name not in unset_by_configs | off_switches
    }
    assert not defaults, f"defaults restated below the configs: {sorted(defaults)}"


def test_resuming_a_run_saved_with_an_integer_roi_sees_no_change(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from mssl.train.pretrain import _check_resume_matches

    config = resolve_config(steps=100_000)
    saved = config.model_dump(mode="json")
    saved["s2dc"]["roi"] = 96  # how RUN/config.yaml stored S²DC's crop before it became a 3-vector
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(saved), encoding="utf-8")
    _check_resume_matches(config, path)
    assert "changed options" not in caplog.text
    _check_resume_matches(config.model_copy(update={"seed": 1}), path)
    assert "changed options seed" in caplog.text
