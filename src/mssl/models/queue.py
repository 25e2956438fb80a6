"""A FIFO queue of teacher keys (contrastive negatives), correct under DDP and saved in checkpoints."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def gather_across_ranks(keys: torch.Tensor) -> torch.Tensor:
    """Concatenate ``keys`` (N, D) of every rank in rank order; identity without a process group.

    Every rank must pass the same N (true for S²DC: one key per volume of an equal per-rank batch).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return keys
    gathered = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, keys.contiguous())
    return torch.cat(gathered)


class KeyQueue(nn.Module):
    """``size`` most recent keys of dimension ``dim``; all ranks hold the same queue.

    Buffers (checkpointed): ``keys`` (size, D), ``pointer`` (next slot), ``filled`` (valid entries).
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("keys", torch.zeros(size, dim))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def valid(self) -> torch.Tensor:
        """(filled, D) the keys enqueued so far (never the zero initialisation)."""
        return self.keys[: int(self.filled)]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Add this step's keys of every rank (gathered, in rank order), overwriting the oldest."""
        if self.size == 0:
            return
        keys = gather_across_ranks(keys.detach().to(self.keys.dtype))[-self.size :]
        slots = (self.pointer + torch.arange(keys.shape[0], device=keys.device)) % self.size
        self.keys[slots] = keys
        self.pointer.copy_((self.pointer + keys.shape[0]) % self.size)
        self.filled.copy_(torch.clamp(self.filled + keys.shape[0], max=self.size))
