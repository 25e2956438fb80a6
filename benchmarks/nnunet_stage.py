"""nnU-Net's training and prediction as ``nnUNetv2_train`` / ``nnUNetv2_predict`` run them, at a given thread count.

Their command lines set torch to every CPU core on ``-device cpu``; benchmarks/nnunet_finetune.py needs a
stated budget, so it runs this instead, in a process whose ``nnUNet_*`` variables point into its work
folder. ``train`` is what ``nnUNetv2_train DATASET 3d_fullres all -tr TRAINER -p PLANS
[-pretrained_weights FILE] -device cpu`` does (nnU-Net's own trainer and ``load_pretrained_weights``),
minus the final full-volume validation, which for fold ``all`` would only score the training cases.
``predict`` is ``nnUNetv2_predict -f all`` with sequential pre-processing. The trainer class is
imported from benchmarks/nnunet_trainers rather than found by name: nnU-Net's search imports every
trainer module of its package first, and its Primus trainers need timm → torchvision, which CPU-only
installs remove (README, "Fine-tune in nnU-Net"); its network is built as nnU-Net's predictor builds it.

    python nnunet_stage.py train DATASET PLANS TRAINER THREADS [WEIGHTS]
    python nnunet_stage.py predict DATASET PLANS TRAINER THREADS IMAGES OUT TTA(0|1)
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import torch

TRAINERS = Path(__file__).resolve().parent / "nnunet_trainers"
CONFIGURATION = "3d_fullres"
FOLD = "all"
DEVICE = torch.device("cpu")


def trainer_class(name: str) -> type:
    sys.path.insert(0, str(TRAINERS))
    return getattr(importlib.import_module(name), name)


def train(dataset: str, plans: str, trainer_name: str, weights: str | None) -> None:
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.run.run_training import maybe_load_checkpoint
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    folder = Path(nnUNet_preprocessed) / maybe_convert_to_dataset_name(int(dataset))
    plans_dict = {**load_json(str(folder / f"{plans}.json")), "continue_training": False}
    trainer = trainer_class(trainer_name)(plans=plans_dict, configuration=CONFIGURATION, fold=FOLD, dataset_json=load_json(str(folder / "dataset.json")), device=DEVICE)
    maybe_load_checkpoint(trainer, continue_training=False, validation_only=False, pretrained_weights_file=weights)
    trainer.run_training()


def predict(dataset: str, plans: str, trainer_name: str, images: str, out: str, tta: bool) -> None:
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    model = Path(get_output_folder(int(dataset), trainer_name, plans, CONFIGURATION))
    checkpoint = torch.load(model / f"fold_{FOLD}" / "checkpoint_final.pth", map_location=DEVICE, weights_only=False)
    plans_manager, dataset_json = PlansManager(load_json(str(model / "plans.json"))), load_json(str(model / "dataset.json"))
    configuration = plans_manager.get_configuration(checkpoint["init_args"]["configuration"])
    network = trainer_class(trainer_name).build_network_architecture(
        plans_manager, configuration, determine_num_input_channels(plans_manager, configuration, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False,
    )
    Path(out).mkdir(parents=True, exist_ok=True)
    predictor = nnUNetPredictor(use_mirroring=tta, perform_everything_on_device=False, device=DEVICE, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration, [checkpoint["network_weights"]], dataset_json,
                                    trainer_name, checkpoint["inference_allowed_mirroring_axes"])
    predictor.predict_from_files_sequential(images, out, save_probabilities=False, overwrite=True, folder_with_segs_from_prev_stage=None)


if __name__ == "__main__":
    stage, dataset, plans, trainer_name, threads, *rest = sys.argv[1:]
    torch.set_num_threads(int(threads))
    if stage == "train":
        train(dataset, plans, trainer_name, rest[0] if rest else None)
    elif stage == "predict":
        images, out, tta = rest
        predict(dataset, plans, trainer_name, images, out, tta == "1")
    else:
        sys.exit(f"unknown stage {stage!r} (train or predict)")
