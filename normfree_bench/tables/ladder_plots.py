"""Figures of a ladder across its rungs (PNG, written atomically into ``out_dir``).

Usage: ``paths = ladder_plots(summary, Path("runs/ladder-smoke/plots"))``  (``summary``: tables.ladder.ladder_summary)

- ``ladder_loss.png``: loss vs width (log2 x), one line per scheme over the rungs where it trained, error bars
  where seeds give a CI; a failed cell is a grey "x" at the rung's worst trained loss.
- ``ladder_gap.png``: gap to the reference vs width, a dashed line at 0.
- ``ladder_lr.png``: best LR vs width (log-log), trained rungs only; the legend carries the fitted slope.
- ``ladder_ranks.png``: rank flow, each scheme's rank per rung joined across rungs (1 at the top).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from normfree_bench.tables.plots import baseline_colors, save_figure

PLOT_NAMES = ("ladder_loss", "ladder_gap", "ladder_lr", "ladder_ranks")  # the files, in page order


def _series(summary: dict[str, Any], name: str, key: str, trained_only: bool = True) -> tuple[list, list, list]:
    rows = [c for c in summary["cells"] if c["baseline"] == name and c[key] is not None
            and (c["verdict"] == "trained" or not trained_only)]
    return [c["width"] for c in rows], [c[key] for c in rows], rows


def _finish(fig: Figure, ax: Any, ylabel: str, title: str) -> Figure:
    """The axes every ladder plot shares: width on a log2 x axis, labels, legend."""
    ax.set_xscale("log", base=2)
    ax.set_xlabel("d_model")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:  # a ladder of the reference alone has no gap line to label
        ax.legend(fontsize=8)
    return fig


def ladder_plots(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return [save_figure(fig, out_dir / f"{name}.png") for name, fig in ladder_figures(summary).items()]


def ladder_figures(summary: dict[str, Any]) -> dict[str, Figure]:
    """The four figures by file stem, before saving (the tests read their artists)."""
    names = [s["baseline"] for s in summary["schemes"]]
    colors = baseline_colors(names)
    widths = summary["widths"]
    figs = {}

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for name in names:
        x, y, rows = _series(summary, name, "loss")
        err = [c["loss_ci95"] or 0.0 for c in rows]
        ax.errorbar(x, y, yerr=err, marker="o", color=colors[name], label=name, capsize=3)
    trained = [c["loss"] for c in summary["cells"] if c["verdict"] == "trained" and c["loss"] is not None]
    if trained:  # a failed cell has no loss worth a point: a grey x above every trained one, named
        top = max(trained) + 0.08 * ((max(trained) - min(trained)) or 0.1)
        for w in widths:
            failed = [c["baseline"] for c in summary["cells"] if c["width"] == w and c["verdict"] != "trained"]
            if failed:
                ax.scatter([w], [top], marker="x", color="grey", zorder=3)
                ax.annotate(", ".join(failed), (w, top), textcoords="offset points", xytext=(4, 4), fontsize=7,
                            color="grey")
    figs["ladder_loss"] = _finish(fig, ax, "validation loss (held-out seeds where run)",
                                  "Loss vs width (grey x, named: schemes that failed at that rung)")

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for name in names:
        if name == summary["reference"]:
            continue
        x, y, rows = _series(summary, name, "gap_to_reference")
        err = [c["gap_ci95"] or 0.0 for c in rows]
        ax.errorbar(x, y, yerr=err, marker="o", color=colors[name], label=name, capsize=3)
    ax.axhline(0.0, ls="--", color="black", lw=1)
    figs["ladder_gap"] = _finish(fig, ax, f"loss - {summary['reference']}'s loss",
                                 f"Gap to {summary['reference']} vs width")

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    slopes = {s["baseline"]: s["lr_width_slope"] for s in summary["schemes"]}
    for name in names:
        x, y, _ = _series(summary, name, "best_lr")
        slope = slopes[name]
        label = f"{name} (slope {slope:.2f})" if slope is not None else name
        ax.plot(x, y, marker="o", color=colors[name], label=label)
    ax.set_yscale("log")
    figs["ladder_lr"] = _finish(fig, ax, "best LR", "Best LR vs width (log-log; slope of log LR on log width)")

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for name in names:
        x, y, _ = _series(summary, name, "rank", trained_only=False)
        ax.plot(x, y, marker="o", color=colors[name], label=name)
    ax.invert_yaxis()
    figs["ladder_ranks"] = _finish(fig, ax, "rank (1 = lowest loss; failed schemes last)", "Rank flow between rungs")
    assert tuple(figs) == PLOT_NAMES
    return figs
