"""The LightningModule around a pre-training method: one step, the optimiser, non-finite guard, exact resume state."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from mssl.config import PretrainConfig
from mssl.methods import build_method
from mssl.methods.base import MethodOutput, PretrainMethod
from mssl.models.features import Backbone
from mssl.train.checkpoint import check_state_finite
from mssl.train.optimizer import build_optimizer
from mssl.train.schedules import warmup_cosine
from mssl.train.seeding import rng_state, seed_step, set_rng_state

log = logging.getLogger(__name__)

STATE_KEY = "mssl"  # our own entry in a Lightning checkpoint


class NonFiniteLossError(RuntimeError):
    """The loss stayed NaN/inf for ``trainer.max_nonfinite`` steps in a row."""


def compile_backbones(method: nn.Module, backend: str = "inductor") -> int:
    """``torch.compile`` every backbone of ``method`` in place (student, EMA teacher); returns how many.

    The backbones hold nearly all of a step's compute; the rest of the step (random views, Sinkhorn's
    loop, queues) would only break the graph. In-place compilation keeps the state-dict keys, so
    checkpoints and exports do not change. Compilation itself happens at the first call. ``backend``:
    tests use ``aot_eager`` (the same captured graphs, no code generation: seconds instead of minutes).
    """
    backbones = [module for module in method.modules() if isinstance(module, Backbone)]
    for backbone in backbones:
        backbone.compile(backend=backend)
    return len(backbones)


class PretrainModule(pl.LightningModule):
    """Trains ``self.method`` (so the encoder's checkpoint keys are ``method.backbone.*``).

    ``config`` must be resolved (``PretrainConfig.resolved()``); it is stored in the checkpoint as a
    plain dict under ``hyper_parameters["config"]``. ``method`` defaults to ``build_method(config)``.
    """

    def __init__(self, config: PretrainConfig, method: PretrainMethod | None = None) -> None:
        super().__init__()
        self.config = config
        self.method = method if method is not None else build_method(config)
        if config.trainer.compile:
            compile_backbones(self.method)
        self.save_hyperparameters({"config": config.model_dump(mode="json")})
        self.last_losses: dict[str, torch.Tensor] = {}  # latest finite step (loss and every term)
        self.last_metrics: dict[str, torch.Tensor] = {}
        self.skipped_steps = 0
        self._nonfinite_in_a_row = 0
        self._window_finite = True  # every micro-batch of the current optimiser step had a finite loss
        self._micro_batch = 0
        self._step_applied = False

    @property
    def micro_batch(self) -> int:
        """Micro-batches already run in the current optimiser step (0 right after a step)."""
        return self._micro_batch

    # ---------------------------------------------------------------------------------------- step
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # Randomness is a function of (seed, step, micro-batch, rank): a resumed run draws the same views.
        seed_step(self.config.seed, self.global_step, self._micro_batch, self.global_rank)
        self._micro_batch += 1
        output = self.method(batch)
        finite = self._finite_on_every_rank(output.loss)
        self._window_finite &= finite
        self._log_output(output, finite, batch_size=self.config.data.batch_size)  # a skipped step logs its NaN
        # Always back-propagate, even a NaN: under DDP every rank must run backward to stay in step.
        # The gradients of a non-finite step are dropped in on_before_optimizer_step.
        return output.loss

    def _finite_on_every_rank(self, loss: torch.Tensor) -> bool:
        # all ranks must agree, or one would skip the step while the others apply it
        return self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss.detach())), all=True)

    def _log_output(self, output: MethodOutput, finite: bool, batch_size: int) -> None:
        losses = {"loss": output.loss.detach(), **{name: v.detach() for name, v in output.terms.items()}}
        metrics = {name: v.detach() for name, v in output.metrics.items()}
        if finite:
            self.last_losses, self.last_metrics = losses, metrics
        values = {f"train/{name}": value for name, value in {**losses, **metrics}.items()}
        values["train/lr"] = torch.tensor(self.optimizers().param_groups[0]["lr"])
        self.log("loss", output.loss.detach(), prog_bar=True, logger=False, batch_size=batch_size)
        self.log_dict(values, batch_size=batch_size)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        finite, self._window_finite = self._window_finite, True
        self._step_applied = finite
        if finite:
            self._nonfinite_in_a_row = 0
            return
        # No gradient at all: AdamW/Adam leave parameters and moments untouched, the schedule moves on.
        optimizer.zero_grad(set_to_none=True)
        self._nonfinite_in_a_row += 1
        self.skipped_steps += 1
        limit = self.config.trainer.max_nonfinite
        if self._nonfinite_in_a_row >= limit:
            raise NonFiniteLossError(
                f"the loss was NaN/inf for {limit} steps in a row (up to step {self.global_step}); stopping. "
                "Try a lower optim.lr, --grad-clip 1.0, more warm-up steps, or --precision 32."
            )
        log.warning(
            "step %d: non-finite loss, step skipped (%d in a row; the run stops at %d)",
            self.global_step, self._nonfinite_in_a_row, limit,
        )

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self._micro_batch = 0
        if self._step_applied:
            # the loop counts this step as completed only after this hook returns
            self.method.after_optimizer_step(self.global_step + 1, self.config.trainer.max_steps)

    # ----------------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        optim = self.config.optim
        optimizer = build_optimizer(self.method, optim)
        scheduler = warmup_cosine(optimizer, optim.warmup_steps, self.config.trainer.max_steps, optim.schedule, optim.min_lr_ratio)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ---------------------------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Every rank runs this hook before rank 0 writes, so under DDP all ranks stop together.
        check_state_finite(checkpoint, self.global_step)
        # Per-step seeding already makes resume exact; the RNG snapshot also covers code that draws
        # outside training_step (rank 0's states; every rank reseeds per step anyway).
        checkpoint[STATE_KEY] = {
            "rng": rng_state(),
            "nonfinite_in_a_row": self._nonfinite_in_a_row,
            "skipped_steps": self.skipped_steps,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The schedule follows the current config (a resumed run may extend max_steps): keep LambdaLR
        # from overwriting the multiplier's fields with the saved ones.
        for scheduler in checkpoint.get("lr_schedulers", []):
            scheduler["lr_lambdas"] = [{} for _ in scheduler["lr_lambdas"]]
        state = checkpoint.get(STATE_KEY)
        if state is None:
            return
        set_rng_state(state["rng"])
        self._nonfinite_in_a_row = state["nonfinite_in_a_row"]
        self.skipped_steps = state["skipped_steps"]
