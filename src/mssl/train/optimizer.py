"""AdamW / Adam over a method's trainable parameters, with no weight decay on what the method exempts."""

from __future__ import annotations

import torch

from mssl.config import OptimConfig
from mssl.methods.base import PretrainMethod


def build_optimizer(method: PretrainMethod, optim: OptimConfig) -> torch.optim.Optimizer:
    """Two parameter groups (decayed, exempt); frozen parameters (EMA teachers) are left out.

    ``optim`` must be resolved (no unset field). Exempt names come from ``method.no_weight_decay()``
    and are matched by parameter identity, so a parameter shared under several names (a backbone
    shared by two objectives) is placed once.
    """
    exempt_names = method.no_weight_decay()
    exempt = {id(p) for n, p in method.named_parameters(remove_duplicate=False) if n in exempt_names}
    decayed, not_decayed = [], []
    for parameter in method.parameters():  # each parameter once
        if parameter.requires_grad:
            (not_decayed if id(parameter) in exempt else decayed).append(parameter)
    groups = [
        {"params": decayed, "weight_decay": optim.weight_decay},
        {"params": not_decayed, "weight_decay": 0.0},
    ]
    optimizer_class = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}[optim.optimizer]
    return optimizer_class([g for g in groups if g["params"]], lr=optim.lr, betas=optim.betas)
