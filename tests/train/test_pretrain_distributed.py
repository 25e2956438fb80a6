"""Ready for plain DDP: no parameter without a gradient, synchronised BatchNorm on GPUs, exports unchanged."""

from __future__ import annotations

import pytest
import torch
import yaml
from monai.networks.nets import SwinUNETR

from conftest import TINY_UNET_OPTIONS
from mssl.config import PretrainConfig, TrainerConfig
from mssl.methods import build_method
from mssl.models.backbones import build_backbone
from mssl.train.pretrain import distribution_options
from mssl.weights.exporter import export
from mssl.weights.safe_io import read_weights
from mssl.weights.sidecar import read_sidecar

BACKBONES = {
    "unet": (TINY_UNET_OPTIONS, 32),
    "swin": ({"name": "swin", "feature_size": 12, "window_size": 4}, 64),
}


def tiny_config(method: str, backbone: str) -> PretrainConfig:
    """Two S²DC crops (or one GVSL pair) of the backbone's smallest cheap size."""
    spec, roi = BACKBONES[backbone]
    s2dc = {"roi": roi, "field_size": [2 * roi, roi, roi], "head_hidden": 32, "head_out": 16, "queue_size": 8, "sinkhorn_iters": 10}
    return PretrainConfig.model_validate({"method": method, "backbone": spec, "s2dc": s2dc, "gvsl": {"roi": [roi] * 3}}).resolved()


@pytest.mark.parametrize(
    ("method", "backbone"), [("s2dc", "unet"), ("s2dc", "swin"), ("gvsl", "unet"), ("both", "unet")]
)
def test_after_one_step_every_trainable_parameter_has_a_gradient(method: str, backbone: str) -> None:
    model = build_method(tiny_config(method, backbone)).train()
    batch = {key: torch.rand(1, request.volumes, 1, *request.size) for key, request in model.crop_requests().items()}
    model(batch).loss.backward()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    decoder_names = build_backbone(tiny_config(method, backbone).backbone).decoder_names
    has_decoder = any(name.split(".")[1] in decoder_names for name in trainable if name.startswith("backbone."))
    assert has_decoder == (method != "s2dc")  # S²DC's student carries no decoder; GVSL's reads it


def _s2dc_run(tmp_path, backbone: str, seed: int = 0):
    """A run folder as `mssl pretrain` leaves it, from the method's real (decoder-less) state."""
    config = tiny_config("s2dc", backbone).model_copy(update={"seed": seed})
    torch.manual_seed(1)
    state = {f"method.{k}": v for k, v in build_method(config).state_dict().items()}
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint = {"state_dict": state, "global_step": 3, "hyper_parameters": {"config": config.model_dump(mode="json")}}
    torch.save(checkpoint, run / "checkpoints" / "last.ckpt")
    (run / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
    return run, config, state


def test_s2dc_exports_keep_every_key_and_shape_and_load_into_monai_swinunetr(tmp_path) -> None:
    run, config, state = _s2dc_run(tmp_path, "swin")
    assert not any(k.startswith(("method.backbone.encoder1.", "method.backbone.decoder1.")) for k in state)
    exported = read_weights(export(run))
    full = build_backbone(config.backbone).state_dict()
    assert {k: v.shape for k, v in exported.items()} == {k: v.shape for k, v in full.items()}
    for key, value in state.items():  # the trained encoder is the student's
        if key.startswith("method.backbone."):
            torch.testing.assert_close(exported[key.removeprefix("method.backbone.")], value)
    network = SwinUNETR(in_channels=1, out_channels=3, feature_size=12, window_size=4, use_v2=True)
    result = network.load_state_dict(exported, strict=False)
    assert result.unexpected_keys == [] and result.missing_keys == ["out.conv.conv.weight", "out.conv.conv.bias"]
    assert read_sidecar(run / "export" / "encoder.safetensors").decoder_trained is False
    # the untrained decoder is the backbone's own initialisation, seeded: the same run exports the same tensors
    again = read_weights(export(run, out=tmp_path / "again"))
    assert all(torch.equal(again[k], exported[k]) for k in exported)


def test_gvsl_exports_say_their_decoder_was_trained(tmp_path) -> None:
    config = tiny_config("gvsl", "unet")
    state = {f"method.{k}": v for k, v in build_method(config).state_dict().items()}
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": state, "hyper_parameters": {"config": config.model_dump(mode="json")}}, run / "checkpoints" / "last.ckpt")
    exported = read_weights(export(run))
    assert all(torch.equal(exported[k], state[f"method.backbone.{k}"]) for k in exported)
    assert read_sidecar(run / "export" / "encoder.safetensors").decoder_trained is True


@pytest.mark.parametrize(
    ("method", "devices", "nodes", "accelerator", "synchronised"),
    [
        ("s2dc", 2, 1, "gpu", True),  # projection heads hold BatchNorm
        ("both", 2, 1, "cuda", True),
        ("s2dc", 1, 2, "gpu", True),  # one device on each of two nodes
        ("gvsl", 2, 1, "gpu", False),  # GroupNorm only: nothing to synchronise
        ("s2dc", 1, 1, "gpu", False),  # one process: nothing to synchronise with
        ("s2dc", 2, 1, "cpu", False),  # torch's SyncBatchNorm has no CPU implementation
    ],
)
def test_batchnorm_is_synchronised_across_gpu_processes(method: str, devices: int, nodes: int, accelerator: str, synchronised: bool) -> None:
    model = build_method(tiny_config(method, "unet"))
    options = distribution_options(TrainerConfig(devices=devices, num_nodes=nodes, accelerator=accelerator), model)
    assert options == {"strategy": "ddp" if devices * nodes > 1 else "auto", "sync_batchnorm": synchronised}


def test_s2dc_checkpoints_with_the_old_student_decoder_still_load_strictly() -> None:
    from mssl.methods.s2dc import S2DCMethod

    config = tiny_config("s2dc", "unet")
    old = S2DCMethod(build_backbone(config.backbone), config.s2dc).state_dict()  # the student kept its decoder
    assert any(k.startswith("backbone.decoders.") for k in old)
    method = build_method(config)
    method.load_state_dict(old, strict=True)
    for key, value in method.state_dict().items():
        torch.testing.assert_close(value, old[key])
