"""mssl.data.config: prepare's config takes the command's flat preset options and a whole preset section alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from mssl.config import ConfigError, build_config
from mssl.data.config import PrepareConfig, PresetConfig


def test_every_preset_key_is_a_flat_prepare_option() -> None:
    assert set(PrepareConfig.FLAT_OPTIONS.values()) == {f"preset.{key}" for key in PresetConfig.model_fields}
    config = build_config(PrepareConfig, None, source=Path("data/*.nii.gz"), out="cache", preset="mri", spacing="2,2,3", foreground_crop=False)
    assert config.source == "data/*.nii.gz"  # a glob stays as written, not a Path
    assert config.preset == PresetConfig(name="mri", spacing=(2.0, 2.0, 3.0), foreground_crop=False)


def test_a_preset_section_merges_under_flat_options_and_dotted_keys() -> None:
    section = {"source": "data/", "out": "cache", "preset": {"name": "mri", "spacing": 2, "lower": 1}}
    config = build_config(PrepareConfig, section, lower=2, **{"preset.spacing": [4, 4, 3]})
    assert config.preset == PresetConfig(name="mri", spacing=(4.0, 4.0, 3.0), lower=2.0)
    whole = build_config(PrepareConfig, section, preset=PresetConfig(name="none"))  # a whole PresetConfig replaces the section
    assert whole.preset == PresetConfig(name="none")


def test_bad_prepare_values_name_their_key() -> None:
    for options, expected in [({"workers": 0}, "'workers'"), ({"on_error": "ignore"}, "'on_error'"), ({"preset.spacng": 2}, "'preset.spacng': unknown option")]:
        with pytest.raises(ConfigError, match=expected):
            build_config(PrepareConfig, None, source="data/", out="cache", **options)
