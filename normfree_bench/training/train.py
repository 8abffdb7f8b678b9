"""One training run: build the model under a baseline, train it with Lightning, return its metrics.

Usage: ``result = train_one(load_run_config("configs/smoke.yaml")); print(result.final_val_loss)``

This is the only place a Trainer is built. A sweep calls `train_one` once per trial and passes the
already-loaded corpus, so the text is read and tokenised once per process.
"""

from __future__ import annotations

import logging
import math
import os
import statistics
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch

from normfree_bench.config import RunConfig
from normfree_bench.data.task import TaskData, load_data, loaders
from normfree_bench.errors import UserError
from normfree_bench.models.factory import build_model
from normfree_bench.training.guard import DivergenceGuard
from normfree_bench.training.lit_module import LitModel
from normfree_bench.training.parallel import TIMEOUT, check_parallel, shard_loader, train_ddp
from normfree_bench.training.tracking import TrialTracker, check_tracked_config

CURVE_FIELDS = ("step", "train_loss", "val_loss", "grad_norm", "val_perplexity", "val_accuracy")


@dataclass
class RunResult:
    """What one run measured. Losses are in nats; ``l0`` is ln(vocab), the loss of a uniform guess."""

    baseline: str
    lr: float
    seed: int
    l0: float
    final_val_loss: float
    best_val_loss: float
    final_val_perplexity: float  # LM (nan for the ViT)
    final_val_accuracy: float  # ViT (nan for the LM)
    diverged: bool
    diverged_step: int | None
    diverged_reason: str
    spiked: bool
    spikes: list[dict[str, float]]
    max_train_loss: float
    steps: int
    tokens: int
    tokens_per_s: float
    wall_s: float
    train_s: float
    eval_s: float
    compile_s: float  # train.compile: the first training step's time beyond a later step's median (0: eager)
    params: int
    device: str
    precision: str
    curve: list[dict[str, float]] = field(default_factory=list, repr=False)
    diagnostics: list[tuple] = field(default_factory=list, repr=False)  # (step, layer, site, metric, value)

    def metrics(self) -> dict[str, Any]:
        """Everything but the curve and the diagnostics, for metrics.json and trial attributes."""
        data = asdict(self)
        data.pop("curve")
        data.pop("diagnostics")
        return data


def resolve_device(requested: str) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available here; valid: auto, cpu")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def resolve_precision(precision: str, device: str) -> str:
    """The precision a run uses on ``device``: ``auto`` is bf16-mixed on CUDA and 32-true on CPU;
    fp16 mixed precision needs CUDA (on a CPU Lightning would silently run bf16 instead)."""
    if precision == "auto":
        return "bf16-mixed" if device == "cuda" else "32-true"
    if precision == "16-mixed" and device != "cuda":
        raise UserError("train.precision '16-mixed' needs a CUDA device; valid on CPU: 32-true, bf16-mixed, "
                        "bf16-true, 64-true")
    return precision


def resolve_compile(compile_model: bool | None, device: str) -> bool:
    """``train.compile``: as set, or (None) on CUDA and not on CPU."""
    return device == "cuda" if compile_model is None else compile_model


def resolved_settings(cfg: RunConfig) -> dict[str, Any]:
    """What a run of ``cfg`` actually uses here: device, precision, torch threads and whether the training
    steps are compiled (recorded as run, not as requested)."""
    device = resolve_device(cfg.train.device)
    check_parallel(cfg, device)
    return {"device": device, "precision": resolve_precision(cfg.train.precision, device),
            "threads": cfg.train.threads or torch.get_num_threads(),
            "compile": resolve_compile(cfg.train.compile, device)}


class _EvalTimer(pl.Callback):
    """Wall time spent in validation, so throughput counts training steps only."""

    def __init__(self) -> None:
        self.eval_s = 0.0
        self._t0 = 0.0

    def on_validation_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.eval_s += time.perf_counter() - self._t0


class _StepTimer(pl.Callback):
    """Wall time of each training step, for the compile time: the first step's time beyond the median of the
    later ones (on CUDA the later steps' times are their host-side launch times, so this bounds it from above)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.times.append(time.perf_counter() - self._t0)

    def compile_s(self) -> float:
        if len(self.times) < 2:
            return 0.0
        return max(0.0, self.times[0] - statistics.median(self.times[1:]))


def quiet_lightning() -> None:
    """Silence Lightning's banner and advice that would repeat for every trial of a sweep."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Your `IterableDataset` has `__len__` defined.*")
    warnings.filterwarnings("ignore", message=".*Total length of .* across ranks is zero.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def merge_curve(module: LitModel) -> list[dict[str, float]]:
    """One row per logged step, with NaN where a quantity was not measured at that step."""
    rows: dict[int, dict[str, float]] = {}
    for step, loss, grad_norm in module.train_points:
        rows.setdefault(step, {"step": step}).update(train_loss=loss, grad_norm=grad_norm)
    metric = "val_accuracy" if module.classify else "val_perplexity"
    for step, val, value in module.val_points:
        rows.setdefault(step, {"step": step}).update({"val_loss": val, metric: value})
    return [{c: rows[s].get(c, math.nan) for c in CURVE_FIELDS} for s in sorted(rows)]


def train_one(cfg: RunConfig, *, corpus: TaskData | None = None, callbacks: list[pl.Callback] | None = None,
              progress_bar: bool = False, tracker: TrialTracker | None = None, rank: int | None = None) -> RunResult:
    """Train ``cfg.baseline`` once with ``cfg``; never raises for divergence (that is a result).
    ``tracker`` (normfree_bench.training.tracking) feeds the trial's points to its loggers and closes them.
    With ``train.devices`` > 1 the trial runs over that many processes (normfree_bench.training.parallel), each
    calling this function with its ``rank``."""
    world = cfg.train.devices
    if world > 1 and rank is None:
        check_tracked_config(tracker.loggers if tracker else (), cfg)
        return train_ddp(train_one, cfg, callbacks)
    t_start = time.perf_counter()
    quiet_lightning()
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    if world > 1 and device == "cpu":  # the ranks share the CPU threads
        torch.set_num_threads(max(1, (cfg.train.threads or os.cpu_count() or 1) // world))
    elif cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    data = corpus if corpus is not None else load_data(cfg)
    train_loader, val_loader = loaders(cfg, data)
    if world > 1:
        train_loader = shard_loader(train_loader, rank or 0, world)

    pl.seed_everything(cfg.train.seed, verbose=False)
    model = build_model(cfg.baseline, cfg.model, **cfg.baseline_hparams())
    guard = DivergenceGuard(l0=cfg.model.initial_loss, margin=cfg.guard.margin,
                            patience=cfg.guard.patience)
    compiling = resolve_compile(cfg.train.compile, device)
    module = LitModel(model, cfg.train, guard, compile_model=compiling)
    timer = _EvalTimer()
    steps_timer = _StepTimer() if compiling else None  # step times only where there is a compile to separate
    strategy: Any = "auto"
    if world > 1:
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="nccl" if device == "cuda" else "gloo", timeout=TIMEOUT)
    trainer = pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=world, strategy=strategy,
        use_distributed_sampler=False, precision=precision,
        max_steps=cfg.train.steps, val_check_interval=cfg.train.eval_interval, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=progress_bar and not rank, deterministic=device == "cpu",
        callbacks=[timer, *([steps_timer] if steps_timer else []), *([tracker] if tracker else []),
                   *(callbacks or [])],
    )
    t_fit = time.perf_counter()
    try:
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)
        steps = trainer.global_step
        if not guard.diverged and (not module.val_points or module.val_points[-1][0] != steps):
            trainer.validate(module, dataloaders=val_loader, verbose=False)
    except BaseException as exc:
        if tracker:  # a crash or an interrupt: the logger runs end as failed, with what they got so far
            tracker.close("failed")
        if isinstance(exc, SystemExit) and trainer.interrupted:  # Lightning turns Ctrl-C into exit(1); keep it
            raise KeyboardInterrupt from None                    # an interrupt for the sweep
        raise
    fit_s = time.perf_counter() - t_fit

    vals = [v for _, v, _ in module.val_points]
    final_val = vals[-1] if vals else math.nan
    final_metric = module.val_points[-1][2] if vals else math.nan
    guard.finish(final_val, steps)
    if tracker:
        tracker.finish(module, diverged=guard.diverged, final_val_loss=final_val, l0=guard.l0, steps=steps)
    finite_vals = [v for v in vals if math.isfinite(v)]
    compile_s = steps_timer.compile_s() if steps_timer else 0.0
    train_s = max(fit_s - timer.eval_s - compile_s, 1e-9)
    tokens = steps * cfg.data.batch_size * cfg.model.n_tokens  # ViT: patches
    return RunResult(
        baseline=cfg.baseline, lr=cfg.train.lr, seed=cfg.train.seed, l0=guard.l0,
        final_val_loss=final_val, best_val_loss=min(finite_vals) if finite_vals else math.nan,
        final_val_perplexity=math.nan if module.classify else final_metric,
        final_val_accuracy=final_metric if module.classify else math.nan, diverged=guard.diverged,
        diverged_step=guard.diverged_step,
        diverged_reason=guard.reason, spiked=guard.spiked, spikes=[asdict(s) for s in guard.spikes],
        max_train_loss=guard.max_loss, steps=steps, tokens=tokens, tokens_per_s=tokens / train_s,
        wall_s=time.perf_counter() - t_start, train_s=train_s, eval_s=timer.eval_s, compile_s=compile_s,
        params=model.num_params(), device=device, precision=precision, curve=merge_curve(module),
        diagnostics=module.diagnostics,
    )
