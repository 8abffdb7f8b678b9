"""Figures across a ladder's rungs: loss and gap to the reference per width, ranks, flips, LR scaling, verdicts.

Usage: ``summary = ladder_summary(rungs, reference="layernorm", gap_tol=0.02)``  (``rungs``: one dict per
rung with ``width`` and ``rows``, the rung's final leaderboard rows)

Per scheme and rung:
- ``loss``: the held-out loss when the rung has held-out seeds, else the best tuning loss, and its 95 % CI
  half-width when seeds allow (the leaderboard's ``*_ci95``);
- ``gap``: loss minus the reference's at the same rung; its CI half-width is sqrt(ci_a^2 + ci_b^2), the two
  losses' CIs combined as independent (None when either has none);
- ``trained``: the leaderboard's verdict is ``trained``; a failed cell has no loss worth ranking and no gap.

Across rungs:
- ranks per rung (1 = lowest loss, ties share their mean rank; failed cells rank after every trained one,
  tied), and Spearman's rho
  between adjacent rungs (``scipy.stats.spearmanr`` over the schemes present at both);
- flips: a scheme failed at one rung and trained at the next, or the reverse;
- the best LR against width on log-log axes: the least-squares slope of log10(best LR) on log10(width)
  over the rungs where the scheme trained (two or more), None otherwise;
- a verdict per scheme on its gap to the reference, from the first to the last rung where both trained:
  ``shrinking`` or ``growing`` when the gap moved by more than ``gap_tol`` nats and by more than the two
  gaps' combined CI half-widths, ``stable`` otherwise; ``no verdict`` with fewer than two such rungs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata, spearmanr
from tabulate import tabulate

from normfree_bench.io import atomic_write_text, write_csv, write_json
from normfree_bench.tables.render import fmt_lr

Rung = dict[str, Any]


def _num(value: Any) -> float | None:
    if value is None or value == "":
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def cell(row: dict[str, Any]) -> dict[str, Any]:
    """One scheme at one rung: loss (held-out when there is one), its CI half-width, trained, best LR."""
    held = _num(row.get("heldout_loss"))
    loss, ci = (held, _num(row.get("heldout_loss_ci95"))) if held is not None else \
        (_num(row.get("best_val_loss")), _num(row.get("best_val_loss_ci95")))
    return {"loss": loss, "ci95": ci, "trained": row.get("verdict") == "trained", "best_lr": _num(row.get("best_lr")),
            "verdict": row.get("verdict")}


def ranks(cells: dict[str, dict[str, Any]]) -> dict[str, float]:
    """1 = lowest loss among trained schemes (equal losses share their mean rank); every failed scheme shares
    the rank after the last trained one."""
    trained = [(name, c["loss"]) for name, c in cells.items() if c["trained"] and c["loss"] is not None]
    out = dict(zip([n for n, _ in trained], map(float, rankdata([v for _, v in trained])))) if trained else {}
    failed = [n for n in cells if n not in out]
    for name in failed:
        out[name] = len(trained) + (len(failed) + 1) / 2  # the mean of the tied positions
    return out


def lr_slope(widths: list[int], lrs: list[float | None], trained: list[bool]) -> float | None:
    pts = [(math.log10(w), math.log10(lr)) for w, lr, t in zip(widths, lrs, trained) if t and lr]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def gap_verdict(gaps: list[tuple[float, float | None]], gap_tol: float) -> str:
    """``gaps``: (gap, CI half-width) at the rungs where both the scheme and the reference trained."""
    if len(gaps) < 2:
        return "no verdict"
    (g0, c0), (g1, c1) = gaps[0], gaps[-1]
    moved = g1 - g0
    band = math.hypot(c0, c1) if c0 is not None and c1 is not None else 0.0
    if abs(moved) <= max(gap_tol, band):
        return "stable"
    return "shrinking" if moved < 0 else "growing"


def ladder_summary(rungs: list[Rung], reference: str, gap_tol: float) -> dict[str, Any]:
    widths = [r["width"] for r in rungs]
    cells = [{row["baseline"]: cell(row) for row in r["rows"]} for r in rungs]
    names = list(dict.fromkeys(n for c in cells for n in c))
    rank_by_rung = [ranks(c) for c in cells]
    table = []
    for i, width in enumerate(widths):
        ref = cells[i].get(reference)
        for name in names:
            c = cells[i].get(name)
            if c is None:
                continue
            gap = gap_ci = None
            if c["trained"] and ref and ref["trained"] and c["loss"] is not None and ref["loss"] is not None:
                gap = c["loss"] - ref["loss"]
                gap_ci = math.hypot(c["ci95"], ref["ci95"]) if c["ci95"] is not None and ref["ci95"] is not None \
                    else None
            table.append({"width": width, "baseline": name, "verdict": c["verdict"], "loss": c["loss"],
                          "loss_ci95": c["ci95"], "gap_to_reference": gap, "gap_ci95": gap_ci,
                          "rank": rank_by_rung[i][name], "best_lr": c["best_lr"], "widened": name in
                          rungs[i].get("widened", {})})
    rho = []
    for i in range(len(rungs) - 1):
        common = [n for n in names if n in rank_by_rung[i] and n in rank_by_rung[i + 1]]
        a, b = [rank_by_rung[i][n] for n in common], [rank_by_rung[i + 1][n] for n in common]
        value = float(spearmanr(a, b).statistic) if len(common) >= 2 and len(set(a)) > 1 and len(set(b)) > 1 \
            else None
        rho.append({"from": widths[i], "to": widths[i + 1], "spearman_rho": value, "schemes": len(common)})
    flips = []
    for i in range(len(rungs) - 1):
        for n in names:
            a, b = cells[i].get(n), cells[i + 1].get(n)
            if a and b and a["trained"] != b["trained"]:
                flips.append({"baseline": n, "from": widths[i], "to": widths[i + 1],
                              "change": "failed -> trained" if b["trained"] else "trained -> failed"})
    schemes = []
    for n in names:
        mine = [(cells[i].get(n), widths[i]) for i in range(len(rungs))]
        slope = lr_slope([w for c, w in mine if c], [c["best_lr"] for c, _ in mine if c],
                         [c["trained"] for c, _ in mine if c])
        gaps = [(row["gap_to_reference"], row["gap_ci95"]) for row in table
                if row["baseline"] == n and row["gap_to_reference"] is not None]
        verdict = "reference" if n == reference else gap_verdict(gaps, gap_tol)
        schemes.append({"baseline": n, "lr_width_slope": slope, "gap_verdict": verdict,
                        "trained_at": [w for c, w in mine if c and c["trained"]]})
    return {"widths": widths, "reference": reference, "gap_tol": gap_tol, "cells": table, "spearman": rho,
            "flips": flips, "schemes": schemes}


CELL_COLUMNS = ("width", "baseline", "verdict", "loss", "loss_ci95", "gap_to_reference", "gap_ci95", "rank",
                "best_lr", "widened")


def _f(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def gap_rule(summary: dict[str, Any]) -> str:
    """The verdicts' rule in words, as the Markdown tables and the ladder report print it."""
    return (f"A gap counts as moved when it changed by more than {summary['gap_tol']:g} nats and more than the "
            "combined CI of the two gaps, from the first to the last rung where the scheme and the reference "
            "both trained.")


def render_ladder(summary: dict[str, Any]) -> str:
    """The ladder's tables as Markdown: cells per rung, Spearman's rho, flips, and one line per scheme."""
    ref = summary["reference"]
    out = [f"# Ladder: widths {', '.join(map(str, summary['widths']))} (reference: {ref})", "",
           "## Per rung", "",
           tabulate([[c["width"], c["baseline"], c["verdict"], _f(c["loss"]), _f(c["loss_ci95"], 2),
                      _f(c["gap_to_reference"]), _f(c["gap_ci95"], 2), _f(c["rank"], 3),
                      fmt_lr(c["best_lr"]) if c["best_lr"] else "-", "yes" if c["widened"] else ""]
                     for c in summary["cells"]],
                    headers=["d_model", "scheme", "verdict", "loss", "±CI95", f"gap to {ref}", "±CI95", "rank",
                             "best LR", "grid widened"], tablefmt="github"), "",
           "## Rank agreement between adjacent rungs", "",
           tabulate([[f"{r['from']} → {r['to']}", _f(r["spearman_rho"], 3), r["schemes"]] for r in summary["spearman"]],
                    headers=["rungs", "Spearman ρ", "schemes"], tablefmt="github"), "",
           "## Failed ↔ trained", ""]
    out += [f"- {f['baseline']}: {f['change']} from d_model {f['from']} to {f['to']}" for f in summary["flips"]] \
        or ["- none: every scheme kept its verdict from rung to rung"]
    out += ["", "## Per scheme", "",
            tabulate([[s["baseline"], "-" if s["lr_width_slope"] is None else f"{s['lr_width_slope']:+.2f}",
                       ", ".join(map(str, s["trained_at"])) or "-",
                       s["gap_verdict"] if s["baseline"] == ref else f"gap to {ref} {s['gap_verdict']}"
                       if s["gap_verdict"] != "no verdict" else "no verdict (fewer than 2 rungs where both trained)"]
                      for s in summary["schemes"]],
                     headers=["scheme", "best-LR slope vs width (log-log)", "trained at d_model", "verdict"],
                     tablefmt="github"), "",
            gap_rule(summary)]
    return "\n".join(out) + "\n"


def write_ladder(out_dir: Path, summary: dict[str, Any]) -> list[Path]:
    """``ladder.json``, ``ladder.csv`` (one row per scheme and rung), ``ladder.md`` and the plots/ of a ladder."""
    from normfree_bench.tables.ladder_plots import ladder_plots

    write_json(out_dir / "ladder.json", summary)
    write_csv(out_dir / "ladder.csv", summary["cells"], CELL_COLUMNS)
    atomic_write_text(out_dir / "ladder.md", render_ladder(summary))
    return [out_dir / "ladder.json", out_dir / "ladder.csv", out_dir / "ladder.md",
            *ladder_plots(summary, out_dir / "plots")]
