"""``mssl.pretrain(...)`` ≡ ``mssl pretrain ...``: the training engine of ``train/`` with the probes of the
config's ``probe`` section (downstream code) handed to it as a Lightning callback."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from mssl.config import PretrainConfig
    from mssl.train.cost import Projection


def pretrain(config: PretrainConfig | str | Path | Mapping[str, Any] | None = None, dry_run: bool = False, **overrides: Any) -> Path | Projection:
    """Pre-train an encoder, probing it during training when the config asks; returns the run folder.

    Options, resumption and dry runs are :func:`mssl.train.pretrain.pretrain`'s, e.g.
    ``mssl.pretrain(method="gvsl", data="cache/", out="runs/gvsl", backbone="unet", steps=1000, probe="dataset.json")``.
    """
    from mssl.downstream.training_probe import TrainingProbe
    from mssl.train.pretrain import pretrain as train

    return train(config, dry_run=dry_run, probe_callback=TrainingProbe.from_config, **overrides)
