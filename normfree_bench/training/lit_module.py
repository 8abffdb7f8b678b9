"""The LightningModule: loss, AdamW with warmup + cosine, the baseline's groups and clipping, the guard.

Usage: ``module = LitModel(model, cfg.train, guard); trainer.fit(module, train_loader, val_loader)``

One module for both heads: next-byte cross-entropy for the LM (perplexity at evaluation) and image
classification for the ViT (accuracy at evaluation).

Kept off the per-step hot path: no logger, no per-step file writes; on CUDA the guard reads each
step's loss and gradient norm one step late (an asynchronous copy), so a non-finite step costs at
most one more step. Validation loss and perplexity go through torchmetrics at eval steps only, and
so do the numerical diagnostics (normfree_bench.diagnostics), taken on the first validation batch.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from timm.scheduler import CosineLRScheduler
from torchmetrics import SumMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.text import Perplexity

from normfree_bench.config import TrainConfig
from normfree_bench.models.transformer import Transformer, task_loss
from normfree_bench.training.diagnostics import DiagnosticProbe
from normfree_bench.training.guard import DivergenceGuard


class LitModel(pl.LightningModule):
    """Training of a `Transformer` under its baseline: causal byte-level LM or ViT classification."""

    def __init__(self, model: Transformer, train_cfg: TrainConfig, guard: DivergenceGuard,
                 compile_model: bool = False) -> None:
        super().__init__()
        self.model = model
        # The training steps' forward: ``torch.compile(model)`` when compiling (kept out of the module tree, so
        # the state dict and parameter list stay the model's), else the model; evaluation and the diagnostics'
        # hooks run the eager model.
        self.__dict__["train_forward"] = torch.compile(model) if compile_model else model
        self.cfg = train_cfg
        self.guard = guard
        # The validation loss is the token- (or image-) weighted mean over the validation batches, kept as two
        # sums: MeanMetric drops its weights under nan_strategy="disable" (torchmetrics 1.9), and any other
        # strategy drops NaNs, which must reach the guard.
        self.val_loss_sum = SumMetric(nan_strategy="disable")
        self.val_count = SumMetric(nan_strategy="disable")
        self.classify = model.config.task == "vit"
        self.val_metric = MulticlassAccuracy(model.config.num_classes) if self.classify else Perplexity()
        self.train_points: list[tuple[int, float, float]] = []  # (step, train_loss, grad_norm)
        self.val_points: list[tuple[int, float, float]] = []  # (step, val_loss, perplexity or accuracy)
        self.diagnostics: list[tuple] = []  # (step, layer, site, metric, value), see normfree_bench.diagnostics
        self._metric_updated = False
        self.last_grad_norm = torch.zeros(())
        self._pending: tuple[int, torch.Tensor] | None = None

    # ---- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.cfg
        groups = self.model.baseline.param_groups(self.model, cfg.lr, cfg.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                      weight_decay=cfg.weight_decay)
        scheduler = CosineLRScheduler(
            optimizer, t_initial=max(1, cfg.steps - cfg.warmup_steps), lr_min=cfg.lr * cfg.min_lr_ratio,
            warmup_t=cfg.warmup_steps, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler: CosineLRScheduler, metric: Any = None) -> None:
        scheduler.step_update(num_updates=self.global_step)

    def on_train_start(self) -> None:
        for scheduler in self.trainer.lr_scheduler_configs:
            scheduler.scheduler.step_update(num_updates=0)  # warmup starts at step 0

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        self.last_grad_norm = self.model.baseline.clip_gradients(self.model, self.cfg.grad_clip)

    # ---- steps ---------------------------------------------------------------------------------
    def loss(self, x: torch.Tensor, y: torch.Tensor, training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        logits = (self.train_forward if training else self.model)(x)  # LM: (B, T, V); ViT: (B, classes)
        return task_loss(logits, y), logits

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        loss, logits = self.loss(*batch, training=True)
        objective = loss
        if self.cfg.z_loss > 0:  # PaLM's z-loss keeps log Z of the output softmax near 0
            objective = loss + self.cfg.z_loss * torch.logsumexp(logits.float(), dim=-1).square().mean()
        # The optimizer minimises the objective; the guard and the curves follow the task loss alone (under
        # data-parallel training, its mean over the ranks: the global batch's loss, the same on every rank).
        task = loss.detach()
        if self.trainer.world_size > 1:
            task = self.trainer.strategy.reduce(task, reduce_op="mean")
        return {"loss": objective, "task_loss": task}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.global_step  # optimizer steps done, 1-based for this batch
        values = torch.stack([outputs["task_loss"].float(), self.last_grad_norm.detach().float()])
        if values.device.type == "cpu":
            self._check(step, values)
            return
        host = values.to("cpu", non_blocking=True)
        if self._pending is not None:
            self._check(*self._pending)
        self._pending = (step, host)

    def on_train_end(self) -> None:
        if self._pending is not None:
            torch.cuda.synchronize()
            self._check(*self._pending)
            self._pending = None

    def _check(self, step: int, values: torch.Tensor) -> None:
        loss, grad_norm = (float(v) for v in values.tolist())
        if step % self.cfg.log_interval == 0 or step == 1 or not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self.train_points.append((step, loss, grad_norm))
        if self.guard.update(step, loss, grad_norm):
            self.trainer.should_stop = True

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        if batch_idx == 0 and self.cfg.diagnostics:  # the first validation batch doubles as the probe's
            with DiagnosticProbe(self.model) as probe:
                loss, logits = self.loss(x, y)
            self.diagnostics += probe.rows(logits, self.global_step, grad_norm=float(self.last_grad_norm))
        else:
            loss, logits = self.loss(x, y)
        self.val_loss_sum.update(loss.detach().float() * y.numel())
        self.val_count.update(torch.tensor(float(y.numel())))
        if torch.isfinite(logits).all():
            self.val_metric.update(logits.float(), y)
            self._metric_updated = True

    def on_validation_epoch_end(self) -> None:
        val = float(self.val_loss_sum.compute() / self.val_count.compute())
        fallback = 0.0 if self.classify else math.inf
        metric = float(self.val_metric.compute()) if self._metric_updated else fallback
        self.val_loss_sum.reset()
        self.val_count.reset()
        self.val_metric.reset()
        self._metric_updated = False
        self.val_points.append((self.global_step, val, metric))
