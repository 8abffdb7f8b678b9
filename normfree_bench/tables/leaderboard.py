"""Usage: ``rows = summarize(records, l0=math.log(256), axes=["alpha_init"])``.

Turn the per-trial records of a learning-rate sweep into leaderboard rows.

The methodology follows Wortsman et al. 2023, "Small-scale proxies for
large-scale Transformer training instabilities" (arXiv 2309.14322): a trial's
loss is capped at the initial loss ``l0`` so that a diverged run counts as "no
progress" rather than as an arbitrarily large number, and LR sensitivity is
the average excess of the capped loss over the LR grid.  Time-to-target
(``steps_to_target``) follows the AlgoPerf benchmark.

Pure functions, numpy + scipy only.

Record format (one ``dict`` per finished trial):

- ``baseline: str``, ``lr: float`` (> 0), ``seed: int``
- ``final_val_loss: float`` (may be nan/inf), ``best_val_loss: float``
- ``diverged: bool``, ``spiked: bool``
- ``tokens_per_s: float``, ``params: int``
- ``curve: list[tuple[int, float]]``: (step, val_loss) pairs in step order
- any extra-axis keys named by the caller through ``axes``.

``baseline``, ``lr``, ``seed``, ``final_val_loss`` and ``diverged`` are
required; the others default to ``best_val_loss = final_val_loss``,
``spiked = False``, ``tokens_per_s = nan``, ``params = None``, ``curve = []``.
A record that lacks an axis key has the value ``None`` on that axis.

Definitions used throughout (a "cell" is one baseline at one combination of
the extra-axis values; the "grid" is the set of LRs tried in that cell):

- capped loss of a trial: ``min(final_val_loss, l0)``; a diverged trial or a
  non-finite ``final_val_loss`` counts as exactly ``l0``.
- per-LR loss: the mean over seeds of the capped loss at that LR.
- ``best_lr``: the LR with the smallest per-LR loss; ties go to the smaller LR.
- ``best_val_accuracy``: for classification runs (records with a finite
  ``final_val_accuracy``), the mean over seeds at ``best_lr``; ``None`` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import stats

from normfree_bench.config import SweepConfig

__all__ = [
    "LEADERBOARD_COLUMNS",
    "capped_loss",
    "default_target",
    "holm",
    "summarize",
]

#: Row keys of :func:`summarize` in display order.  The caller's axis names
#: are not listed (they vary); in every row they come right after
#: ``baseline``, in the order given by ``axes``.
LEADERBOARD_COLUMNS: tuple[str, ...] = (
    "baseline",
    "best_val_loss",
    "best_val_loss_std",
    "best_val_loss_ci95",
    "best_lr",
    "best_lr_at_edge",
    "lr_sensitivity",
    "diverged",
    "diverged_count",
    "n_trials",
    "max_stable_lr",
    "spiked",
    "spiked_count",
    "lr_basin_decades",
    "steps_to_target",
    "tokens_per_s",
    "params",
    "p_vs_reference",
    "seeds",
    "best_val_accuracy",
)

REFERENCE = SweepConfig.reference  # the default reference scheme, from the config's default

# Relative slack used when comparing means for ties and for the basin
# tolerance, so that float round-off (e.g. 3.05 - 3.0 > 0.05) does not decide.
_EPS = 1e-12

_REQUIRED = ("baseline", "lr", "seed", "final_val_loss", "diverged")

Record = dict[str, Any]
Cell = tuple[Any, ...]


# --------------------------------------------------------------------------
# Per-trial quantities
# --------------------------------------------------------------------------


def capped_loss(rec: Record, l0: float) -> float:
    """Capped loss of one trial: ``min(final_val_loss, l0)``.

    A trial flagged ``diverged`` or with a non-finite ``final_val_loss``
    (nan, +inf, -inf) counts as exactly ``l0``.
    """
    if bool(rec["diverged"]):
        return float(l0)
    loss = float(rec["final_val_loss"])
    if not math.isfinite(loss):
        return float(l0)
    return min(loss, float(l0))


def _capped_best(rec: Record, l0: float) -> float:
    """``min(best_val_loss, l0)`` with a non-finite value counting as ``l0``.

    Unlike :func:`capped_loss` the ``diverged`` flag is ignored: the best
    validation loss is reached before any divergence.
    """
    value = float(rec.get("best_val_loss", rec["final_val_loss"]))
    if not math.isfinite(value):
        return float(l0)
    return min(value, float(l0))


def _first_step_at_or_below(curve: Iterable[Sequence[float]], target: float) -> float:
    """First step of ``curve`` whose val_loss is ``<= target``; ``inf`` if none.

    Non-finite losses in the curve never count as reaching the target.
    """
    for step, loss in curve:
        loss = float(loss)
        if math.isfinite(loss) and loss <= target:
            return float(step)
    return math.inf


# --------------------------------------------------------------------------
# Statistics helpers
# --------------------------------------------------------------------------


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni step-down adjustment of a family of p-values.

    Sorting ascending as ``p_(1) <= ... <= p_(m)``, the adjusted value of
    ``p_(i)`` is ``max_{j <= i} min(1, (m - j + 1) * p_(j))``, which makes
    the adjusted values monotone in the raw ones and caps them at 1.  Values
    are returned in the input order.  Example: ``[0.01, 0.04, 0.03]`` ->
    ``[0.03, 0.06, 0.06]`` (0.01*3 = 0.03; 0.03*2 = 0.06; max(0.06, 0.04*1)).

    Raises ``ValueError`` if a value is not a finite number in [0, 1].
    """
    ps = [float(p) for p in pvalues]
    for p in ps:
        if not (math.isfinite(p) and 0.0 <= p <= 1.0):
            raise ValueError(f"holm: p-values must be finite and in [0, 1], got {p!r}")
    m = len(ps)
    order = sorted(range(m), key=lambda i: ps[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def _welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch t-test p-value of samples ``a`` and ``b``.

    If both samples have zero variance the t statistic is undefined; then
    p = 1.0 when the means are equal and 0.0 otherwise.
    """
    xa = np.asarray(a, dtype=float)
    xb = np.asarray(b, dtype=float)
    if np.ptp(xa) == 0.0 and np.ptp(xb) == 0.0:
        return 1.0 if xa[0] == xb[0] else 0.0
    res = stats.ttest_ind(xa, xb, equal_var=False)
    return float(res.pvalue)


# --------------------------------------------------------------------------
# LR-grid helpers
# --------------------------------------------------------------------------


def _by_lr(records: Sequence[Record]) -> dict[float, list[Record]]:
    """Group records by LR, keys in ascending LR order."""
    groups: dict[float, list[Record]] = {}
    for rec in sorted(records, key=lambda r: float(r["lr"])):
        groups.setdefault(float(rec["lr"]), []).append(rec)
    return groups


def _lr_means(groups: dict[float, list[Record]], l0: float) -> dict[float, float]:
    """Per-LR mean over seeds of the capped loss."""
    return {lr: float(np.mean([capped_loss(r, l0) for r in recs])) for lr, recs in groups.items()}


def _is_below(a: float, b: float) -> bool:
    """``a < b`` beyond float round-off."""
    return a < b - _EPS * max(1.0, abs(b))


def _best_lr(means: dict[float, float]) -> float:
    """LR with the smallest mean capped loss; ties go to the smaller LR."""
    best: float | None = None
    for lr in sorted(means):
        if best is None or _is_below(means[lr], means[best]):
            best = lr
    assert best is not None
    return best


def _basin_decades(means: dict[float, float], best_lr: float, tol: float) -> float:
    """Width in decades of the contiguous band of LRs within ``tol`` of the best.

    Starting at ``best_lr`` and walking outward along the sorted grid in each
    direction, an LR joins the band while its mean capped loss is
    ``<= best + tol`` (inclusive, up to float round-off); the walk stops at the
    first LR outside.  A single-point band has width 0.0.
    """
    grid = sorted(means)
    best = means[best_lr]
    limit = best + tol + _EPS * max(1.0, abs(best))
    i = grid.index(best_lr)
    lo = hi = i
    while lo > 0 and means[grid[lo - 1]] <= limit:
        lo -= 1
    while hi < len(grid) - 1 and means[grid[hi + 1]] <= limit:
        hi += 1
    return float(math.log10(grid[hi]) - math.log10(grid[lo]))


def default_target(records: Sequence[Record], l0: float, reference: str = REFERENCE) -> float | None:
    """Default loss target for ``steps_to_target``.

    The median over seeds of the reference baseline's per-trial
    ``best_val_loss`` (capped at ``l0``; non-finite counts as ``l0``) at the
    reference's ``best_lr`` (chosen by mean capped final loss, as in
    :func:`summarize`).  Returns ``None`` if no record has
    ``baseline == reference``.

    ``records`` should hold a single axis cell; :func:`summarize` calls this
    once per cell.
    """
    ref = [r for r in records if r["baseline"] == reference]
    if not ref:
        return None
    groups = _by_lr(ref)
    best_lr = _best_lr(_lr_means(groups, l0))
    return float(np.median([_capped_best(r, l0) for r in groups[best_lr]]))


# --------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------


def trials_at_best_lr(rows: Sequence[dict[str, Any]], trials: Sequence[Record],
                      axes: Sequence[str]) -> list[list[Record]]:
    """For each leaderboard row, the COMPLETE trials of its cell (baseline and axis values) at its
    ``best_lr``: the one definition of "the best cell" that the plots, ``analyze`` and the report use."""
    out = []
    for row in rows:
        out.append([t for t in trials if t.get("status", "COMPLETE") == "COMPLETE"
                    and t["baseline"] == row["baseline"] and float(t["lr"]) == float(row["best_lr"])
                    and all(t.get(a) == row.get(a) for a in axes)])
    return out


def _axis_sort_key(cell: Cell) -> tuple[tuple[int, Any], ...]:
    """Sort key for axis values: numbers (numerically), then strings, then None."""
    key: list[tuple[int, Any]] = []
    for v in cell:
        if v is None:
            key.append((2, ""))
        elif isinstance(v, (int, float, np.integer, np.floating)):
            key.append((0, float(v)))
        else:
            key.append((1, str(v)))
    return tuple(key)


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
        key = (rec["baseline"], *(rec.get(a) for a in axes), lr, rec["seed"])
        if key in seen:
            raise ValueError(f"summarize: duplicate trial (baseline, *axes, lr, seed) = {key!r} at record #{n}")
        seen.add(key)


def _cell_row(
    baseline: str,
    axes: Sequence[str],
    cell: Cell,
    recs: Sequence[Record],
    l0: float,
    tol: float,
    target: float | None,
) -> tuple[dict[str, Any], list[float]]:
    """Row for one cell (without ``p_vs_reference``) and its capped losses at best_lr."""
    groups = _by_lr(recs)
    means = _lr_means(groups, l0)
    grid = sorted(means)
    best_lr = _best_lr(means)
    at_best = groups[best_lr]
    losses = [capped_loss(r, l0) for r in at_best]
    n = len(losses)

    mean = float(np.mean(losses))
    std = float(np.std(losses, ddof=1)) if n > 1 else math.nan
    ci95 = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n >= 3 else None

    div_count = sum(bool(r["diverged"]) for r in recs)
    spk_count = sum(bool(r.get("spiked", False)) for r in recs)
    stable = [lr for lr, rs in groups.items() if not any(bool(r["diverged"]) for r in rs)]

    if target is None:
        steps: float | None = None
    else:
        steps = float(np.median([_first_step_at_or_below(r.get("curve") or [], target) for r in at_best]))

    ok = [r for r in recs if not bool(r["diverged"])] or list(recs)
    tps = [float(r.get("tokens_per_s", math.nan)) for r in ok]
    tps = [t for t in tps if math.isfinite(t)]
    params = [int(r["params"]) for r in recs if r.get("params") is not None]
    accuracies = [float(r["final_val_accuracy"]) for r in at_best if r.get("final_val_accuracy") is not None
                  and math.isfinite(float(r["final_val_accuracy"]))]

    row: dict[str, Any] = {"baseline": baseline}
    row.update(zip(axes, cell, strict=True))
    row.update(
        best_val_loss=mean,
        best_val_loss_std=std,
        best_val_loss_ci95=ci95,
        best_lr=best_lr,
        best_lr_at_edge=best_lr in (grid[0], grid[-1]),
        lr_sensitivity=float(np.mean(list(means.values())) - means[best_lr]),
        diverged=f"{div_count}/{len(recs)}",
        diverged_count=div_count,
        n_trials=len(recs),
        max_stable_lr=max(stable) if stable else None,
        spiked=f"{spk_count}/{len(recs)}",
        spiked_count=spk_count,
        lr_basin_decades=_basin_decades(means, best_lr, tol),
        steps_to_target=steps,
        tokens_per_s=float(np.median(tps)) if tps else math.nan,
        params=max(params) if params else None,
        p_vs_reference=None,
        seeds=n,
        best_val_accuracy=float(np.mean(accuracies)) if accuracies else None,
    )
    return row, losses


def summarize(
    records: Sequence[Record],
    l0: float,
    *,
    axes: Sequence[str] = (),
    tol: float = 0.05,
    target: float | None = None,
    reference: str = REFERENCE,
) -> list[dict[str, Any]]:
    """Leaderboard rows, one per (baseline, *axis values) cell.

    Row order: the ``reference`` baseline first, then the other baselines in
    order of first appearance in ``records``; within a baseline, cells sorted
    by axis values (numbers ascending, then strings, then ``None``).  Keys are
    ``baseline``, the names in ``axes``, then the rest of
    :data:`LEADERBOARD_COLUMNS`:

    - ``best_lr``: LR with the smallest mean capped loss (ties -> smaller LR).
    - ``best_val_loss``: mean over seeds of the capped loss at ``best_lr``.
    - ``best_val_loss_std``: sample std (ddof=1) of those; ``nan`` with one seed.
    - ``best_val_loss_ci95``: with >= 3 seeds, the 95% t-interval half-width
      ``t.ppf(0.975, n-1) * std / sqrt(n)``; otherwise ``None``.
    - ``best_lr_at_edge``: ``best_lr`` is the smallest or largest LR of the
      cell's grid (so the grid may be too narrow; always True for a one-LR grid).
    - ``lr_sensitivity``: mean over the grid of the per-LR mean capped loss
      minus the best one; 0.0 when every LR gives the same loss, in particular
      when every trial diverged (every point is ``l0``).
    - ``diverged`` / ``spiked``: ``"k/N"`` over all trials of the cell, with
      ``diverged_count`` / ``spiked_count`` = k and ``n_trials`` = N.
    - ``max_stable_lr``: largest LR at which no seed diverged; ``None`` if
      every LR has a divergence.
    - ``lr_basin_decades``: ``log10(max) - log10(min)`` of the contiguous band
      of grid LRs around ``best_lr`` whose mean capped loss is ``<= best + tol``
      (walk outward, stop at the first LR outside); 0.0 for a single point.
    - ``steps_to_target``: for each seed at ``best_lr`` the first curve step
      with val_loss ``<= target`` (a miss is ``inf``), then the median over
      seeds (so it may be ``inf``).  With ``target=None`` the target is
      :func:`default_target` of the reference in the same cell; ``None`` if
      the reference has no trials there.
    - ``tokens_per_s``: median over the cell's non-diverged trials (all trials
      if all diverged; non-finite values ignored; ``nan`` if none is left).
    - ``params``: max over trials of ``params`` (``None`` if absent).
    - ``p_vs_reference``: Welch two-sided t-test (``scipy.stats.ttest_ind``,
      ``equal_var=False``) of the capped losses at this cell's ``best_lr``
      against those of the reference at its own ``best_lr`` in the same cell,
      when both have >= 3 seeds there (otherwise ``None``; the reference's own
      rows get ``None``).  If both samples have zero variance, p = 1.0 when the
      means are equal, else 0.0.  All p-values of the call (every baseline and
      every cell) are then Holm-corrected together as one family.
    - ``seeds``: number of trials (seeds) at ``best_lr`` behind the mean.

    Reference records for a cell are those with the same axis values; a
    reference record lacking an axis key (value ``None``) matches every value
    of that axis, so e.g. ``layernorm`` without ``alpha_init`` is the reference
    for every ``alpha_init`` cell of another baseline.

    Raises ``ValueError`` on empty records, a missing required key, a
    non-positive LR, or a duplicated (baseline, *axes, lr, seed) trial.
    """
    axes = list(axes)
    _validate(records, axes)

    order: list[str] = []
    cells: dict[tuple[str, Cell], list[Record]] = {}
    for rec in records:
        name = rec["baseline"]
        if name not in order:
            order.append(name)
        cell = tuple(rec.get(a) for a in axes)
        cells.setdefault((name, cell), []).append(rec)
    if reference in order:
        order.remove(reference)
        order.insert(0, reference)
    rank = {name: i for i, name in enumerate(order)}
    keys = sorted(cells, key=lambda k: (rank[k[0]], _axis_sort_key(k[1])))

    ref_records = [r for r in records if r["baseline"] == reference]

    def ref_for(cell: Cell) -> list[Record]:
        return [
            r for r in ref_records if all(r.get(a) is None or r.get(a) == v for a, v in zip(axes, cell, strict=True))
        ]

    rows: list[dict[str, Any]] = []
    pending: list[tuple[int, Cell, list[float]]] = []
    ref_losses: dict[Cell, list[float]] = {}
    for name, cell in keys:
        ref_recs = ref_for(cell)
        cell_target = target if target is not None else default_target(ref_recs, l0, reference)
        row, losses = _cell_row(name, axes, cell, cells[(name, cell)], l0, tol, cell_target)
        rows.append(row)
        if name != reference:
            pending.append((len(rows) - 1, cell, losses))
            if cell not in ref_losses and ref_recs:
                groups = _by_lr(ref_recs)
                best = _best_lr(_lr_means(groups, l0))
                ref_losses[cell] = [capped_loss(r, l0) for r in groups[best]]

    tested: list[int] = []
    raw: list[float] = []
    for idx, cell, losses in pending:
        ref = ref_losses.get(cell)
        if ref is not None and len(ref) >= 3 and len(losses) >= 3:
            tested.append(idx)
            raw.append(_welch_p(losses, ref))
    for idx, p in zip(tested, holm(raw), strict=True):
        rows[idx]["p_vs_reference"] = p
    return rows
