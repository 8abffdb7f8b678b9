"""Data-parallel trials: one trial over ``train.devices`` processes with Lightning's DDP strategy.

Usage: ``--set train.devices=2 --set train.strategy=ddp`` (in code: ``train_one(cfg)`` dispatches to `train_ddp`)

For models that need more than one device. Each trial starts ``devices`` processes (``spawn``), one per GPU on
CUDA (NCCL) and one per share of the CPU threads on a CPU (gloo). The processes are started by this module and
tell Lightning so through the usual variables (``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``),
so Lightning does not re-launch the command line, which would re-run a whole sweep in every rank.

The recipe is the single-process one with the same global batch:

- every rank draws the same global batch (the same seeded stream) and trains on its contiguous share of its
  rows (`RankShard`), so DDP's gradient average is the full batch's mean gradient, and clipping, AdamW and
  the schedule see what one process would;
- the loss the curves and the divergence guard read is averaged over the ranks every step (the full batch's
  loss), so every rank stops at the same step;
- every rank evaluates the whole validation set (no distributed sampler) and torchmetrics sums the ranks'
  sums and counts, so the validation loss is the single process's.

`tests/test_parallel.py` trains 2 gloo processes and one process on the same global batch and compares the
curves. Beyond one device's memory for the model itself (sharding parameters, gradients and optimizer state),
Lightning's FSDP strategy is the path; it is not built here.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from normfree_bench.config import RunConfig
from normfree_bench.errors import UserError

TIMEOUT = timedelta(minutes=5)  # a rank that died leaves the others waiting in a collective this long at most


class RankShard(IterableDataset):
    """Rank ``rank``'s contiguous share of every batch of ``stream`` (an iterable of ``(x, y)`` batches)."""

    def __init__(self, stream: Any, rank: int, world: int) -> None:
        super().__init__()
        self.stream, self.rank, self.world = stream, rank, world

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.stream:
            share = x.shape[0] // self.world
            rows = slice(self.rank * share, (self.rank + 1) * share)
            yield x[rows], y[rows]


def shard_loader(loader: DataLoader, rank: int, world: int) -> DataLoader:
    return DataLoader(RankShard(loader.dataset, rank, world), batch_size=None)


def check_parallel(cfg: RunConfig, device: str) -> None:
    """Refuse a data-parallel setting this machine or the batch cannot serve, before any work."""
    devices = cfg.train.devices
    if devices == 1:
        return
    if cfg.data.batch_size % devices:
        raise UserError(f"data.batch_size {cfg.data.batch_size} is not divisible by train.devices {devices}; every "
                        "rank trains on an equal share of the global batch")
    if device == "cuda" and torch.cuda.device_count() < devices:
        raise UserError(f"train.devices {devices} but this machine has {torch.cuda.device_count()} GPU(s); valid: "
                        f"1 .. {torch.cuda.device_count()}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, train: Callable[..., Any], cfg: RunConfig, port: int, callbacks: list[Any],
               queue: Any) -> None:
    """One rank: the variables that make Lightning treat the processes as launched, then the trial."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(cfg.train.devices),
                       "NODE_RANK": "0", "LOCAL_RANK": str(rank), "RANK": str(rank)})
    try:
        result = train(cfg, callbacks=callbacks, rank=rank)
        if rank == 0:
            queue.put(("ok", result))
    except BaseException as exc:  # reported to the parent, which raises it there
        queue.put(("error", f"rank {rank}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def train_ddp(train: Callable[..., Any], cfg: RunConfig, callbacks: list[Any] | None = None) -> Any:
    """Run ``train(cfg, callbacks=..., rank=r)`` (`train_one`) in ``cfg.train.devices`` processes; returns rank
    0's `RunResult`. Each rank loads the data itself (the on-disk cache), so nothing large crosses the process
    boundary."""
    ctx = torch.multiprocessing.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(rank, train, cfg, port, list(callbacks or []), queue))
             for rank in range(cfg.train.devices)]
    for p in procs:
        p.start()
    try:
        while queue.empty():  # a rank killed outright (out of memory, a signal) reports nothing
            if not any(p.is_alive() for p in procs) and queue.empty():
                codes = [p.exitcode for p in procs]
                raise RuntimeError(f"the data-parallel ranks exited without a result (exit codes {codes})")
            time.sleep(0.05)
        status, payload = queue.get()
    finally:
        for p in procs:
            p.join(timeout=TIMEOUT.total_seconds())
            if p.is_alive():
                p.kill()
    if status != "ok":
        raise RuntimeError(f"a data-parallel rank failed: {payload}")
    return payload
