"""How much the harness costs: one trial through Lightning (guard, metrics, logging) against a bare loop.

Usage: ``normfree-bench speed --overhead --suite default [--logger tensorboard]``  (prints harness / bare ratio)

Both sides train the same model for the same steps on the same batches, with the same optimizer,
schedule, clipping and evaluations; they alternate (A B A B ...) and the ratio is the median of the
per-pair ratios, so a machine whose speed drifts affects both sides of a pair alike.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from timm.scheduler import CosineLRScheduler

from normfree_bench.config import RunConfig
from normfree_bench.data.task import TaskData, load_data, loaders, trivial_loss
from normfree_bench.models.factory import build_model
from normfree_bench.models.transformer import task_loss
from normfree_bench.training.tracking import Tracking
from normfree_bench.training.train import train_one


def bare_loop(cfg: RunConfig, corpus: TaskData) -> float:
    """The same trial as `train_one`, as a plain PyTorch loop; returns its wall seconds."""
    t0 = time.perf_counter()
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = build_model(cfg.baseline, cfg.model, **cfg.baseline_hparams())
    opt = torch.optim.AdamW(model.baseline.param_groups(model, tc.lr, tc.weight_decay), lr=tc.lr,
                            betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay)
    sched = CosineLRScheduler(opt, t_initial=max(1, tc.steps - tc.warmup_steps), lr_min=tc.lr * tc.min_lr_ratio,
                              warmup_t=tc.warmup_steps, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
    sched.step_update(0)
    train_loader, val_loader = loaders(cfg, corpus)
    batches = iter(train_loader)
    model.train()
    for step in range(1, tc.steps + 1):
        x, y = next(batches)
        loss = task_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        model.baseline.clip_gradients(model, tc.grad_clip)
        opt.step()
        sched.step_update(step)
        if step % tc.eval_interval == 0 or step == tc.steps:
            model.eval()
            with torch.no_grad():
                sum(task_loss(model(vx), vy).item() for vx, vy in val_loader)
            model.train()
    return time.perf_counter() - t0


def harness_trial(cfg: RunConfig, corpus: TaskData, tracking: Tracking | None = None, trivial: float = 0.0) -> float:
    """One `train_one` trial's wall seconds; with ``tracking`` (``trivial``: the data's trivial loss, for the
    verdict), its loggers' set-up, writes and closing count."""
    t0 = time.perf_counter()
    tracker = tracking.tracker(cfg, trivial) if tracking else None
    train_one(cfg, corpus=corpus, tracker=tracker)
    return time.perf_counter() - t0


def measure_overhead(cfg: RunConfig, repeats: int = 3, loggers: Sequence[str] = ()) -> dict[str, Any]:
    """Alternate harness and bare runs ``repeats`` times; return medians and the median ratio. With
    ``loggers``, every harness trial also logs to them (in a temporary folder, removed afterwards)."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    corpus = load_data(cfg)
    with tempfile.TemporaryDirectory(prefix="nfb-overhead-") as folder:
        tracking = Tracking(tuple(loggers), Path(folder), "overhead") if loggers else None
        trivial = trivial_loss(corpus) if loggers else 0.0
        harness_trial(cfg, corpus, tracking, trivial)  # warm-up: imports, allocator, first Trainer
        pairs = []
        for _ in range(repeats):
            pairs.append((harness_trial(cfg, corpus, tracking, trivial), bare_loop(cfg, corpus)))
    ratios = [h / b for h, b in pairs]
    return {"baseline": cfg.baseline, "steps": cfg.train.steps, "d_model": cfg.model.d_model,
            "n_layers": cfg.model.n_layers, "repeats": repeats,
            "harness_s": statistics.median(h for h, _ in pairs), "bare_s": statistics.median(b for _, b in pairs),
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "pairs": [[round(h, 3), round(b, 3)] for h, b in pairs], "threads": torch.get_num_threads(),
            "loggers": list(loggers),
            "ok": statistics.median(ratios) <= 1.05 or math.isnan(statistics.median(ratios))}
