"""Exponential-moving-average teachers and their momentum schedule."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen deep copy of ``student`` (no gradients ever reach it)."""
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher


def cosine_momentum(step: int, max_steps: int, start: float, end: float) -> float:
    """Momentum rising from ``start`` at step 0 to ``end`` at ``max_steps`` along a half cosine."""
    progress = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher ← momentum · teacher + (1 − momentum) · student for parameters; buffers are copied."""
    teacher_params = list(teacher.parameters())
    student_params = [p.detach() for p in student.parameters()]
    if len(teacher_params) != len(student_params):
        raise ValueError(f"teacher has {len(teacher_params)} parameters, student {len(student_params)}")
    torch._foreach_lerp_(teacher_params, student_params, 1.0 - momentum)
    for teacher_buffer, student_buffer in zip(teacher.buffers(), student.buffers()):
        teacher_buffer.copy_(student_buffer)
