"""Crops from the preprocessing cache, in an order fixed by (seed, step, rank) so resume is exact."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mssl.config import ConfigError, DataConfig, PretrainConfig
from mssl.data.crops import CropRequest

if TYPE_CHECKING:
    from mssl.data.cache import CacheIndex


class StepSampler(Sampler[int]):
    """Sample indices of micro-batches ``start_batch, start_batch + 1, …`` for one rank.

    Micro-batch ``b`` of rank ``r`` holds samples ``(b · world + r) · B … + B - 1``: ranks never
    share a sample, and since a sample is a pure function of (seed, index), starting at the restored
    step continues the data stream exactly. Lightning cannot fast-forward a plain DataLoader after a
    mid-epoch resume, so the sampler starts where the run stopped. It has no ``__len__``: Lightning
    then runs one endless epoch bounded by ``max_steps`` rather than ending epochs mid-run.
    """

    def __init__(self, start_batch: int, num_batches: int, batch_size: int, rank: int = 0, world_size: int = 1) -> None:
        self.start_batch = start_batch
        self.num_batches = num_batches
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[int]:
        for batch in range(self.start_batch, self.num_batches):
            first = (batch * self.world_size + self.rank) * self.batch_size
            yield from range(first, first + self.batch_size)


def open_cache(data: DataConfig) -> CacheIndex:
    """The cache's index restricted to ``data.split`` / ``data.case_ids``; a one-line error when unusable."""
    from mssl.data.cache import CacheIndex
    from mssl.data.errors import DataError

    if data.cache is None:
        raise ConfigError("config key 'data.cache' is required: the folder written by `mssl prepare` (--data)")
    index = CacheIndex.open(data.cache)
    try:
        index = index.select(split=data.split, case_ids=data.case_ids)
    except KeyError as error:
        raise DataError(data.cache, error.args[0]) from None
    if not index.cases:
        raise DataError(data.cache, f"no cases to train on (split {data.split!r}, case_ids {data.case_ids!r})")
    return index


class CropDataModule(pl.LightningDataModule):
    """Random crops from a ``mssl prepare`` cache as the method's ``crop_requests()`` ask for them."""

    def __init__(self, config: PretrainConfig, requests: dict[str, CropRequest], index: CacheIndex) -> None:
        super().__init__()
        self.config = config
        self.requests = requests
        self.index = index
        self.index_hash = index.hash()
        self.dataset: Dataset | None = None

    @property
    def micro_batches(self) -> int:
        """Micro-batches per rank over the whole run."""
        return self.config.trainer.max_steps * self.config.trainer.accumulate

    def setup(self, stage: str) -> None:
        if self.dataset is not None:
            return
        from mssl.data.cache import CropDataset

        data = self.config.data
        self.dataset = CropDataset(
            self.index,
            self.requests,
            length=self.micro_batches * data.batch_size * self.trainer.world_size,
            seed=self.config.seed,
            foreground_bias=data.foreground_bias,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.dataset is not None, "setup() builds the dataset"
        data = self.config.data
        sampler = StepSampler(
            start_batch=self.trainer.global_step * self.config.trainer.accumulate,
            num_batches=self.micro_batches,
            batch_size=data.batch_size,
            rank=self.trainer.global_rank,
            world_size=self.trainer.world_size,
        )
        return DataLoader(
            self.dataset,
            batch_size=data.batch_size,
            sampler=sampler,
            num_workers=data.workers,
            persistent_workers=data.workers > 0,
            pin_memory=torch.cuda.is_available(),
        )
