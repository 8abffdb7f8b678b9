"""Deliberate faults injected into real training, to test the divergence guard: a Lightning callback that
tests install, never part of a run's config.

Usage: ``train_one(cfg, callbacks=[FaultInjector("nan_loss", step=7)])``;
``run_sweep(cfg, run_dir, callbacks=[FaultInjector("spike", step=6, size=500.0)])``

Kinds (``step`` is the 1-based optimizer step):

- ``nan_loss``: the loss recorded at ``step`` is NaN;
- ``inf_grad``: one gradient entry is +inf at ``step``, before clipping;
- ``creep``: from ``step`` on, the recorded loss rises by ``size`` per step (the gradients are untouched);
- ``spike``: the loss recorded at ``step`` alone is ``size`` higher;
- ``raise``: training raises ``RuntimeError("injected fault at step N")`` at ``step``.

"Recorded" is what the divergence guard and the training curve see (the module's ``task_loss``);
Lightning calls a callback's ``on_train_batch_end`` before the module's own, and its
``on_before_optimizer_step`` before the module clips the gradients.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch

KINDS = ("nan_loss", "inf_grad", "creep", "spike", "raise")


class FaultInjector(pl.Callback):
    def __init__(self, kind: str, step: int = 1, size: float = 100.0) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; valid: {', '.join(KINDS)}")
        if step < 1:
            raise ValueError(f"fault step must be >= 1, got {step}")
        self.kind, self.step, self.size = kind, step, float(size)

    def loss_offset(self, step: int) -> float:
        """What the fault adds to the recorded loss at ``step``."""
        if self.kind == "nan_loss" and step == self.step:
            return math.nan
        if self.kind == "creep" and step >= self.step:
            return (step - self.step + 1) * self.size
        if self.kind == "spike" and step == self.step:
            return self.size
        return 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step + 1
        if self.kind == "raise" and step == self.step:
            raise RuntimeError(f"injected fault at step {step}")

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer: Any) -> None:
        if self.kind == "inf_grad" and trainer.global_step + 1 == self.step:
            param = next(p for p in module.parameters() if p.grad is not None)
            param.grad.view(-1)[0] = math.inf

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        offset = self.loss_offset(trainer.global_step)  # global_step already counts this batch's step
        if offset != 0.0:
            outputs["task_loss"] = outputs["task_loss"] + torch.as_tensor(offset)
