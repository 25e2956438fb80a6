"""Both objectives on one shared backbone (``--method both``).

Each objective keeps its own heads and teacher; the backbone is one module shared by all of them.
Crop requests are namespaced ``"{objective}/{key}"`` so two objectives never collide on a key, and
every loss term and metric is reported as ``"{objective}/{term}"``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from mssl.data.crops import CropRequest
from mssl.methods.base import MethodOutput, PretrainMethod

SEPARATOR = "/"


class CombinedMethod(PretrainMethod):
    """Sum of several methods' losses on the backbone they share.

    The shared backbone is stored once in ``state_dict`` (as ``backbone.*``): the copies that each
    objective would otherwise repeat under ``objectives.{name}.backbone.*`` are dropped on save and
    re-created from ``backbone.*`` on load.
    """

    name: ClassVar[str] = "both"

    def __init__(self, objectives: Mapping[str, PretrainMethod]) -> None:
        super().__init__()
        backbones = {id(method.backbone) for method in objectives.values()}
        if len(objectives) < 2 or len(backbones) != 1:
            raise ValueError("CombinedMethod needs at least two objectives built on the same backbone instance")
        self.backbone = next(iter(objectives.values())).backbone  # registered first: parameters are named backbone.*
        self.objectives = nn.ModuleDict(dict(objectives))
        self.register_state_dict_post_hook(_drop_shared_backbone)
        self.register_load_state_dict_pre_hook(_restore_shared_backbone)

    def crop_requests(self) -> dict[str, CropRequest]:
        return {
            f"{name}{SEPARATOR}{key}": request
            for name, method in self.objectives.items()
            for key, request in method.crop_requests().items()
        }

    def forward(self, batch: dict[str, torch.Tensor]) -> MethodOutput:
        losses, terms, metrics, visuals = [], {}, {}, {}
        for name, method in self.objectives.items():
            own = {key: batch[f"{name}{SEPARATOR}{key}"] for key in method.crop_requests()}
            output = method(own)
            losses.append(output.loss)
            terms.update(_prefixed(name, output.terms))
            metrics.update(_prefixed(name, output.metrics))
            visuals.update(_prefixed(name, output.visuals))
        return MethodOutput(loss=torch.stack(losses).sum(), terms=terms, metrics=metrics, visuals=visuals)

    def after_optimizer_step(self, step: int, max_steps: int) -> None:
        for method in self.objectives.values():
            method.after_optimizer_step(step, max_steps)

    def no_weight_decay(self) -> set[str]:
        # names as ``named_parameters(remove_duplicate=False)`` spells them (the engine matches by identity)
        return {f"objectives.{name}.{n}" for name, method in self.objectives.items() for n in method.no_weight_decay()}


def _prefixed(name: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f"{name}{SEPARATOR}{key}": value for key, value in values.items()}


def _drop_shared_backbone(module: CombinedMethod, state_dict: dict[str, Any], prefix: str, local_metadata: Any) -> None:
    copies = tuple(f"{prefix}objectives.{name}.backbone." for name in module.objectives)
    for key in [k for k in state_dict if k.startswith(copies)]:
        del state_dict[key]


def _restore_shared_backbone(
    module: CombinedMethod, state_dict: dict[str, Any], prefix: str, *args: Any
) -> None:
    shared = f"{prefix}backbone."
    for key in [k for k in state_dict if k.startswith(shared)]:
        for name in module.objectives:
            state_dict[f"{prefix}objectives.{name}.backbone.{key[len(shared):]}"] = state_dict[key]
