"""nnU-Net's trainer at a CPU budget: its documented override point (a subclass), nothing else changed.

nnU-Net finds trainers by class name (``-tr``), in its own package or in the folders listed in
``nnUNet_extTrainer`` (this folder), and builds them with fixed arguments, so the budget comes from the
environment, set by benchmarks/nnunet_finetune.py: epochs, training and validation iterations per epoch,
and a seed for Python's, NumPy's and torch's generators (nnU-Net seeds nothing; with
``nnUNet_n_proc_DA=0`` its data loading and augmentation run in this process, so the seed fixes the
network's initialisation, the patches and their augmentation). Everything else (SGD 1e-2 poly, Dice + CE,
deep supervision, augmentation, oversampling) is nnU-Net's default.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

BUDGET = {"MSSL_NNUNET_EPOCHS": "num_epochs", "MSSL_NNUNET_ITERATIONS": "num_iterations_per_epoch", "MSSL_NNUNET_VAL_ITERATIONS": "num_val_iterations_per_epoch"}
SEED = "MSSL_NNUNET_SEED"


class nnUNetTrainer_mssl_budget(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming of trainer variants)
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        missing = [name for name in (*BUDGET, SEED) if name not in os.environ]
        if missing:
            raise RuntimeError(f"nnUNetTrainer_mssl_budget: set {', '.join(missing)} (benchmarks/nnunet_finetune.py does)")
        for variable, attribute in BUDGET.items():
            setattr(self, attribute, int(os.environ[variable]))
        seed = int(os.environ[SEED])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
