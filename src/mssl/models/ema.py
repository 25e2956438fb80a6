"""Exponential-moving-average teachers and their momentum schedule."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from mssl.models.features import Backbone


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen deep copy of ``student`` (no gradients ever reach it); backbones lose their decoder.

    Every teacher pass is encoder-only, so each ``Backbone`` inside is copied without its decoder.
    """
    teacher = copy.deepcopy(student)
    for name, module in student.named_children():
        if isinstance(module, Backbone):
            setattr(teacher, name, module.encoder_copy())
    teacher.requires_grad_(False)
    return teacher


def cosine_momentum(step: int, max_steps: int, start: float, end: float) -> float:
    """Momentum rising from ``start`` at step 0 to ``end`` at ``max_steps`` along a half cosine."""
    progress = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher ← momentum · teacher + (1 − momentum) · student, matched by name; buffers are copied.

    The teacher may hold a subset of the student (an encoder-only backbone copy); every teacher
    tensor must have its namesake in the student.
    """
    student_params = dict(student.named_parameters())
    student_buffers = dict(student.named_buffers())
    names = [name for name, _ in teacher.named_parameters()]
    missing = [n for n in names if n not in student_params]
    if missing:
        raise ValueError(f"teacher parameters without a student counterpart: {missing[:3]}")
    teacher_params = [p for _, p in teacher.named_parameters()]
    torch._foreach_lerp_(teacher_params, [student_params[n].detach() for n in names], 1.0 - momentum)
    for name, buffer in teacher.named_buffers():
        buffer.copy_(student_buffers[name])
