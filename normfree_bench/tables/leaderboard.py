"""The leaderboard's computation: per-trial records of an LR sweep in, one row per (baseline, axis cell) out.

Usage: ``rows = summarize(records, l0=math.log(256), trivial=3.29, axes=["dyt.alpha_init"])``

Pure functions (numpy and scipy only). A "cell" is one baseline at one combination of extra-axis values;
its "grid" is the set of LRs tried in it. Each record is one finished (COMPLETE) trial:

- ``baseline``, ``lr`` (> 0), ``seed``, ``final_val_loss`` (may be nan/inf), ``diverged`` (required);
- ``phase``: ``tune`` (the LR grid; default) or ``eval`` (a held-out seed at the cell's chosen LR);
- ``best_val_loss``, ``spiked``, ``tokens_per_s``, ``params``, ``final_val_accuracy``, and ``curve``,
  the (step, val_loss) pairs in step order; any extra-axis keys named through ``axes``.

Definitions (README, "Leaderboard columns", says the same for readers):

- capped loss of a trial, LR curve and ``best_lr``: as the sweep chose them (normfree_bench.sweep.selection:
  ``min(final_val_loss, l0)``, a diverged or non-finite trial counting as ``l0``; the mean over tuning
  seeds at each LR; its arg-min, ties to the smaller LR).
- ``trivial``: the validation loss of the best constant predictor (the training split's unigram or
  class frequencies), measured on the run's data. A cell is ``trained`` when its best loss is below
  ``trivial * (1 - trained_margin)``; otherwise ``failed: no learning``, or ``failed: diverged`` when
  every trial of the cell diverged. A trial is *stalled* when it did not diverge but finished at or
  above that same threshold.
- Robustness figures (``lr_sensitivity``, ``lr_basin_decades``, ``max_stable_lr``, ``spiked``) exist
  for trained cells only: a scheme that never learned is flat, and would otherwise look robust.
- ``lr_sensitivity`` (Wortsman et al.): the LR curve, linearly interpolated in log10(LR), sampled at
  the 1-3 points (1·10^k and 3·10^k) of a fixed ``window`` (default 3e-4 ... 3e-1): the mean of the
  samples minus their minimum. A grid that does not cover the window gives no value, and says so.
- ``lr_basin_decades``: the width in decades of the LR band around ``best_lr`` whose loss is within
  ``basin_tol`` of what the cell learned (``best + basin_tol * (trivial - best)``), the band's edges
  interpolated in log10(LR) between grid points; ``lr_basin_censored`` when it reaches a grid edge.
- ``max_stable_lr``: the top of the contiguous run of LRs from ``best_lr`` upward at which no seed
  diverged; ``max_stable_lr_censored`` when that is the top of the grid (so it means "at least").
- ``best_lr_censored``: ``best_lr`` is an edge of the grid (the optimum may lie beyond it);
  ``best_lr_edge`` says which (``low`` or ``high``).
- held-out seeds: trials of phase ``eval`` re-run the chosen LR with fresh seeds (AlgoPerf and the
  tuning playbook choose on tuning runs and report on fresh ones); ``heldout_loss`` is their mean
  capped loss and ``p_vs_reference`` a one-sided Welch t-test (H1: this cell's loss is below the
  reference's) on them, Holm-corrected over every tested cell. The tuning seeds that chose the LR are
  never used for a p-value (selection bias). A trained cell whose held-out mean is at or above the
  trained threshold gets a note saying how many held-out seeds stalled: its tuning seed's loss did not
  reproduce at the chosen LR.
- ``steps_to_target``: the target is ``target`` if given, else the reference's loss at its chosen LR
  (held-out seeds when there are any) plus ``target_tol * (trivial - that loss)`` (none when the
  reference itself did not train, or that loss is not below the trained threshold: a reference whose
  held-out seeds stalled sets no target); for each seed at
  the chosen LR, the first step at which its validation curve reaches the target, interpolated
  linearly between eval points (the curve starts at (0, l0)); the median over seeds (inf unless more
  than half reach it) and ``target_reached`` = k/N seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import stats

from normfree_bench.config import SweepConfig
from normfree_bench.sweep.selection import best_lr_of, capped_loss, lr_curve

HELDOUT_STALLED = "held-out seeds stalled at best_lr"  # in the note of a trained cell that did not reproduce

__all__ = ["COLUMN_DOCS", "HELDOUT_STALLED", "LEADERBOARD_COLUMNS", "capped_loss", "holm", "summarize",
           "trials_at_best_lr"]

REFERENCE = SweepConfig.reference  # the default reference scheme, from the config's default
WINDOW = tuple(SweepConfig().sensitivity_window)
TRAINED = "trained"
NO_LEARNING = "failed: no learning"
DIVERGED = "failed: diverged"

#: Row keys of :func:`summarize`, in order; the caller's axis names follow ``baseline``.
LEADERBOARD_COLUMNS: tuple[str, ...] = (
    "baseline", "verdict", "init", "best_val_loss", "best_val_loss_std", "best_val_loss_ci95", "tuning_seeds",
    "best_lr", "best_lr_censored", "best_lr_edge", "heldout_loss", "heldout_loss_std", "heldout_loss_ci95",
    "heldout_seeds", "p_vs_reference", "lr_sensitivity", "lr_basin_decades", "lr_basin_censored", "max_stable_lr",
    "max_stable_lr_censored", "diverged", "diverged_count", "stalled", "stalled_count", "spiked", "spiked_count",
    "n_trials", "steps_to_target", "target_reached", "target_reached_count", "tokens_per_s", "params",
    "best_val_accuracy", "heldout_accuracy", "note",
)

#: What each column means, its unit and when it is empty (the report's legend; the README's table).
COLUMN_DOCS: dict[str, str] = {
    "verdict": "trained, 'failed: no learning' (best loss not below the trivial loss by trained_margin) or "
               "'failed: diverged' (every trial diverged)",
    "init": "the network's init: model.init (paper or shared) and the rule it resolved to for this baseline "
            "(gpt2, llama, timm, xavier, lecun; README 'Init')",
    "best_val_loss": "nats: mean final validation loss (capped at l0) over the tuning seeds at best_lr; chosen on "
                     "these seeds, so optimistic",
    "best_val_loss_std": "nats: sample std over those seeds; empty with one seed",
    "best_val_loss_ci95": "nats: 95 % t-interval half-width over those seeds; empty with one seed",
    "tuning_seeds": "the seeds of the LR grid behind best_val_loss",
    "best_lr": "the LR with the lowest mean capped loss (ties: the smaller); ≤ / ≥ at an edge of the grid",
    "best_lr_censored": "true when best_lr is an edge of the grid (the optimum may lie beyond it)",
    "best_lr_edge": "low or high: which edge, when censored",
    "heldout_loss": "nats: mean capped final loss over fresh seeds re-run at best_lr (sweep.eval_seeds); the "
                    "figure to quote; empty without held-out seeds",
    "heldout_loss_std": "nats: sample std over the held-out seeds; empty with fewer than two",
    "heldout_loss_ci95": "nats: 95 % t-interval half-width over the held-out seeds; empty with fewer than two",
    "heldout_seeds": "the held-out seeds",
    "p_vs_reference": "one-sided Welch t-test on the held-out seeds, H1: loss below the reference's; Holm-corrected "
                      "over the tested cells; empty for the reference, without two held-out seeds on both sides, "
                      "or when both have zero variance",
    "lr_sensitivity": "nats: Wortsman's mean excess over the fixed sweep.sensitivity_window (interpolated in "
                      "log-LR); empty for a failed cell or a grid that does not cover the window",
    "lr_basin_decades": "decades: width of the LR band within basin_tol of what the cell learned, interpolated in "
                        "log-LR; ≥ when it reaches an edge of the grid; empty for a failed cell",
    "lr_basin_censored": "true when the basin reaches an edge of the grid",
    "max_stable_lr": "the top of the contiguous run of LRs from best_lr up where no seed diverged; ≥ at the top of "
                     "the grid; empty for a failed cell",
    "max_stable_lr_censored": "true when max_stable_lr is the top of the grid",
    "diverged": "k/N tuning trials stopped as diverged (non-finite, or above l0 + margin for the patience window)",
    "diverged_count": "k of diverged",
    "stalled": "k/N tuning trials that finished without diverging at or above the trivial-loss threshold",
    "stalled_count": "k of stalled",
    "spiked": "k/N tuning trials that rose above l0 + margin and recovered (diverged ones not counted); empty for "
              "a failed cell",
    "spiked_count": "k of spiked",
    "n_trials": "N: the cell's tuning trials",
    "steps_to_target": "steps: median over the chosen seeds of the first step reaching the target, interpolated "
                       "between eval points; ∞ unless more than half reach it; empty when the reference did not "
                       "learn (on its held-out seeds, when it has them)",
    "target_reached": "k/N of those seeds that reached the target",
    "target_reached_count": "k of target_reached",
    "tokens_per_s": "tokens (LM) or patches (ViT) per second of training steps, evaluation excluded: the median "
                    "over the cell's tuning trials that did not diverge",
    "params": "parameter count",
    "best_val_accuracy": "ViT: mean final validation accuracy over the tuning seeds at best_lr",
    "heldout_accuracy": "ViT: mean final validation accuracy over the held-out seeds",
    "note": "why a figure is empty",
}

_REQUIRED = ("baseline", "lr", "seed", "final_val_loss", "diverged")
Record = dict[str, Any]
Cell = tuple[Any, ...]


# ---- per-trial quantities -----------------------------------------------------------------------
def steps_to_reach(curve: Iterable[Sequence[float]], target: float, l0: float) -> float:
    """First step at which the validation curve reaches ``target``, interpolated linearly between eval
    points (the curve starts at (0, l0)); ``inf`` if it never does. Non-finite points never count."""
    prev_step, prev_loss = 0.0, float(l0)
    for step, loss in curve:
        step, loss = float(step), float(loss)
        if not math.isfinite(loss):
            prev_step, prev_loss = step, math.inf
            continue
        if loss <= target:
            if not math.isfinite(prev_loss) or prev_loss <= target:
                return step
            return prev_step + (step - prev_step) * (prev_loss - target) / (prev_loss - loss)
        prev_step, prev_loss = step, loss
    return math.inf


# ---- statistics ----------------------------------------------------------------------------------
def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni step-down adjustment, in the input order: sorted ascending, p_(i) becomes
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``. ``[0.01, 0.04, 0.03]`` -> ``[0.03, 0.06, 0.06]``."""
    ps = [float(p) for p in pvalues]
    for p in ps:
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"holm: p-values must be finite and in [0, 1], got {p!r}")
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    adjusted, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def welch_less(a: Sequence[float], b: Sequence[float]) -> float | None:
    """One-sided Welch t-test p-value of H1: mean(a) < mean(b). None with fewer than 2 values in either
    sample, or when both have zero variance (the statistic is undefined, not 0 or 1)."""
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(xa) < 2 or len(xb) < 2 or (np.ptp(xa) == 0.0 and np.ptp(xb) == 0.0):
        return None
    return float(stats.ttest_ind(xa, xb, equal_var=False, alternative="less").pvalue)


def mean_std_ci(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    """Mean, sample std and the 95 % t-interval half-width; both None for one value (every table
    writes them empty, as documented, rather than ``nan``)."""
    n = len(values)
    mean = float(np.mean(values))
    if n < 2:
        return mean, None, None
    std = float(np.std(values, ddof=1))
    return mean, std, float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


# ---- the LR curve ----------------------------------------------------------------------------------
def interpolate(curve: dict[float, float], lr: float) -> float:
    """The curve at ``lr``, linear in log10(LR) between grid points (``lr`` inside the grid)."""
    lrs = list(curve)
    x = math.log10(lr)
    for lo, hi in zip(lrs, lrs[1:]):
        if lo <= lr * (1 + 1e-9) and lr <= hi * (1 + 1e-9):
            a, b = math.log10(lo), math.log10(hi)
            t = 0.0 if b == a else min(1.0, max(0.0, (x - a) / (b - a)))
            return curve[lo] + t * (curve[hi] - curve[lo])
    return curve[lrs[0]]  # a one-point grid


def window_points(lo: float, hi: float) -> list[float]:
    """The 1-3 points (1·10^k, 3·10^k) in [lo, hi]: 3e-4, 1e-3, ..., 3e-1 for the default window."""
    points = []
    for k in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1):
        for m in (1.0, 3.0):
            p = float(f"{m * 10.0 ** k:.6g}")
            if lo * (1 - 1e-9) <= p <= hi * (1 + 1e-9):
                points.append(p)
    return points


def lr_sensitivity(curve: dict[float, float], window: Sequence[float]) -> tuple[float | None, str | None]:
    """(sensitivity, note): Wortsman's mean excess over the fixed window, or None with the reason."""
    lo, hi = float(window[0]), float(window[1])
    lrs = list(curve)
    if lrs[0] > lo * (1 + 1e-9) or lrs[-1] < hi * (1 - 1e-9):
        return None, (f"the grid ({_lr(lrs[0])} .. {_lr(lrs[-1])}) does not cover the sensitivity window "
                      f"{_lr(lo)} .. {_lr(hi)}")
    samples = [interpolate(curve, p) for p in window_points(lo, hi)]
    return float(np.mean(samples) - min(samples)), None


def lr_basin(curve: dict[float, float], best_lr: float, limit: float) -> tuple[float, bool]:
    """(width in decades, censored) of the band around ``best_lr`` whose loss is <= ``limit``; each edge
    is where the curve crosses ``limit``, linear in log10(LR); censored when the band reaches a grid edge."""
    lrs = list(curve)
    i = lrs.index(best_lr)
    ends, censored = [], False
    for step in (-1, 1):
        j = i
        while 0 <= j + step < len(lrs) and curve[lrs[j + step]] <= limit:
            j += step
        if not 0 <= j + step < len(lrs):  # the band reaches the grid's edge: at least this wide
            ends.append(math.log10(lrs[j]))
            censored = True
            continue
        inside, outside = lrs[j], lrs[j + step]
        a, b = math.log10(inside), math.log10(outside)
        t = (limit - curve[inside]) / (curve[outside] - curve[inside])
        ends.append(a + t * (b - a))
    return float(ends[1] - ends[0]), censored


def max_stable_lr(groups: dict[float, list[Record]], best_lr: float) -> tuple[float | None, bool]:
    """(LR, censored): the top of the contiguous run of LRs from ``best_lr`` upward where no seed
    diverged; censored when it is the top of the grid. None when ``best_lr`` itself diverged."""
    lrs = sorted(groups)
    top = None
    for lr in lrs[lrs.index(best_lr):]:
        if any(bool(r["diverged"]) for r in groups[lr]):
            break
        top = lr
    return top, top is not None and top == lrs[-1]


def seed_label(seeds: Iterable[Any]) -> str:
    """``0``, ``0-2`` or ``0, 2, 5``: the seeds behind a figure."""
    values = sorted({int(s) for s in seeds})
    if not values:
        return ""
    if len(values) > 1 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}-{values[-1]}"
    return ", ".join(map(str, values))


def _lr(value: float) -> str:
    return f"{value:.3g}"


# ---- summaries ----------------------------------------------------------------------------------
def trials_at_best_lr(rows: Sequence[dict[str, Any]], trials: Sequence[Record],
                      axes: Sequence[str]) -> list[list[Record]]:
    """For each leaderboard row, the COMPLETE tuning trials of its cell at its ``best_lr``: the one
    definition of "the best cell" that the plots, ``analyze`` and the report use."""
    return [[t for t in trials if t.get("status", "COMPLETE") == "COMPLETE" and t.get("phase", "tune") == "tune"
             and t["baseline"] == row["baseline"] and float(t["lr"]) == float(row["best_lr"])
             and all(t.get(a) == row.get(a) for a in axes)] for row in rows]


def _validate(records: Sequence[Record], axes: Sequence[str]) -> None:
    if not records:
        raise ValueError("summarize: no records given (empty LR sweep)")
    seen: set[tuple[Any, ...]] = set()
    for n, rec in enumerate(records):
        missing = [k for k in _REQUIRED if k not in rec]
        if missing:
            raise ValueError(f"summarize: record #{n} lacks required key(s) {missing}")
        lr = float(rec["lr"])
        if not (math.isfinite(lr) and lr > 0.0):
            raise ValueError(f"summarize: record #{n} has non-positive or non-finite lr {lr!r}")
        key = (rec["baseline"], rec.get("phase", "tune"), *(rec.get(a) for a in axes), lr, rec["seed"])
        if key in seen:
            raise ValueError(f"summarize: duplicate trial (baseline, phase, *axes, lr, seed) = {key!r} at record #{n}")
        seen.add(key)


def _axis_sort_key(cell: Cell) -> tuple[tuple[int, Any], ...]:
    """Numbers (numerically), then strings, then None."""
    return tuple((2, "") if v is None else (0, float(v)) if isinstance(v, (int, float, np.number))
                 and not isinstance(v, bool) else (1, str(v)) for v in cell)


def _cell_row(baseline: str, axes: Sequence[str], cell: Cell, tune: Sequence[Record], heldout: Sequence[Record],
              l0: float, trivial: float, s: SweepConfig) -> dict[str, Any]:
    """One row, without ``p_vs_reference`` and the time to target (they need the other rows)."""
    groups: dict[float, list[Record]] = {}
    for rec in tune:
        groups.setdefault(float(rec["lr"]), []).append(rec)
    curve = lr_curve(tune, l0)
    best = best_lr_of(curve)
    at_best = groups[best]
    mean, std, ci = mean_std_ci([capped_loss(r, l0) for r in at_best])
    stall_at = trivial * (1 - s.trained_margin)
    n_div = sum(bool(r["diverged"]) for r in tune)
    stalled = sum(not r["diverged"] and capped_loss(r, l0) >= stall_at for r in tune)
    spiked = sum(not r["diverged"] and bool(r.get("spiked")) for r in tune)
    verdict = DIVERGED if n_div == len(tune) else NO_LEARNING if mean >= stall_at else TRAINED
    row: dict[str, Any] = {"baseline": baseline, **dict(zip(axes, cell, strict=True)), "verdict": verdict,
                           "best_val_loss": mean, "best_val_loss_std": std, "best_val_loss_ci95": ci,
                           "tuning_seeds": seed_label(r["seed"] for r in at_best), "best_lr": best,
                           "best_lr_censored": len(curve) > 1 and best in (min(curve), max(curve)),
                           "best_lr_edge": None if len(curve) < 2 else "low" if best == min(curve)
                           else "high" if best == max(curve) else None,
                           "diverged": f"{n_div}/{len(tune)}", "diverged_count": n_div,
                           "stalled": f"{stalled}/{len(tune)}", "stalled_count": stalled, "n_trials": len(tune)}
    held = [capped_loss(r, l0) for r in heldout]
    h_mean, h_std, h_ci = mean_std_ci(held) if held else (None, None, None)
    row.update(heldout_loss=h_mean, heldout_loss_std=h_std, heldout_loss_ci95=h_ci,
               heldout_seeds=seed_label(r["seed"] for r in heldout) or None, p_vs_reference=None)
    if verdict == TRAINED:
        sensitivity, note = lr_sensitivity(curve, s.sensitivity_window)
        width, basin_censored = lr_basin(curve, best, mean + s.basin_tol * (trivial - mean))
        stable, stable_censored = max_stable_lr(groups, best)
        held_stalled = sum(loss >= stall_at for loss in held)
        if h_mean is not None and h_mean >= stall_at:  # the chosen LR learned on the tuning seed only
            note = "; ".join(n for n in (note, f"{held_stalled}/{len(held)} {HELDOUT_STALLED} "
                                         f"(mean {h_mean:.4g} >= {stall_at:.4g}): the tuning seed's loss did not "
                                         "reproduce") if n)
        row.update(lr_sensitivity=sensitivity, lr_basin_decades=width, lr_basin_censored=basin_censored,
                   max_stable_lr=stable, max_stable_lr_censored=stable_censored,
                   spiked=f"{spiked}/{len(tune)}", spiked_count=spiked, note=note)
    else:
        row.update(lr_sensitivity=None, lr_basin_decades=None, lr_basin_censored=None, max_stable_lr=None,
                   max_stable_lr_censored=None, spiked=None, spiked_count=None,
                   note=f"{verdict}: robustness figures are left out (a scheme that never learned is flat)")
    ok = [r for r in tune if not r["diverged"]]
    tps = [float(r["tokens_per_s"]) for r in ok if r.get("tokens_per_s") is not None
           and math.isfinite(float(r["tokens_per_s"]))]
    params = [int(r["params"]) for r in tune if r.get("params") is not None]

    def accuracy(recs: Sequence[Record]) -> float | None:
        values = [float(r["final_val_accuracy"]) for r in recs if r.get("final_val_accuracy") is not None
                  and math.isfinite(float(r["final_val_accuracy"]))]
        return float(np.mean(values)) if values else None

    row.update(tokens_per_s=float(np.median(tps)) if tps else None, params=max(params) if params else None,
               best_val_accuracy=accuracy(at_best), heldout_accuracy=accuracy(heldout))
    return row


def summarize(records: Sequence[Record], l0: float, trivial: float, *, axes: Sequence[str] = (),
              reference: str = REFERENCE, sweep: SweepConfig | None = None,
              inits: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Leaderboard rows, one per (baseline, *axis values) cell: the reference first, then the other
    baselines in order of first appearance, each baseline's cells by axis value (numbers ascending, then
    strings, then None). ``sweep`` holds the settings (``trained_margin``, ``sensitivity_window``,
    ``basin_tol``, ``target_loss``, ``target_tol``; defaults when None); ``inits`` labels each baseline's
    network init (the ``init`` column).

    A reference record lacking an axis key (value None) is the reference of every value of that axis,
    so ``layernorm`` without ``alpha_init`` is compared with every ``dyt.alpha_init`` cell. Raises
    ``ValueError`` on no records, a missing required key, a non-positive LR or a duplicated trial."""
    s = sweep or SweepConfig()
    axes = list(axes)
    _validate(records, axes)
    order = list(dict.fromkeys(r["baseline"] for r in records))
    if reference in order:
        order.remove(reference)
        order.insert(0, reference)
    tune: dict[tuple[str, Cell], list[Record]] = {}
    held: dict[tuple[str, Cell], list[Record]] = {}
    for rec in records:
        key = (rec["baseline"], tuple(rec.get(a) for a in axes))
        (held if rec.get("phase", "tune") == "eval" else tune).setdefault(key, []).append(rec)
    keys = sorted(tune, key=lambda k: (order.index(k[0]), _axis_sort_key(k[1])))
    rows = {k: _cell_row(k[0], axes, k[1], tune[k], held.get(k, []), l0, trivial, s) for k in keys}
    for (name, _), row in rows.items():
        row["init"] = (inits or {}).get(name)

    def reference_of(cell: Cell) -> tuple[str, Cell] | None:
        return next((k for k in keys if k[0] == reference
                     and all(r is None or r == v for r, v in zip(k[1], cell, strict=True))), None)

    def reference_loss(ref_row: dict[str, Any]) -> float:
        return ref_row["heldout_loss"] if ref_row["heldout_loss"] is not None else ref_row["best_val_loss"]

    stall_at = trivial * (1 - s.trained_margin)
    tested: list[tuple[tuple[str, Cell], float]] = []
    for key in keys:
        ref = reference_of(key[1])
        row, ref_row = rows[key], rows[ref] if ref else None
        chosen = held.get(key) or [r for r in tune[key] if float(r["lr"]) == row["best_lr"]]
        if s.target_loss is not None:
            target = s.target_loss
        elif ref_row is not None and ref_row["verdict"] == TRAINED and reference_loss(ref_row) < stall_at:
            target = reference_loss(ref_row) + s.target_tol * (trivial - reference_loss(ref_row))
        else:  # no reference, or one that did not learn (on its held-out seeds, when it has them)
            target = None
        if target is None:
            row.update(steps_to_target=None, target_reached=None, target_reached_count=None)
        else:
            steps = [steps_to_reach(r.get("curve") or [], target, l0) for r in chosen]
            reached = sum(math.isfinite(x) for x in steps)
            row.update(steps_to_target=float(np.median(steps)), target_reached=f"{reached}/{len(steps)}",
                       target_reached_count=reached)
        if ref is not None and key[0] != reference:
            p = welch_less([capped_loss(r, l0) for r in held.get(key, [])],
                           [capped_loss(r, l0) for r in held.get(ref, [])])
            if p is not None:
                tested.append((key, p))
    for (key, _), p in zip(tested, holm([p for _, p in tested]), strict=True):
        rows[key]["p_vs_reference"] = p
    return [{c: rows[k].get(c) for c in ("baseline", *axes, *LEADERBOARD_COLUMNS[1:])} for k in keys]
