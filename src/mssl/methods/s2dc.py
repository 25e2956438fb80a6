"""S²DC: structure-aware semantic discrepancy and consistency (ICCV 2025), with the fixes of DESIGN §4.

One step: the field is cut into roi³ grid crops (student view); the teacher sees the same grid cut
from a similarity-warped copy of the field (token losses) and every crop under its own mild affine
(global loss). Student tokens are matched to teacher tokens by optimal transport supervised with the
exact geometric correspondences (L_p2p), pulled towards them with neighbourhood-aware weights (L_p2s),
and each student crop is contrasted against its teacher crop, the other crops and a key queue (L_g).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from mssl.config import S2DCConfig
from mssl.losses.s2dc import global_info_nce, p2p_loss, p2s_loss
from mssl.losses.sinkhorn import log_sinkhorn
from mssl.data.crops import CropRequest
from mssl.methods.base import MethodOutput, PretrainMethod
from mssl.models.features import Backbone
from mssl.models.ema import cosine_momentum, ema_update, make_teacher
from mssl.models.heads import ProjectionHead
from mssl.models.queue import KeyQueue
from mssl.views.correspondence import UNMATCHED, correspondence_matrix, token_grid_shape
from mssl.views.s2dc_views import S2DCViewParams, crop_grid_shape, make_s2dc_views, tokens_to_field


def matching_accuracy(cosine: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """Share of matched student tokens whose most similar teacher token is their true correspondence."""
    matched = match != UNMATCHED
    hits = (cosine.argmax(-1) == match) & matched
    return hits.sum().float() / matched.sum().clamp(min=1)


def view_params(config: S2DCConfig) -> S2DCViewParams:
    """The config's grid and teacher-view ranges, as the views take them."""
    return S2DCViewParams(
        crop_side=config.crop_side,
        rotation_deg=config.rotation_deg,
        scale_range=config.scale_range,
        shift_fraction=config.shift_fraction,
        crop_rotation_deg=config.crop_rotation_deg,
        crop_scale_range=config.crop_scale_range,
        crop_shift_fraction=config.crop_shift_fraction,
        intensity_shift=config.intensity_shift,
        intensity_shift_prob=config.intensity_shift_prob,
    )


def _token_grid(tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(B, N, D) field tokens → (B, D, TX, TY, TZ) detached maps for figures."""
    return tokens.detach().transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


class S2DCMethod(PretrainMethod):
    """Student ``backbone`` + token/global heads + learnable dustbin; EMA teacher under ``teacher``."""

    name: ClassVar[str] = "s2dc"

    def __init__(self, backbone: Backbone, config: S2DCConfig) -> None:
        super().__init__()
        stages = len(backbone.pyramid_channels)
        if not -stages <= config.token_stage < stages:
            raise ValueError(f"S2DCConfig.token_stage={config.token_stage} is outside the backbone's {stages} pyramid stages")
        backbone.check_size(config.roi)
        self.config = config
        self.backbone = backbone
        self.token_stride = backbone.pyramid_strides[config.token_stage]
        self.token_head = ProjectionHead(backbone.pyramid_channels[config.token_stage], config.head_hidden, config.head_out)
        self.global_head = ProjectionHead(backbone.bottleneck_channels, config.head_hidden, config.head_out)
        self.dustbin = nn.Parameter(torch.tensor(float(config.dustbin_init)))
        self.teacher = make_teacher(self._student())
        self.queue = KeyQueue(config.queue_size, config.head_out)

    def _student(self) -> nn.ModuleDict:
        """The student modules the teacher mirrors (same order as ``self.teacher``)."""
        return nn.ModuleDict({"backbone": self.backbone, "token_head": self.token_head, "global_head": self.global_head})

    def crop_requests(self) -> dict[str, CropRequest]:
        return {"field": CropRequest(size=self.config.field_size, volumes=1)}

    def forward(self, batch: dict[str, torch.Tensor]) -> MethodOutput:
        field = batch["field"]
        if field.dim() != 6 or field.shape[1] != 1:
            raise ValueError(f"batch['field'] must be (B, 1, C, X, Y, Z), got {tuple(field.shape)}")
        field = field[:, 0]  # (B, C, X, Y, Z)
        config, stage = self.config, self.config.token_stage
        crops = crop_grid_shape(field.shape[2:], config.crop_side)
        num_crops = field.shape[0] * math.prod(crops)
        if num_crops < 2:
            raise ValueError(
                f"S²DC needs at least 2 grid crops per batch (global head BatchNorm, contrast); "
                f"field {tuple(field.shape[2:])} with roi {config.roi} and batch {field.shape[0]} gives 1"
            )
        views = make_s2dc_views(field, view_params(config), self.token_stride)

        features = self.backbone(views.student, decode=False)
        student_tokens = self.token_head(tokens_to_field(features.pyramid[stage], crops))  # (B, N, D)
        student_global = self.global_head(features.bottleneck.mean((2, 3, 4)))  # (B·K, D)
        with torch.no_grad():  # teacher: one pass per view (peak memory of a student-sized batch), only what is used
            token_maps = self.teacher.backbone(views.teacher_tokens, decode=False).pyramid[stage]
            teacher_tokens = self.teacher.token_head(tokens_to_field(token_maps, crops))
            global_maps = self.teacher.backbone(views.teacher_global, decode=False).bottleneck
            teacher_global = self.teacher.global_head(global_maps.mean((2, 3, 4)))

        with torch.autocast(field.device.type, enabled=False):  # .float() alone stays bf16 under autocast
            cosine = student_tokens.float() @ teacher_tokens.float().transpose(1, 2)  # (B, N_s, N_t)
        correspondence = correspondence_matrix(views.match, cosine.shape[2])
        log_plan = log_sinkhorn(cosine / config.tau_ot, self.dustbin, config.sinkhorn_iters)
        terms = {
            "p2p": p2p_loss(log_plan, correspondence),
            "p2s": p2s_loss(cosine, correspondence),
            "global": global_info_nce(student_global, teacher_global, self.queue.valid().clone(), config.tau_global),
        }
        loss = config.w_p2p * terms["p2p"] + config.w_p2s * terms["p2s"] + config.w_g * terms["global"]
        if self.training:  # one teacher key per volume (a random crop) joins the negatives of later steps
            per_volume = math.prod(crops)
            pick = torch.arange(field.shape[0], device=field.device) * per_volume
            pick = pick + torch.randint(per_volume, (field.shape[0],), device=field.device)
            self.queue.enqueue(teacher_global[pick])

        grid = token_grid_shape(tuple(field.shape[2:]), self.token_stride)  # type: ignore[arg-type]
        return MethodOutput(
            loss=loss,
            terms=terms,
            metrics={"match_acc": matching_accuracy(cosine.detach(), views.match)},
            visuals={
                "student_tokens": _token_grid(student_tokens, grid),  # (B, D, TX, TY, TZ)
                "teacher_tokens": _token_grid(teacher_tokens, grid),
                "plan": log_plan.detach().exp(),  # (B, N + 1, N + 1), dustbins last
                "correspondence": views.match,  # (B, N) teacher token per student token, -1 unmatched
                "student_field": field.detach(),
                "teacher_field": views.warped_field,
            },
        )

    def momentum(self, step: int, max_steps: int) -> float:
        """EMA momentum after ``step`` of ``max_steps`` optimiser steps (constant when ema_start == ema_end)."""
        return cosine_momentum(step, max_steps, self.config.ema_start, self.config.ema_end)

    def after_optimizer_step(self, step: int, max_steps: int) -> None:
        ema_update(self.teacher, self._student(), self.momentum(step, max_steps))
