"""What a pre-training method provides to the training engine.

The engine knows methods only through this file: it asks a method which crops it needs, hands it
batches of those crops (already on the training device), back-propagates ``MethodOutput.loss`` and
calls ``after_optimizer_step`` (EMA teachers, queues). Views, augmentation and targets are built
inside the method, on the device, batched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from mssl.data.crops import CropRequest
from mssl.models.features import Backbone


@dataclass
class MethodOutput:
    """One step's result.

    loss: weighted total to back-propagate (0-dim).
    terms: every unweighted loss term by name (0-dim tensors; logged separately).
    metrics: extra scalars worth logging (e.g. S²DC token-matching accuracy).
    visuals: tensors for figures (detached; warped images, flows, plans...).
    """

    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    visuals: dict[str, torch.Tensor] = field(default_factory=dict)


class PretrainMethod(nn.Module):
    """A self-supervised objective around a shared ``backbone``.

    Batches are ``{key: tensor (B, volumes, C, X, Y, Z)}`` for each key of ``crop_requests()``.
    """

    name: ClassVar[str]
    backbone: Backbone

    def crop_requests(self) -> dict[str, CropRequest]:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor]) -> MethodOutput:
        raise NotImplementedError

    def after_optimizer_step(self, step: int, max_steps: int) -> None:
        """Hook after each optimiser step (EMA teacher update); ``step`` counts completed steps."""

    def no_weight_decay(self) -> set[str]:
        """Parameter names exempt from weight decay (norms, biases, learnable scalars)."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1}
