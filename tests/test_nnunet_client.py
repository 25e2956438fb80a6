"""The real client: stock nnU-Net v2 plans, preprocesses and fine-tunes with an mssl pre-trained ResEnc.

4 OpenKBP cases become an nnU-Net raw dataset; nnU-Net's own fingerprint → plan → preprocess run on it;
mssl's nnunet-plans adapts the plans to an mssl export of a 2-step `--method both` pre-training on
nnU-Net's ResidualEncoderUNet; nnU-Net's trainer loads the export through its own
load_pretrained_weights and trains a few iterations on CPU.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("nnunetv2")

from conftest import DEMO_DATA, SUBPROCESS_ENV, TINY_CACHE_CASES, TINY_PRETRAIN  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mssl.cli import app  # noqa: E402
from mssl.data.nnunet_raw import write_raw_dataset  # noqa: E402
from mssl.downstream.datasets import load_dataset  # noqa: E402

CLIENT = Path(__file__).with_name("nnunet_client.py")
DATASET = "Dataset501_OpenKBPTiny"
CASES = TINY_CACHE_CASES
SHRINK = 2  # every 2nd voxel: 64³ volumes keep nnU-Net's fingerprint, preprocessing and steps cheap
PATCH = (32, 32, 32)
ITERATIONS = 3


@pytest.mark.slow
def test_stock_nnunet_fine_tunes_from_an_mssl_export(tiny_ct_cache: Path, tmp_path: Path) -> None:
    import mssl

    # mssl: pre-train nnU-Net's ResidualEncoderUNet (tiny) with both objectives, export for nnU-Net
    backbone = {"name": "resenc", "nnunet": {"preset": "tiny"}}
    run = mssl.pretrain(method="both", data=tiny_ct_cache, out=tmp_path / "run", steps=2, **{**TINY_PRETRAIN, "backbone": backbone})
    result = CliRunner().invoke(app, ["export", str(run), "--format", "nnunet"])
    assert result.exit_code == 0, result.output
    exported = torch.load(run / "export" / "nnunet_pretrained.pth", weights_only=True)["network_weights"]

    # nnU-Net plans and preprocesses, mssl adapts the plans, nnU-Net's trainer loads the export and trains
    folders = {name: tmp_path / name for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    demo = load_dataset(DEMO_DATA / "dataset.json")
    cases = [case for split in demo.splits.values() for case in split if case.case_id in CASES]
    write_raw_dataset(folders["nnUNet_raw"] / DATASET, cases, demo.class_names, subsample=SHRINK)
    out = tmp_path / "client"
    out.mkdir()
    # nnUNet_n_proc_DA=1: nnU-Net's planner sets its thread count from it (0 is refused)
    env = {**SUBPROCESS_ENV, **{k: str(v) for k, v in folders.items()}, "nnUNet_n_proc_DA": "1", "nnUNet_compile": "false"}
    args = ["501", str(run / "export"), str(out), str(ITERATIONS), *map(str, PATCH)]
    client = subprocess.run([sys.executable, str(CLIENT), *args], env=env, capture_output=True, text=True, timeout=900)
    assert client.returncode == 0, client.stdout[-3000:] + client.stderr[-3000:]

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    plans = json.loads(Path(report["plans_file"]).read_text(encoding="utf-8"))
    config = plans["configurations"]["3d_fullres"]
    assert config["data_identifier"] == f"{report['source_plans']}_3d_fullres"  # nnU-Net's preprocessed data reused
    assert config["architecture"]["network_class_name"].endswith("ResidualEncoderUNet") and config["patch_size"] == list(PATCH)
    assert report["weights"] == str((run / "export" / "nnunet_pretrained.pth").resolve())

    loaded = torch.load(out / "loaded_state.pt", weights_only=True)
    non_seg = sorted(k for k in loaded if ".seg_layers." not in k)
    assert non_seg == sorted(exported)
    assert [k for k in non_seg if not torch.equal(loaded[k], exported[k])] == []
    assert report["network"] == "ResidualEncoderUNet" and report["patch_size"] == list(PATCH)
    assert len(report["losses"]) == ITERATIONS and all(math.isfinite(loss) for loss in report["losses"])
    assert (folders["nnUNet_results"] / DATASET).is_dir()
