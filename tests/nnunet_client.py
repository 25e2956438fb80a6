"""A user of stock nnU-Net v2 and mssl, run as its own process by test_nnunet_client.py.

nnU-Net reads nnUNet_raw / nnUNet_preprocessed / nnUNet_results when it is first imported, so its
steps run here, in a process started with those variables pointing into the test's tmp_path:

1. nnU-Net's fingerprint → plan → preprocess of the raw dataset (its Python API);
2. ``mssl nnunet-plans`` (its Python API): plans that run the pre-trained network;
3. what ``nnUNetv2_train ID 3d_fullres all -p PLANS -pretrained_weights FILE -device cpu`` does before
   training (nnU-Net's trainer, its own load_pretrained_weights), then a few training iterations.

Usage: python nnunet_client.py DATASET_ID EXPORT_DIR OUT_DIR ITERATIONS PATCH_X PATCH_Y PATCH_Z
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

PLANS_NAME = "nnUNetPlans_mssl"
CONFIGURATION = "3d_fullres"


def plan_and_preprocess(dataset_id: int) -> str:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess

    extract_fingerprints([dataset_id], num_processes=1)
    plans_name = plan_experiments([dataset_id])
    preprocess([dataset_id], plans_name, configurations=(CONFIGURATION,), num_processes=(1,), show_progress_bar=False)
    return plans_name


def main(dataset_id: int, export: Path, out: Path, iterations: int, patch: tuple[int, ...]) -> None:
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    from mssl.weights.nnunet_plans import write_nnunet_plans

    source_plans = plan_and_preprocess(dataset_id)
    plans_file, adapted = write_nnunet_plans(str(dataset_id), export, PLANS_NAME, source_plans, CONFIGURATION, patch_size=patch)

    trainer = get_trainer_from_args(str(dataset_id), CONFIGURATION, "all", plans_identifier=PLANS_NAME, device=torch.device("cpu"))
    weights = adapted.plans["mssl"]["weights"]
    maybe_load_checkpoint(trainer, continue_training=False, validation_only=False, pretrained_weights_file=weights)
    torch.save({k: v.detach().clone() for k, v in trainer.network.state_dict().items()}, out / "loaded_state.pt")

    trainer.on_train_start()
    trainer.on_train_epoch_start()
    losses = [float(trainer.train_step(next(trainer.dataloader_train))["loss"]) for _ in range(iterations)]
    report = {
        "plans_file": str(plans_file),
        "source_plans": source_plans,
        "weights": weights,
        "losses": losses,
        "network": type(trainer.network).__name__,
        "patch_size": list(trainer.configuration_manager.patch_size),
        "batch_size": trainer.batch_size,
    }
    (out / "report.json").write_text(json.dumps(report), encoding="utf-8")


if __name__ == "__main__":
    torch.manual_seed(0)
    dataset_id, export, out, iterations, *patch = sys.argv[1:]
    main(int(dataset_id), Path(export), Path(out), int(iterations), tuple(int(p) for p in patch))
