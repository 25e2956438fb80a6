"""The pre-training engine behind ``mssl.pretrain``: build the config, train with Lightning, write the run folder.

The run folder's layout is :class:`mssl.runs.PretrainRun`'s: resolved config, the newest full state (model,
EMA teacher, queue, optimiser, schedule, step, RNG) and the ``trainer.keep_checkpoints`` newest periodic
ones, logs, and a summary (steps, wall time, final losses, data index hash, weights path).
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
import warnings
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

import yaml

from mssl.config import ConfigError, PretrainConfig, TrainerConfig, build_config, load_yaml, merge_overrides, objectives
from mssl.runs import PERIODIC_CHECKPOINT_FORMAT, PretrainRun

if TYPE_CHECKING:
    from lightning.pytorch import Callback
    from torch import nn

    from mssl.data.cache import CacheIndex
    from mssl.data.preprocess import PresetConfig
    from mssl.train.cost import Projection

# builds the Lightning callback that runs the config's ``probe`` section (from the run config, the cache's
# preset and the run folder); probes are downstream code, so the caller above supplies it
ProbeCallback = Callable[[PretrainConfig, "PresetConfig", Path], "Callback"]

log = logging.getLogger(__name__)

ROI_FLAG = "roi"  # sets s2dc.roi and/or gvsl.roi for the objectives being trained

# Keys that may differ between a run and its resumption (everything else must match for an exact resume).
# Probes restore every RNG state and module mode, and compiling and checkpointing activations change how a
# step runs, not what it computes: adding or changing them keeps the continuation exact.
RESUMABLE_CHANGES = ("resume", "trainer.max_steps", "trainer.accelerator", "trainer.checkpoint_every",
                     "trainer.max_nonfinite", "trainer.compile", "backbone.gradient_checkpointing",
                     "data.workers", "data.cache", "logging", "probe")


def resolve_config(config: PretrainConfig | str | Path | Mapping[str, Any] | None = None, **overrides: Any) -> PretrainConfig:
    """The validated, resolved run config.

    ``config``: a ``PretrainConfig``, a YAML path or a mapping (default: all defaults; when resuming,
    the run's saved ``config.yaml``). ``overrides``: flat options (``steps=100``, see ``PretrainConfig.FLAT_OPTIONS``),
    dotted keys (``**{"s2dc.tau_ot": 0.05}``) or whole sections (``backbone={"name": "unet"}``).
    """
    dotted = {
        key if isinstance(value, Mapping) else PretrainConfig.FLAT_OPTIONS.get(key, key): value  # backbone="unet" vs backbone={...}
        for key, value in overrides.items()
        if key != ROI_FLAG and value is not None
    }
    if isinstance(config, PretrainConfig):
        # an input channel count left at its default follows the data (see _with_data_channels)
        unset = "in_channels" not in config.backbone.model_fields_set
        base = config.model_dump(exclude={"backbone": {"in_channels"}} if unset else None)
    elif isinstance(config, (str, Path)):
        base = load_yaml(config)
    else:
        base = dict(config or {})
        saved = PretrainRun(str(dotted.get("out", base.get("out", "")))).config
        if dotted.get("resume") and config is None and saved.is_file():
            base = load_yaml(saved)  # resume continues the run as it was configured
    merged = merge_overrides(base, dotted)
    roi = overrides.get(ROI_FLAG)
    if roi is not None:
        method = merged.get("method", PretrainConfig.model_fields["method"].default)
        merged = merge_overrides(merged, {f"{name}.roi": roi for name in objectives(method)})
    resolved = build_config(PretrainConfig, merged).resolved()
    _check_probe_features(resolved)
    return resolved


def _with_data_channels(cfg: PretrainConfig, index: CacheIndex) -> PretrainConfig:
    """The config with the backbone taking as many input channels as the cache's volumes have. A config
    that names another count (set by hand, or the saved config of a run being resumed) is an error."""
    channels = index.channels()
    if cfg.backbone.in_channels == channels:
        return cfg
    if "in_channels" in cfg.backbone.model_fields_set:
        raise ConfigError(
            f"config key 'backbone.in_channels': {cfg.backbone.in_channels}, but the cache {index.root} holds {channels}-channel "
            "volumes; the encoder's input channels follow the data (leave the key unset, or resume on the run's own data)"
        )
    return cfg.model_copy(update={"backbone": cfg.backbone.model_copy(update={"in_channels": channels})})


def _check_probe_features(cfg: PretrainConfig) -> None:
    from mssl.methods import trains_decoder

    if cfg.probe.data is not None and cfg.probe.features == "decoder" and not trains_decoder(cfg.method):
        raise ConfigError(
            f"config key 'probe.features': 'decoder' needs a trained decoder, but {cfg.method} trains only the encoder; use 'encoder'"
        )


def pretrain(
    config: PretrainConfig | str | Path | Mapping[str, Any] | None = None,
    dry_run: bool = False,
    probe_callback: ProbeCallback | None = None,
    **overrides: Any,
) -> Path | Projection:
    """Pre-train an encoder; returns the run folder.

    Same options as ``mssl pretrain`` (see :func:`resolve_config`), e.g.
    ``mssl.pretrain(method="gvsl", data="cache/", out="runs/gvsl", backbone="unet", steps=1000)``.
    With ``resume=True`` the run in ``out`` continues exactly from ``checkpoints/last.ckpt``.
    With ``dry_run=True`` a few steps run on one device, outside ``out``, and the projection of the
    whole run is printed and returned; nothing is written to ``out``.
    Raises :class:`~mssl.train.run_lock.RunFolderBusy` while another process writes to ``out``.
    A config with a ``probe`` section needs ``probe_callback``: ``mssl.pretrain`` (:mod:`mssl.pipelines.pretrain`)
    passes the downstream probe.
    """
    from lightning.pytorch.utilities import rank_zero_only

    from mssl.train.datamodule import open_cache
    from mssl.train.run_lock import run_lock

    cfg = resolve_config(config, **overrides)
    index = open_cache(cfg.data)  # fail on a bad cache now, not inside the trainer
    cfg = _with_data_channels(cfg, index)
    run_dir = Path(cfg.out)
    if cfg.probe.data is not None and probe_callback is None and not dry_run:
        raise ConfigError("config key 'probe.data': this entry point has no probe to run; pre-train through mssl.pretrain to probe during training")
    if dry_run:
        _checkpoint_to_resume(cfg, run_dir)  # the real run's objection to its folder, said now
        return _dry_run(cfg, index)
    # rank 0 owns the folder; the other DDP ranks (started later, by Lightning) only read it
    with run_lock(run_dir) if rank_zero_only.rank == 0 else nullcontext():
        return _fit(cfg, index, run_dir, probe_callback)


def _fit(cfg: PretrainConfig, index: CacheIndex, run_dir: Path, probe_callback: ProbeCallback | None) -> Path:
    """Train into ``run_dir`` (its lock held): resume or start, fit, write the summary."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.utilities import rank_zero_only

    from mssl.train.callbacks import CompileTime, FinalLastCheckpoint
    from mssl.train.checkpoint import AtomicCheckpointIO, checkpoint_step, remove_partial_writes
    from mssl.train.datamodule import CropDataModule
    from mssl.train.loggers import build_loggers, drop_rows_after
    from mssl.train.module import PretrainModule
    from mssl.train.seeding import seed_init
    from mssl.train.summary import RunSummary
    from mssl.weights.run_reader import backbone_state
    from mssl.weights.fingerprints import write_initial_fingerprints

    files = PretrainRun(run_dir)
    resume_from = _checkpoint_to_resume(cfg, run_dir)
    is_rank_zero = rank_zero_only.rank == 0
    resumed_step = 0
    if resume_from is not None:
        resumed_step = checkpoint_step(resume_from)
        if is_rank_zero:
            remove_partial_writes(run_dir)
            _check_resume_matches(cfg, files.config)
            drop_rows_after(files.metrics, resumed_step)
    if is_rank_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        files.config.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")

    seed_init(cfg.seed)
    module = PretrainModule(cfg)
    if is_rank_zero and resume_from is None:  # export compares against these to list the tensors training never changed
        write_initial_fingerprints(backbone_state({"state_dict": module.state_dict()}, "the new run"), run_dir)
    datamodule = CropDataModule(cfg, module.method.crop_requests(), index)
    callbacks: list[pl.Callback] = [
        # keep_checkpoints newest periodic files: "step" is a monitor Lightning always provides
        ModelCheckpoint(
            dirpath=files.checkpoints,
            filename=PERIODIC_CHECKPOINT_FORMAT,
            auto_insert_metric_name=False,
            every_n_train_steps=cfg.trainer.checkpoint_every,
            save_top_k=cfg.trainer.keep_checkpoints,
            monitor="step",
            mode="max",
            save_last=True,
            enable_version_counter=False,  # resuming overwrites last.ckpt instead of writing last-v1.ckpt
        ),
        FinalLastCheckpoint(files.checkpoint, cfg.trainer.checkpoint_every),
    ]
    compile_time = CompileTime() if cfg.trainer.compile else None
    if compile_time is not None:
        callbacks.append(compile_time)
    if cfg.probe.data is not None and probe_callback is not None:
        callbacks.append(probe_callback(cfg, index.preset, run_dir))
    with _quiet_lightning():
        trainer = pl.Trainer(
            default_root_dir=run_dir,
            max_steps=cfg.trainer.max_steps,
            devices=cfg.trainer.devices,
            num_nodes=cfg.trainer.num_nodes,
            **distribution_options(cfg.trainer, module),
            logger=build_loggers(run_dir),
            callbacks=callbacks + _monitoring(cfg, module, bar=_progress_bar(cfg)),
            plugins=[AtomicCheckpointIO()],
            **_trainer_options(cfg, progress_bar=_progress_bar(cfg)),
        )
        start, cpu_start = time.perf_counter(), time.process_time()
        with _host_memory_ceiling(cfg, str(run_dir)):
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
        wall_time, cpu_time = time.perf_counter() - start, time.process_time() - cpu_start

    if trainer.is_global_zero:
        summary = RunSummary(
            method=cfg.method,
            backbone=cfg.backbone.name,
            steps=trainer.global_step,
            max_steps=cfg.trainer.max_steps,
            skipped_steps=module.skipped_steps,
            wall_time_s=round(wall_time, 2),
            final_losses={name: float(value) for name, value in module.last_losses.items()},
            final_metrics={name: float(value) for name, value in module.last_metrics.items()},
            data_index_hash=datamodule.index_hash,
            weights=str(files.checkpoint.relative_to(run_dir)),
            resumed_from_step=resumed_step if resume_from is not None else None,
            compile_s=None if compile_time is None or compile_time.compile_s is None else round(compile_time.compile_s, 2),
            cpu_time_s=round(cpu_time, 2),
        )
        summary.write(run_dir)
        summary.render(run_dir)
    return run_dir


def _dry_run(cfg: PretrainConfig, index: CacheIndex) -> Projection:
    """A few steps on one device, in a temporary folder (no logger, no checkpoint): the cost of the planned run."""
    import lightning.pytorch as pl

    from mssl.train.callbacks import CostReport
    from mssl.train.cost import MEASURED_STEPS, WARMUP_STEPS
    from mssl.train.datamodule import CropDataModule
    from mssl.train.module import PretrainModule
    from mssl.train.seeding import seed_init

    seed_init(cfg.seed)
    module = PretrainModule(cfg)
    datamodule = CropDataModule(cfg, module.method.crop_requests(), index)
    callbacks = _monitoring(cfg, module, bar=False, lines=False)
    with tempfile.TemporaryDirectory(prefix="mssl-dry-run-") as scratch, _quiet_lightning():
        trainer = pl.Trainer(
            default_root_dir=scratch,
            max_steps=WARMUP_STEPS + MEASURED_STEPS,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            callbacks=callbacks,
            **_trainer_options(cfg, progress_bar=False),
        )
        with _host_memory_ceiling(cfg, f"dry run of {cfg.out}", processes=1):
            trainer.fit(module, datamodule=datamodule)
    reporter = next(c for c in callbacks if isinstance(c, CostReport)).reporter
    assert reporter is not None  # a single-device run is rank 0
    return reporter.dry_run_report()


def _host_memory_ceiling(cfg: PretrainConfig, what: str, processes: int | None = None) -> AbstractContextManager[None]:
    """On CPU, too little memory is one clear error (:mod:`mssl.train.memory`), not the OOM killer."""
    from mssl.train.memory import memory_ceiling

    local = cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1
    return memory_ceiling(what, processes=processes or local, on_cpu=not _on_gpu(cfg.trainer))


def _trainer_options(cfg: PretrainConfig, progress_bar: bool) -> dict[str, Any]:
    """``Trainer`` options a run and its dry run share."""
    return dict(
        max_epochs=-1,
        accelerator=cfg.trainer.accelerator,
        precision=cfg.trainer.precision,
        gradient_clip_val=cfg.trainer.grad_clip,
        accumulate_grad_batches=cfg.trainer.accumulate,
        log_every_n_steps=cfg.logging.every_n_steps,
        use_distributed_sampler=False,  # StepSampler splits the data by rank and restarts at the restored step
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )


def _progress_bar(cfg: PretrainConfig) -> bool:
    """A live bar only on a terminal: redirected to a file it shows nothing until the end."""
    return cfg.logging.progress_bar and sys.stdout.isatty()


def _monitoring(cfg: PretrainConfig, module: Any, bar: bool, lines: bool | None = None) -> list[Callback]:
    """Throughput, cost report, and a progress ``bar`` or (``lines``, by default when there is no bar) plain progress lines."""
    from mssl.train.callbacks import CostReport, CropThroughput, StepProgressBar

    requests = module.method.crop_requests().values()
    per_step = cfg.data.batch_size * cfg.trainer.accumulate
    crops: dict[tuple[int, ...], int] = {}
    for request in requests:
        crops[tuple(request.size)] = crops.get(tuple(request.size), 0) + request.volumes * per_step
    devices = (cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1) * cfg.trainer.num_nodes
    callbacks: list[Callback] = [
        CropThroughput(sum(r.volumes for r in requests) * cfg.data.batch_size),
        CostReport(
            crops, cfg.trainer.max_steps, devices, lines=not bar if lines is None else lines,
            every_steps=cfg.logging.line_every_steps, every_seconds=cfg.logging.line_every_s,
        ),
    ]
    if bar:
        callbacks.append(StepProgressBar())
    return callbacks


# Lightning messages that say nothing about this run: expected by design (endless epoch, no validation,
# resuming into an existing checkpoint folder, workers=0 in small runs), an advert, an internal deprecation.
_EXPECTED_WARNINGS = (
    "does not have many workers", "val_dataloader", "Checkpoint directory .* exists and is not empty", "LeafSpec",
)
_ADVERT = "litlogger"


class _DropAdvert(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _ADVERT not in record.getMessage()


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    advert = _DropAdvert()
    rank_zero_log.addFilter(advert)
    try:
        with warnings.catch_warnings():
            for message in _EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=f".*{message}")
            yield
    finally:
        rank_zero_log.removeFilter(advert)


def distribution_options(trainer: TrainerConfig, module: nn.Module) -> dict[str, Any]:
    """The ``Trainer`` options that spread ``module`` over devices: strategy and BatchNorm synchronisation."""
    return {"strategy": lightning_strategy(trainer), "sync_batchnorm": sync_batchnorm(trainer, module)}


def _several_processes(trainer: TrainerConfig) -> bool:
    return (isinstance(trainer.devices, int) and trainer.devices > 1) or trainer.num_nodes > 1


def lightning_strategy(trainer: TrainerConfig) -> str:
    """Lightning's strategy name: plain DDP for several devices. Every trainable parameter gets a gradient
    in every step (S²DC's student carries no decoder), so DDP needs no per-step search for unused ones."""
    return "ddp" if trainer.strategy == "auto" and _several_processes(trainer) else trainer.strategy


def sync_batchnorm(trainer: TrainerConfig, module: nn.Module) -> bool:
    """Whether BatchNorm layers (S²DC's projection heads) normalise over the crops of every rank, as they
    do on one device. GPUs only: torch's SyncBatchNorm has no CPU implementation (CPU DDP keeps per-rank
    statistics)."""
    from torch import nn

    gpus = _on_gpu(trainer)
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())
    return gpus and has_batchnorm and _several_processes(trainer)


def _on_gpu(trainer: TrainerConfig) -> bool:
    import torch

    return trainer.accelerator in ("gpu", "cuda") or (trainer.accelerator == "auto" and torch.cuda.is_available())


def _checkpoint_to_resume(cfg: PretrainConfig, run_dir: Path) -> Path | None:
    from mssl.train.checkpoint import newest_checkpoint

    newest = newest_checkpoint(run_dir)
    if cfg.resume:
        if newest is None:
            raise ConfigError(f"resume: no checkpoint to continue from in {PretrainRun(run_dir).checkpoints}")
        return newest
    if newest is not None:
        raise ConfigError(
            f"run folder {cfg.out} already holds a run ({newest}); pass --resume to continue it or choose another --out"
        )
    return None


def _check_resume_matches(cfg: PretrainConfig, saved_path: Path) -> None:
    """Warn when a resumed run changes options other than :data:`RESUMABLE_CHANGES` (the result is then not exact)."""
    if not saved_path.is_file():
        return
    try:  # read through the model, so an older spelling of the same value (roi: 96) is no change
        saved = _flatten(build_config(PretrainConfig, saved_path).model_dump(mode="json"))
    except ConfigError:
        saved = _flatten(load_yaml(saved_path))
    current = _flatten(cfg.model_dump(mode="json"))
    changed = sorted(
        key for key in saved.keys() | current.keys()
        if saved.get(key) != current.get(key) and not key.startswith(RESUMABLE_CHANGES)
    )
    if changed:
        log.warning("resuming %s with changed options %s: the continuation is no longer exact", cfg.out, ", ".join(changed))


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
