"""Usage: ``paths = plot_all(records, rows, l0=math.log(256), out_dir=Path("results/plots"), axes=["dyt.alpha_init"])``.

Figures for a learning-rate sweep (PNG, dpi 120, written atomically into ``out_dir``):

- ``loss_vs_lr.png``: final validation loss vs LR (log x), one line per baseline
  (mean over seeds of the capped loss), seeds as faint dots, diverged trials as
  red "x" at ``l0``, a dashed line at ``l0``.  With ``axes``, one panel per value
  of the first axis (at most 6, evenly spread); records whose first-axis value is
  ``None`` (baselines the axis does not apply to) appear in every panel.
- ``curves_best_lr.png``: train (thin) and validation (markers) loss vs step at each
  baseline's ``best_lr`` from ``rows`` (first axis cell of that baseline), all seeds.
- ``heatmap_<axis>.png`` (one per axis, "." in the name becomes "_"): the 2-D
  stability map LR x axis value, colour = mean capped loss, one panel per baseline
  that has values on that axis.  Other axes are held at their first value.
- ``lr_sensitivity.png``: horizontal bars of ``lr_sensitivity`` per row, when the
  rows carry that key.

The capped loss of a trial is ``min(final_val_loss, l0)``; a diverged trial or a
non-finite loss counts as exactly ``l0`` (same rule as :mod:`normfree_bench.tables.leaderboard`).
Curves are ``list[dict]`` with ``step``, ``train_loss``, ``val_loss``, ``grad_norm``
(NaN where not measured); ``(step, val_loss)`` pairs are accepted too.

Only matplotlib and numpy are used; every figure is closed after saving.
"""

from __future__ import annotations

import math
import os
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # never switch (and close) the backend of a running session
    matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import Normalize  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from normfree_bench.sweep.selection import capped_loss  # noqa: E402
from normfree_bench.tables.render import fmt_lr  # noqa: E402

__all__ = [
    "DPI",
    "MAX_PANELS",
    "capped_loss",
    "capped_mean",
    "curve_series",
    "is_diverged",
    "plot_all",
    "sanitize_name",
]

Record = Mapping[str, Any]
Cell = tuple[Any, ...]

DPI = 120
#: At most this many panels in ``loss_vs_lr.png`` (one per first-axis value).
MAX_PANELS = 6
#: Grids with at most this many LRs get one x tick per LR in ``loss_vs_lr.png``.
_MAX_LR_TICKS = 8
_DIVERGED_COLOR = "tab:red"


# --------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------


def _as_float(value: Any) -> float:
    """``float(value)``, or NaN when it is missing or not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def is_diverged(rec: Record) -> bool:
    """A trial counts as diverged when flagged so or when its final loss is not finite."""
    return bool(rec.get("diverged", False)) or not math.isfinite(_as_float(rec.get("final_val_loss")))


def capped_mean(records: Iterable[Record], l0: float) -> float:
    """Mean of :func:`capped_loss` over ``records``; NaN when there are none."""
    values = [capped_loss(r, l0) for r in records]
    return float(np.mean(values)) if values else math.nan


def sanitize_name(name: str) -> str:
    """File-name-safe version of an axis name: "." (and anything not alphanumeric, "-" or "_") becomes "_"."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(name))


def curve_series(curve: Iterable[Any], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of one curve quantity, keeping only points where both are finite.

    ``curve`` items are dicts (``step`` plus ``key``) or ``(step, val_loss)`` pairs
    (the latter only provide ``val_loss``).
    """
    steps: list[float] = []
    values: list[float] = []
    for point in curve or ():
        if isinstance(point, Mapping):
            step, value = _as_float(point.get("step")), _as_float(point.get(key))
        elif key == "val_loss" and isinstance(point, Sequence) and len(point) >= 2:
            step, value = _as_float(point[0]), _as_float(point[1])
        else:
            continue
        if math.isfinite(step) and math.isfinite(value):
            steps.append(step)
            values.append(value)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers ascending, then strings, then ``None`` (same order as the leaderboard)."""
    if value is None:
        return (2, "")
    if isinstance(value, (bool, int, float, np.integer, np.floating)):
        return (0, float(value))
    return (1, str(value))


def _cell_key(cell: Cell) -> tuple[tuple[int, Any], ...]:
    return tuple(_sort_key(v) for v in cell)


def _fmt_value(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    return str(value)


def _cell_label(axes: Sequence[str], cell: Cell) -> str:
    """``"a=1, b=x"`` for the non-None values of ``cell``; empty when all are None."""
    return ", ".join(f"{a}={_fmt_value(v)}" for a, v in zip(axes, cell, strict=True) if v is not None)


def _baseline_order(records: Iterable[Record]) -> list[str]:
    """Baselines in order of first appearance (a run's records come in its baseline order, reference first)."""
    return list(dict.fromkeys(str(rec["baseline"]) for rec in records))


def baseline_colors(names: Sequence[str]) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _spread(values: Sequence[Any], k: int) -> list[Any]:
    """At most ``k`` items of ``values``, evenly spread and keeping both ends."""
    if len(values) <= k:
        return list(values)
    idx = sorted({int(round(i)) for i in np.linspace(0, len(values) - 1, k)})
    return [values[i] for i in idx]


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def subplot_grid(fig: Figure, n: int, max_cols: int = 3, **kwargs: Any) -> list[Axes]:
    """``n`` subplots in a grid (at most ``max_cols`` columns); unused grid slots are removed."""
    nrows, ncols = _grid(n, max_cols)
    axs = list(np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False, **kwargs)).ravel())
    for ax in axs[n:]:
        ax.remove()
    return axs[:n]


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically (temporary file in the same folder, then ``os.replace``)."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=DPI, format="png")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _lr_limits(lrs: Iterable[float]) -> tuple[float, float]:
    """Log-axis limits with some room on each side (also for a single LR)."""
    values = [lr for lr in lrs if lr > 0 and math.isfinite(lr)] or [1e-3]
    lo, hi = min(values), max(values)
    pad = max(math.log10(hi / lo) * 0.08, 0.15)
    return lo / 10**pad, hi * 10**pad


def _y_limits(values: Iterable[float], top: float) -> tuple[float, float]:
    """``(lo, hi)`` covering the finite ``values`` up to ``top`` with a 5% margin."""
    finite = [v for v in values if math.isfinite(v)]
    lo = min(finite) if finite else top - 1.0
    lo = min(lo, top)
    span = max(top - lo, 1e-3 * max(abs(top), 1.0))
    return lo - 0.05 * span, top + 0.05 * span


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


def _plot_loss_vs_lr(records: Sequence[Record], l0: float, axes: Sequence[str], out_dir: Path,
                     rows: Sequence[Record] = (), trivial: float | None = None) -> Path:
    order = _baseline_order(records)
    verdicts = {(str(r["baseline"]), tuple(r.get(a) for a in axes)): r.get("verdict", "trained") for r in rows}
    heldout = {(str(r["baseline"]), tuple(r.get(a) for a in axes)): (r["best_lr"], r["heldout_loss"]) for r in rows
               if r.get("heldout_loss") is not None}
    colors = baseline_colors(order)
    first = axes[0] if axes else None
    values = sorted({r.get(first) for r in records if r.get(first) is not None}, key=_sort_key) if first else []
    panel_values: list[Any] = _spread(values, MAX_PANELS) if values else [None]
    rest = list(axes[1:])

    nrows, ncols = _grid(len(panel_values))
    fig = plt.figure(figsize=(4.8 * ncols + 2.4, 3.8 * nrows + 0.6), layout="constrained")
    try:
        panels = subplot_grid(fig, len(panel_values), sharex=True, sharey=True)
        labelled: set[tuple[str, Cell]] = set()
        for ax, value in zip(panels, panel_values, strict=True):
            recs = [r for r in records if first is None or r.get(first) is None or r.get(first) == value]
            lines: dict[tuple[str, Cell], list[Record]] = {}
            for rec in recs:
                key = (str(rec["baseline"]), tuple(rec.get(a) for a in rest))
                lines.setdefault(key, []).append(rec)
            ordered = sorted(lines, key=lambda k: (order.index(k[0]), _cell_key(k[1])))
            styles = ["-", "--", ":", "-."]
            seen_per_baseline: dict[str, int] = {}
            for name, cell in ordered:
                line_recs = lines[(name, cell)]
                style = styles[seen_per_baseline.get(name, 0) % len(styles)]
                seen_per_baseline[name] = seen_per_baseline.get(name, 0) + 1
                by_lr: dict[float, list[Record]] = {}
                for rec in line_recs:
                    by_lr.setdefault(float(rec["lr"]), []).append(rec)
                lrs = sorted(by_lr)
                means = [capped_mean(by_lr[lr], l0) for lr in lrs]
                suffix = _cell_label(rest, cell)
                full = (name, tuple(line_recs[0].get(a) for a in axes))  # the line's whole cell
                verdict = verdicts.get(full, "trained")
                failed = verdict != "trained"
                label = (f"{name} ({suffix})" if suffix else name) + (f" ({verdict})" if failed else "")
                ax.plot(
                    lrs,
                    means,
                    "--" if failed else style,
                    marker="o",
                    ms=5,
                    lw=1.8,
                    color=FAILED_COLOR if failed else colors[name],
                    label=label if (name, cell) not in labelled else "_nolegend_",
                    zorder=3,
                )
                point = heldout.get(full)
                if point is not None:
                    ax.scatter([point[0]], [point[1]], marker="D", s=40, facecolors="none",
                               edgecolors=FAILED_COLOR if failed else colors[name], linewidths=1.6, zorder=5)
                labelled.add((name, cell))
                ok = [r for r in line_recs if not is_diverged(r)]
                if ok:
                    ax.scatter(
                        [float(r["lr"]) for r in ok],
                        [capped_loss(r, l0) for r in ok],
                        s=14,
                        color=colors[name],
                        alpha=0.35,
                        linewidths=0,
                        zorder=2,
                    )
                bad = [float(r["lr"]) for r in line_recs if is_diverged(r)]
                if bad:
                    ax.scatter(bad, [l0] * len(bad), marker="x", s=55, color=_DIVERGED_COLOR, linewidths=1.8, zorder=4)
            ax.axhline(l0, ls="--", lw=1.0, color="0.4", zorder=1)
            if trivial is not None:
                ax.axhline(trivial, ls=":", lw=1.2, color="0.3", zorder=1)
            ax.set_xscale("log")
            ax.grid(True, which="major", alpha=0.3)
            if first is not None and value is not None:
                ax.set_title(f"{first} = {_fmt_value(value)}", fontsize=10)
        all_lrs = sorted({float(r["lr"]) for r in records})
        panels[0].set_xlim(*_lr_limits(all_lrs))
        if len(all_lrs) <= _MAX_LR_TICKS:  # label the grid itself ("1e-03"), not decades
            for ax in panels:
                ax.set_xticks(
                    all_lrs, [fmt_lr(lr) for lr in all_lrs], fontsize=8, rotation=45 if len(all_lrs) > 5 else 0
                )
                ax.xaxis.set_minor_formatter(NullFormatter())
        panels[0].set_ylim(*_y_limits([capped_loss(r, l0) for r in records], l0))
        for i, ax in enumerate(panels):
            if i // ncols == nrows - 1 or i + ncols >= len(panels):
                ax.set_xlabel("learning rate")
            if i % ncols == 0:
                ax.set_ylabel("final val loss (capped at l0)")
        handles, labels = panels[0].get_legend_handles_labels()
        for ax in panels[1:]:
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
        handles += [
            Line2D([], [], ls="", marker="o", ms=4, color="0.5", alpha=0.5),
            Line2D([], [], ls="", marker="x", ms=7, mew=1.8, color=_DIVERGED_COLOR),
            Line2D([], [], ls="--", lw=1.0, color="0.4"),
        ]
        labels += ["individual seeds", "diverged (at l0)", f"l0 (diverged) = {l0:.3g}"]
        if heldout:
            handles.append(Line2D([], [], ls="", marker="D", ms=6, mfc="none", mec="0.3", mew=1.6))
            labels.append("held-out seeds at the chosen LR")
        if trivial is not None:
            handles.append(Line2D([], [], ls=":", lw=1.2, color="0.3"))
            labels.append(f"trivial (constant predictor) = {trivial:.3g}")
        fig.legend(handles, labels, loc="outside right upper", fontsize=9, frameon=False)
        fig.suptitle("Final validation loss vs learning rate")
        return save_figure(fig, out_dir / "loss_vs_lr.png")
    finally:
        plt.close(fig)


def _matches(rec: Record, baseline: str, axes: Sequence[str], cell: Cell) -> bool:
    return str(rec["baseline"]) == baseline and all(rec.get(a) == v for a, v in zip(axes, cell, strict=True))


def _plot_curves(
    records: Sequence[Record], rows: Sequence[Record], l0: float, axes: Sequence[str], out_dir: Path
) -> Path | None:
    order = _baseline_order(records)
    first_row: dict[str, Record] = {}
    for row in sorted(rows, key=lambda r: _cell_key(tuple(r.get(a) for a in axes))):
        name = str(row.get("baseline"))
        if name in order and name not in first_row and math.isfinite(_as_float(row.get("best_lr"))):
            first_row[name] = row

    panels_data: list[tuple[str, str, list[Record]]] = []
    for name in order:
        if name not in first_row:
            continue
        row = first_row[name]
        cell = tuple(row.get(a) for a in axes)
        best_lr = _as_float(row["best_lr"])
        recs = [
            r for r in records if _matches(r, name, axes, cell) and math.isclose(float(r["lr"]), best_lr, rel_tol=1e-9)
        ]
        recs = [r for r in recs if any(len(curve_series(r.get("curve", ()), k)[0]) for k in ("train_loss", "val_loss"))]
        if not recs:
            continue
        suffix = _cell_label(axes, cell)
        title = f"{name}" + (f" ({suffix})" if suffix else "") + f"\nlr = {fmt_lr(best_lr)}"
        n_div = sum(is_diverged(r) for r in recs)
        if n_div:
            title += f", diverged {n_div}/{len(recs)}"
        panels_data.append((name, title, sorted(recs, key=lambda r: _sort_key(r.get("seed")))))
    if not panels_data:
        return None

    colors = baseline_colors(order)
    nrows, ncols = _grid(len(panels_data))
    fig = plt.figure(figsize=(max(4.4 * ncols, 5.6), 3.4 * nrows + 0.6), layout="constrained")
    try:
        panels = subplot_grid(fig, len(panels_data), sharex=True, sharey=True)
        ys: list[float] = []
        for ax, (name, title, recs) in zip(panels, panels_data, strict=True):
            for i, rec in enumerate(recs):
                alpha = 1.0 if i == 0 else 0.45
                steps, train = curve_series(rec.get("curve", ()), "train_loss")
                if len(steps):
                    ax.plot(steps, train, lw=0.8, color=colors[name], alpha=0.55 * alpha)
                    ys.extend(train.tolist())
                steps, val = curve_series(rec.get("curve", ()), "val_loss")
                if len(steps):
                    ax.plot(steps, val, "-o", lw=1.6, ms=4, color="black", alpha=0.85 * alpha)
                    ys.extend(val.tolist())
            ax.axhline(l0, ls="--", lw=0.9, color="0.5")
            ax.set_title(title, fontsize=9)
            ax.grid(True, alpha=0.3)
        top = min(l0 * 1.5, max(ys)) if ys else l0
        lo, hi = _y_limits(ys, max(top, l0))
        panels[0].set_ylim(lo, hi)
        for i, ax in enumerate(panels):
            if i // ncols == nrows - 1 or i + ncols >= len(panels):
                ax.set_xlabel("step")
            if i % ncols == 0:
                ax.set_ylabel("loss")
        handles = [
            Line2D([], [], lw=0.8, color="0.45"),
            Line2D([], [], ls="-", marker="o", lw=1.6, ms=4, color="black"),
            Line2D([], [], ls="--", lw=0.9, color="0.5"),
        ]
        labels = ["train loss", "val loss", f"l0 = {l0:.3g}"]
        fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=9, frameon=False)
        fig.suptitle("Loss curves at each baseline's best LR (other seeds faint)")
        return save_figure(fig, out_dir / "curves_best_lr.png")
    finally:
        plt.close(fig)


def _plot_heatmap(records: Sequence[Record], l0: float, axes: Sequence[str], axis: str, out_dir: Path) -> Path | None:
    order = _baseline_order(records)
    others = [a for a in axes if a != axis]
    panels_data: list[tuple[str, list[float], list[Any], np.ndarray, np.ndarray]] = []
    for name in order:
        recs = [r for r in records if str(r["baseline"]) == name and r.get(axis) is not None]
        if not recs:
            continue
        # Hold the other axes at their first value (a 2-D slice of the grid).
        fixed: dict[str, Any] = {}
        for a in others:
            vals = sorted({r.get(a) for r in recs}, key=_sort_key)
            fixed[a] = vals[0]
            recs = [r for r in recs if r.get(a) == vals[0]]
        lrs = sorted({float(r["lr"]) for r in recs})
        vals = sorted({r.get(axis) for r in recs}, key=_sort_key)
        means = np.full((len(vals), len(lrs)), np.nan)
        all_div = np.zeros((len(vals), len(lrs)), dtype=bool)
        for i, v in enumerate(vals):
            for j, lr in enumerate(lrs):
                cell = [r for r in recs if r.get(axis) == v and float(r["lr"]) == lr]
                if cell:
                    means[i, j] = capped_mean(cell, l0)
                    all_div[i, j] = all(is_diverged(r) for r in cell)
        label = _cell_label(list(fixed), tuple(fixed.values()))
        panels_data.append((name + (f" ({label})" if label else ""), lrs, vals, means, all_div))
    if not panels_data:
        return None

    finite = np.concatenate([m[np.isfinite(m)] for *_, m, _d in panels_data])
    vmax = float(l0)
    vmin = float(finite.min()) if finite.size else vmax - 1.0
    if vmin >= vmax:
        vmin = vmax - max(0.1, 0.05 * abs(vmax))
    norm = Normalize(vmin=vmin, vmax=vmax)
    cmap = plt.get_cmap("viridis_r").with_extremes(bad="0.9")

    n = len(panels_data)
    nrows, ncols = _grid(n, max_cols=2)
    max_lrs = max(len(p[1]) for p in panels_data)
    max_vals = max(len(p[2]) for p in panels_data)
    width = max(ncols * (1.5 + 0.8 * max_lrs) + 1.4, 5.2)
    fig = plt.figure(figsize=(width, nrows * (1.3 + 0.55 * max_vals) + 0.6), layout="constrained")
    try:
        panels = []
        for k, (title, lrs, vals, means, all_div) in enumerate(panels_data):
            ax = fig.add_subplot(nrows, ncols, k + 1)
            panels.append(ax)
            image = ax.imshow(
                np.ma.masked_invalid(means),
                cmap=cmap,
                norm=norm,
                aspect="auto",
                origin="lower",
                interpolation="nearest",
            )
            ax.set_xticks(range(len(lrs)), [fmt_lr(lr) for lr in lrs], rotation=45 if len(lrs) > 5 else 0, fontsize=8)
            ax.set_yticks(range(len(vals)), [_fmt_value(v) for v in vals], fontsize=8)
            ax.set_xlabel("learning rate")
            ax.set_ylabel(axis)
            ax.set_title(title, fontsize=10)
            ax.tick_params(length=0)
            for i in range(len(vals)):
                for j in range(len(lrs)):
                    value = means[i, j]
                    if not math.isfinite(value):
                        continue
                    text = "div" if all_div[i, j] else f"{value:.2f}"
                    shade = "white" if norm(value) > 0.6 else "black"
                    ax.text(j, i, text, ha="center", va="center", fontsize=8, color=shade)
        fig.colorbar(image, ax=panels, label="mean capped val loss", shrink=0.9)
        fig.suptitle(f"Stability map: learning rate x {axis}")
        return save_figure(fig, out_dir / f"heatmap_{sanitize_name(axis)}.png")
    finally:
        plt.close(fig)


FAILED_COLOR = "0.75"  # failed cells and their empty figures


def _plot_sensitivity(rows: Sequence[Record], axes: Sequence[str], order: Sequence[str], out_dir: Path) -> Path | None:
    """Bars for the trained cells with a sensitivity, least sensitive on top; a failed cell, or one whose
    grid misses the window, is a grey stub labelled with why it has no figure, below the ranked bars."""
    ranked: list[tuple[str, str, float]] = []  # (baseline, label, value)
    unranked: list[tuple[str, str]] = []  # (label, why)
    for row in rows:
        name = str(row.get("baseline"))
        suffix = _cell_label(axes, tuple(row.get(a) for a in axes))
        label = name + (f" ({suffix})" if suffix else "")
        value = _as_float(row.get("lr_sensitivity"))
        if math.isfinite(value):
            ranked.append((name, label, value))
        elif "verdict" in row:
            why = row["verdict"] if row["verdict"] != "trained" else "grid misses the window"
            unranked.append((label, why))
    if not ranked and not unranked:
        return None
    ranked.sort(key=lambda it: it[2])
    extra = [n for n in _baseline_order({"baseline": it[0]} for it in ranked) if n not in order]
    colors = baseline_colors([*order, *extra])
    top = max([v for *_, v in ranked] + [0.0]) or 1.0
    n = len(ranked) + len(unranked)
    fig = plt.figure(figsize=(7.5, 1.2 + 0.38 * n), layout="constrained")
    try:
        ax = fig.add_subplot()
        ypos = np.arange(n)[::-1]  # the first item on top
        values = [v for *_, v in ranked] + [0.02 * top] * len(unranked)
        bar_colors = [colors[it[0]] for it in ranked] + [FAILED_COLOR] * len(unranked)
        ax.barh(ypos, values, color=bar_colors, height=0.7)
        ax.set_yticks(ypos, [it[1] for it in ranked] + [label for label, _ in unranked], fontsize=9)
        texts = [f"{v:.3f}" for *_, v in ranked] + [f"{why}: not ranked" for _, why in unranked]
        for y, v, text in zip(ypos, values, texts, strict=True):
            ax.text(max(v, 0.0) + 0.01 * top, y, text, va="center", fontsize=8)
        ax.set_xlim(0.0, top * 1.6 if unranked else top * 1.15)
        ax.set_xlabel("LR sensitivity (mean excess capped loss over the fixed LR window; lower is better)")
        ax.grid(True, axis="x", alpha=0.3)
        ax.set_title("Learning-rate sensitivity of the trained cells")
        return save_figure(fig, out_dir / "lr_sensitivity.png")
    finally:
        plt.close(fig)


def plot_all(records: list[dict], rows: list[dict], l0: float, out_dir: Path, axes: Sequence[str] = (),
             trivial: float | None = None) -> list[Path]:
    """Write every figure that the data supports into ``out_dir`` and return their paths.

    Returns ``[]`` (and creates nothing) when ``records`` is empty.  ``curves_best_lr.png``
    needs ``rows`` with ``best_lr`` and curves in the records; ``heatmap_<axis>.png`` needs a
    baseline with non-None values on that axis; ``lr_sensitivity.png`` needs rows carrying
    ``lr_sensitivity``.  Figures that lack their data are skipped silently.
    """
    if not records:
        return []
    axes = list(axes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = list(rows or [])
    jobs: list[Callable[[], Path | None]] = [
        lambda: _plot_loss_vs_lr(records, l0, axes, out_dir, rows, trivial),
        lambda: _plot_curves(records, rows, l0, axes, out_dir),
        *[(lambda a=a: _plot_heatmap(records, l0, axes, a, out_dir)) for a in axes],
        lambda: _plot_sensitivity(rows, axes, _baseline_order(records), out_dir),
    ]
    paths: list[Path] = []
    for job in jobs:
        path = job()
        if path is not None:
            paths.append(path)
    return paths
