"""The fine-tuning optimiser: SGD with Nesterov momentum 0.99 (nnU-Net) or AdamW, from the config."""

from __future__ import annotations

from typing import Iterable

import torch

from mssl.downstream.config import FinetuneConfig

SGD_MOMENTUM = 0.99


def build_optimizer(parameters: Iterable[torch.nn.Parameter], config: FinetuneConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=SGD_MOMENTUM, nesterov=True, weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
