"""Which learning rate a sweep chooses: the one definition of "the best LR" that the held-out phase, the
leaderboard, the plots and ``analyze`` share.

Usage: ``best = best_lr_of(lr_curve(records, l0))``; ``cells = chosen_cells(records, axes, l0)``

A trial's capped loss is ``min(final_val_loss, l0)``, a diverged trial or a non-finite loss counting as
``l0`` (Wortsman et al. 2023, https://arxiv.org/abs/2309.14322); a cell's LR curve is the mean capped loss
over its seeds at each LR, and its best LR the arg-min (ties: the smaller LR).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

Record = dict[str, Any]
Cell = tuple[Any, ...]
_EPS = 1e-12  # relative slack when comparing losses, so that float round-off does not decide


def capped_loss(rec: Record, l0: float) -> float:
    """``min(final_val_loss, l0)``; a diverged trial or a non-finite loss counts as exactly ``l0``."""
    loss = float(rec["final_val_loss"])
    if bool(rec["diverged"]) or not math.isfinite(loss):
        return float(l0)
    return min(loss, float(l0))


def below(a: float, b: float) -> bool:
    """``a < b`` beyond float round-off."""
    return a < b - _EPS * max(1.0, abs(b))


def lr_curve(records: Sequence[Record], l0: float) -> dict[float, float]:
    """Mean capped loss over seeds at each LR, ascending LR."""
    groups: dict[float, list[float]] = {}
    for rec in records:
        groups.setdefault(float(rec["lr"]), []).append(capped_loss(rec, l0))
    return {lr: float(np.mean(groups[lr])) for lr in sorted(groups)}


def best_lr_of(curve: dict[float, float]) -> float:
    """The arg-min LR of the curve; ties go to the smaller LR."""
    best = None
    for lr in curve:
        if best is None or below(curve[lr], curve[best]):
            best = lr
    assert best is not None
    return best


def chosen_cells(records: Sequence[Record], axes: Sequence[str], l0: float) -> dict[tuple[str, Cell], float]:
    """The best LR of every (baseline, axis values) cell of ``records`` (tuning trials)."""
    cells: dict[tuple[str, Cell], list[Record]] = {}
    for rec in records:
        cells.setdefault((rec["baseline"], tuple(rec.get(a) for a in axes)), []).append(rec)
    return {key: best_lr_of(lr_curve(recs, l0)) for key, recs in cells.items()}
