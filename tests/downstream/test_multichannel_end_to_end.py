"""Two-channel data end to end: GVSL and S²DC pre-train on a two-channel cache and export in_channels 2;
`mssl finetune` and `mssl probe` run on a two-channel labelled dataset; a one-channel encoder on
two-channel data (fine-tuning, probing, exporting, resuming) is a one-line error.

Data: demo CTs subsampled to 32³ (channel 0) with a derived channel 1, the CT mirrored inside the ct
preset's HU window (see tests/multichannel_data.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import write_random_export
from multichannel_data import CASES, msd_datalist, nnunet_raw, single_channel
from typer.testing import CliRunner

from mssl.cli import app
from mssl.config import ConfigError
from mssl.data.prepare import prepare
from mssl.pipelines.pretrain import pretrain
from mssl.weights.exporter import export
from mssl.weights.sidecar import read_sidecar

TINY_UNET = {"name": "unet", "unet_channels": [8, 16, 32]}
TINY_S2DC = {"s2dc.field_size": [64, 64, 32], "s2dc.roi": 32, "s2dc.head_hidden": 32, "s2dc.head_out": 16, "s2dc.queue_size": 8, "s2dc.sinkhorn_iters": 10}
RUN = {"steps": 2, "workers": 0, "progress_bar": False, "backbone": TINY_UNET}


@pytest.fixture(scope="module")
def two_channel_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("two_channel")
    assert prepare(nnunet_raw(root / "raw"), root / "cache", "ct").ok
    return root / "cache"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two training and two test cases, each image a list of two files."""
    return msd_datalist(tmp_path_factory.mktemp("labelled"), CASES, test_cases=CASES[2:])


@pytest.fixture(scope="module")
def one_channel_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random one-channel tiny U-Net with the sidecar `mssl export` writes."""
    return write_random_export(tmp_path_factory.mktemp("export"), TINY_UNET)


@pytest.fixture(scope="module")
def gvsl_export(two_channel_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = pretrain(method="gvsl", data=two_channel_cache, out=tmp_path_factory.mktemp("gvsl") / "run", roi=32, **RUN)
    return export(run)


def test_gvsl_pretrains_on_two_channels_and_the_export_says_so(gvsl_export: Path) -> None:
    sidecar = read_sidecar(gvsl_export)
    assert sidecar.backbone.in_channels == 2 and sidecar.network.args["in_channels"] == 2
    assert sidecar.steps == 2 and sidecar.data.channels == 2
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(gvsl_export)])
    assert result.exit_code == 0 and "in_channels=2" in result.output


def test_s2dc_pretrains_on_two_channels_and_the_export_says_so(two_channel_cache: Path, tmp_path: Path) -> None:
    run = pretrain(method="s2dc", data=two_channel_cache, out=tmp_path / "run", **RUN, **TINY_S2DC)
    sidecar = read_sidecar(export(run))
    assert sidecar.backbone.in_channels == 2 and sidecar.steps == 2


def test_a_config_naming_another_channel_count_is_an_error(two_channel_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config key 'backbone.in_channels': 1, but the cache .* holds 2-channel volumes"):
        pretrain(method="gvsl", data=two_channel_cache, out=tmp_path / "run", roi=32, **{**RUN, "backbone": {**TINY_UNET, "in_channels": 1}})
    assert not (tmp_path / "run").exists()


def test_probes_during_pretraining_on_data_of_another_channel_count_stop_the_run(two_channel_cache: Path, tmp_path: Path) -> None:
    """Two-channel pre-training probed on the package's one-channel demo datalist."""
    from conftest import DEMO_DATA

    with pytest.raises(ConfigError, match=r"^config key 'probe.data': .*dataset.json has 1 channels but the encoder takes 2$"):
        pretrain(method="gvsl", data=two_channel_cache, out=tmp_path / "run", roi=32, probe=DEMO_DATA / "dataset.json",
                 **{**RUN, "probe.train_cases": 1, "probe.test_cases": 1})


def test_finetune_evaluate_and_probe_run_on_two_channels(gvsl_export: Path, labelled: Path, tmp_path: Path) -> None:
    """Evaluating the two-channel run on the one-channel demo CTs is one line, not a convolution error."""
    from conftest import DEMO_DATA

    from mssl.downstream.evaluate import evaluate

    runner = CliRunner()
    result = runner.invoke(app, [
        "finetune", "--data", str(labelled), "--weights", str(gvsl_export), "--out", str(tmp_path / "ft"),
        "--steps", "2", "--roi", "32", "--val-every", "2", "--no-augment",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ft" / "model.json").read_text(encoding="utf-8"))["backbone"]["in_channels"] == 2
    result = runner.invoke(app, ["evaluate", str(tmp_path / "ft"), "--data", str(labelled), "--out", str(tmp_path / "eval"), "--max-cases", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "eval" / "summary.json").is_file()
    with pytest.raises(ValueError, match=r"pt_\d+.nii.gz: case pt_\d+ has 1 channels but the run's network takes 2$"):
        evaluate(run=tmp_path / "ft", data=DEMO_DATA / "dataset.json", out=tmp_path / "eval_ct", max_cases=1)
    result = runner.invoke(app, [
        "probe", "--data", str(labelled), "--weights", str(gvsl_export), "--out", str(tmp_path / "probe"),
        "--train-cases", "2", "--test-cases", "1", "--voxels-per-class", "20", "--fit-steps", "5",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "probe" / "probe.json").read_text(encoding="utf-8"))
    assert 0.0 <= scores["pretrained"]["mean_dice"] <= 1.0 and 0.0 <= scores["random"]["mean_dice"] <= 1.0


def test_a_scratch_network_takes_the_datas_channels(labelled: Path, tmp_path: Path) -> None:
    from mssl.downstream.finetune import finetune

    run = finetune(data=labelled, backbone=TINY_UNET, out=tmp_path / "ft", roi=(32, 32, 32), steps=1, val_every=1, augment=False)
    assert json.loads((run / "model.json").read_text(encoding="utf-8"))["backbone"]["in_channels"] == 2


@pytest.mark.parametrize("command", ["finetune", "probe"])
def test_a_one_channel_encoder_on_two_channel_data_is_one_clear_error(command: str, one_channel_export: Path, labelled: Path, tmp_path: Path) -> None:
    from mssl.downstream.finetune import finetune
    from mssl.downstream.probe import probe

    expected = f"{one_channel_export}: the encoder was pre-trained on 1-channel images but {labelled} has 2 channels; use weights pre-trained on 2-channel data"
    with pytest.raises(ValueError) as error:
        if command == "finetune":
            finetune(data=labelled, weights=one_channel_export, out=tmp_path / "ft", roi=(32, 32, 32), steps=1)
        else:
            probe(data=labelled, weights=one_channel_export, train_cases=1, test_cases=1)
    assert str(error.value) == expected


def test_exporting_a_one_channel_run_whose_cache_now_holds_two_channels_is_an_error(tmp_path: Path) -> None:
    """A run trained on the CTs alone, its cache then prepared again with the derived channel added."""
    cache = tmp_path / "cache"
    assert prepare(single_channel(tmp_path / "ct", CASES[:2]), cache, "ct").ok
    run = pretrain(method="gvsl", data=cache, out=tmp_path / "run", roi=32, **{**RUN, "steps": 1})
    shutil.rmtree(cache)
    assert prepare(nnunet_raw(tmp_path / "raw", CASES[:2]), cache, "ct").ok
    with pytest.raises(ValueError, match=r"the encoder takes 1-channel images but its cache .* now holds 2-channel volumes"):
        export(run)
    with pytest.raises(ConfigError, match=r"config key 'backbone.in_channels': 1, but the cache .* holds 2-channel volumes"):
        pretrain(method="gvsl", data=cache, out=run, roi=32, resume=True, **{**RUN, "steps": 2})
