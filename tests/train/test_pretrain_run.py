"""Few-step pre-training runs on real cached CT crops: run folder, logs, checkpoints, summary, NaN guard, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from conftest import TINY_PRETRAIN, run_metrics
from mssl.cli import app
from mssl.config import ConfigError
from mssl.methods import METHODS
from mssl.methods.base import MethodOutput, PretrainMethod
from mssl.models.backbones import UNetBackbone
from mssl.train.module import NonFiniteLossError
from mssl.weights.safe_io import read_weights
from mssl.weights.sidecar import read_sidecar

# Test-sized models (DESIGN §10): U-Net (8, 16, 32); GVSL on 32³ pairs; S²DC on a 64×64×32 field of 32³ crops.


@pytest.fixture
def cache(tiny_ct_cache: Path) -> Path:
    return tiny_ct_cache




@pytest.mark.realdata
@pytest.mark.parametrize(
    ("method", "terms"),
    [
        ("gvsl", {"ncc", "restore", "smooth"}),
        ("s2dc", {"p2p", "p2s", "global", "match_acc"}),
        ("both", {"s2dc/p2p", "s2dc/p2s", "s2dc/global", "s2dc/match_acc", "gvsl/ncc", "gvsl/restore", "gvsl/smooth"}),
    ],
)
def test_few_step_run_writes_the_run_folder(cache: Path, tmp_path: Path, method: str, terms: set[str]) -> None:
    import mssl

    steps = 2 if method == "both" else 3
    run = mssl.pretrain(method=method, data=cache, out=tmp_path / "run", steps=steps, checkpoint_every=2, **TINY_PRETRAIN)

    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert config["method"] == method and config["trainer"]["max_steps"] == steps
    assert config["optim"]["lr"] is not None  # resolved from the method's recipe

    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["last.ckpt", "step-0000002.ckpt"]  # periodic every 2 steps; last.ckpt also at the end
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == steps
    assert checkpoint["hyper_parameters"]["config"]["method"] == method
    assert any(key.startswith("method.backbone.encoders.") for key in checkpoint["state_dict"])
    assert checkpoint["optimizer_states"] and checkpoint["lr_schedulers"] and "rng" in checkpoint["mssl"]
    if method != "gvsl":
        assert any("queue" in key for key in checkpoint["state_dict"]) and any("teacher" in key for key in checkpoint["state_dict"])

    rows = run_metrics(run)
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == list(range(steps))
    logged = {key.removeprefix("train/") for key in rows[0]}
    assert terms | {"loss", "lr"} <= logged and "crops_per_s" in logged
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "logs").iterdir())

    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["steps"] == steps and summary["skipped_steps"] == 0
    assert summary["weights"] == "checkpoints/last.ckpt" and len(summary["data_index_hash"]) == 64
    assert {"loss"} | {t for t in terms if "match_acc" not in t} <= set(summary["final_losses"])
    assert all(math.isfinite(v) for v in summary["final_losses"].values())

    # the export says which tensors the method never changed: S²DC's (initialised) decoder, nothing of GVSL's
    weights = mssl.export(run)
    untrained = read_sidecar(weights).untrained
    decoder = sorted(k for k in read_weights(weights) if k.startswith("decoders."))
    assert untrained == (decoder if method == "s2dc" else [])
    report = mssl.load_pretrained(UNetBackbone(1, TINY_PRETRAIN["backbone"]["unet_channels"]), weights, verbose=False)
    assert report.trained_known and sorted(report.untrained) == untrained
    assert "not trained" in str(report) and "pre-trained" in str(report)


def test_a_run_made_with_a_relative_cache_path_works_from_another_directory(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mssl
    from conftest import DEMO_DATA

    monkeypatch.chdir(cache.parent)
    run = mssl.pretrain(method="gvsl", data=Path(cache.name), out=tmp_path / "run", steps=1, **TINY_PRETRAIN)
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["data"]["cache"] == str(cache.resolve())
    monkeypatch.chdir(tmp_path)  # where the relative path names nothing
    # the preset of the volume and GVSL's second image both come from the run's cache
    figures = mssl.visualize(run, DEMO_DATA / "imagesTr" / "pt_182.nii.gz")
    assert [path.name for path in figures] == ["features.png", "registration.png", "curves.png"]
    assert all(path.stat().st_size > 0 for path in figures)


@pytest.mark.realdata
def test_existing_run_is_never_overwritten_without_resume(cache: Path, tmp_path: Path) -> None:
    import mssl

    run = mssl.pretrain(method="gvsl", data=cache, out=tmp_path / "run", steps=1, **TINY_PRETRAIN)
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        mssl.pretrain(method="gvsl", data=cache, out=run, steps=2, **TINY_PRETRAIN)
    with pytest.raises(ConfigError, match="no checkpoint to continue from"):
        mssl.pretrain(method="gvsl", data=cache, out=tmp_path / "fresh", resume=True, **TINY_PRETRAIN)


@pytest.mark.realdata
def test_resume_with_more_steps_continues_logs_and_schedule(cache: Path, tmp_path: Path) -> None:
    import mssl

    run = mssl.pretrain(method="gvsl", data=cache, out=tmp_path / "run", steps=4, checkpoint_every=2, **TINY_PRETRAIN)
    # a crash after the step-2 checkpoint: steps 2-3 were logged but their checkpoints are gone
    for name in ("last.ckpt", "step-0000004.ckpt"):
        (run / "checkpoints" / name).unlink()
    mssl.pretrain(out=run, resume=True, steps=5)  # everything else comes from RUN/config.yaml

    assert [int(r["step"]) for r in run_metrics(run) if r.get("train/loss")] == [0, 1, 2, 3, 4]  # each step once
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 5
    assert checkpoint["lr_schedulers"][0]["lr_lambdas"][0]["max_steps"] == 5  # the schedule follows the new length
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["trainer"]["max_steps"] == 5
    assert json.loads((run / "summary.json").read_text(encoding="utf-8"))["resumed_from_step"] == 2


class NonFiniteAt(PretrainMethod):
    """Wraps a method; its loss is NaN on the listed forward calls (0-based)."""

    name = "nonfinite"

    def __init__(self, inner: PretrainMethod, bad_calls: set[int] | None) -> None:
        super().__init__()
        self.inner, self.backbone, self.bad_calls, self.calls = inner, inner.backbone, bad_calls, 0

    def crop_requests(self):  # noqa: ANN201 - same as the wrapped method
        return self.inner.crop_requests()

    def forward(self, batch: dict[str, torch.Tensor]) -> MethodOutput:
        output = self.inner(batch)
        bad = self.bad_calls is None or self.calls in self.bad_calls
        self.calls += 1
        if bad:
            output.loss = output.loss * float("nan")
        return output


def _nonfinite_gvsl(monkeypatch: pytest.MonkeyPatch, bad_calls: set[int] | None) -> None:
    real = METHODS["gvsl"]
    monkeypatch.setitem(METHODS, "gvsl", lambda backbone, config: NonFiniteAt(real(backbone, config), bad_calls))


@pytest.mark.realdata
def test_nonfinite_loss_skips_the_step_without_touching_the_weights(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import mssl

    _nonfinite_gvsl(monkeypatch, bad_calls={1, 2})
    run = mssl.pretrain(method="gvsl", data=cache, out=tmp_path / "run", steps=4, checkpoint_every=1, keep_checkpoints=-1, **TINY_PRETRAIN)
    assert json.loads((run / "summary.json").read_text(encoding="utf-8"))["skipped_steps"] == 2
    assert sum("non-finite loss, step skipped" in r.message for r in caplog.records) == 2

    def state(step: int) -> dict[str, Any]:
        return torch.load(run / "checkpoints" / f"step-{step:07d}.ckpt", map_location="cpu", weights_only=True)

    after_good, after_skips, after_next = state(1), state(3), state(4)
    for key, value in after_good["state_dict"].items():
        assert torch.equal(value, after_skips["state_dict"][key]), key  # steps 1 and 2 changed nothing
        assert torch.isfinite(value).all()
    moments = lambda ckpt: [s["exp_avg"] for s in ckpt["optimizer_states"][0]["state"].values()]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(moments(after_good), moments(after_skips)))
    assert any(not torch.equal(v, after_next["state_dict"][k]) for k, v in after_skips["state_dict"].items())
    losses = [float(r["train/loss"]) for r in run_metrics(run) if r.get("train/loss")]
    assert [math.isfinite(v) for v in losses] == [True, False, False, True]  # skipped steps log their NaN


@pytest.mark.realdata
def test_nonfinite_loss_in_a_row_aborts_with_a_clear_message(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mssl

    _nonfinite_gvsl(monkeypatch, bad_calls=None)
    with pytest.raises(NonFiniteLossError, match=r"NaN/inf for 3 steps in a row.*lower optim.lr"):
        mssl.pretrain(method="gvsl", data=cache, out=tmp_path / "run", steps=10, max_nonfinite=3, **TINY_PRETRAIN)


def test_cli_help_lists_the_options() -> None:
    result = CliRunner().invoke(app, ["pretrain", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--method", "--data", "--out", "--backbone", "--steps", "--devices", "--strategy", "--precision",
                   "--resume", "--set", "--config", "--grad-clip", "--accumulate", "--workers", "--lr", "--seed",
                   "--compile", "--checkpoint-activations"):
        assert option in result.output, option
    assert "s2dc|gvsl|both" in result.output and "bf16-mixed" in result.output


def test_cli_reports_a_bad_option_in_one_line() -> None:
    result = CliRunner().invoke(app, ["pretrain", "--steps", "0", "--set", "s2dc.tau_ott=1"])
    assert result.exit_code == 2
    assert "'trainer.max_steps'" in result.output and "'s2dc.tau_ott': unknown option" in result.output


@pytest.mark.realdata
def test_cli_run_with_yaml_flags_and_set(cache: Path, tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"method": "gvsl", "backbone": TINY_PRETRAIN["backbone"], "trainer": {"max_steps": 5}}), encoding="utf-8")
    arguments = ["pretrain", "--config", str(config), "--data", str(cache), "--out", str(tmp_path / "run"), "--steps", "2",
                 "--roi", "32", "--workers", "0", "--no-progress", "--set", "gvsl.w_smooth=0.5", "--set", "optim.min_lr_ratio=0.1"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 0, result.output
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["trainer"]["max_steps"] == 2 and saved["gvsl"]["roi"] == [32, 32, 32] and saved["gvsl"]["w_smooth"] == 0.5
    assert "pre-training finished" in result.output and "last.ckpt" in result.output


def test_cli_reports_a_missing_or_empty_cache_before_training(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["pretrain", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "nowhere/index.json: no cache index here" in result.output
    result = CliRunner().invoke(app, ["pretrain", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "'data.cache' is required" in result.output
    assert not (tmp_path / "run").exists()  # nothing written for a run that cannot start


@pytest.mark.realdata
def test_empty_selection_is_named(cache: Path, tmp_path: Path) -> None:
    import mssl
    from mssl.data.errors import DataError

    with pytest.raises(DataError, match="no cases to train on.*'validation'"):
        mssl.pretrain(method="gvsl", data=cache, split="validation", out=tmp_path / "run", **TINY_PRETRAIN)
