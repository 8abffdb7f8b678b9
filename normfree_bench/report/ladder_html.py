"""The report of a ladder directory: the cross-rung tables and plots, and each rung's own report linked.

Usage: ``path = write_ladder_report(Path("runs/ladder-smoke"))``  (``normfree-bench report LADDER_DIR``)

Reads ``ladder.json`` (normfree_bench.tables.ladder) and ``plots/ladder_*.png``; writes ``report.html`` in
the ladder directory and, for every rung run directory it lists, that rung's ordinary report (linked from
the page). Self-contained like the run report (PNGs embedded, inline CSS).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from normfree_bench.errors import UserError
from normfree_bench.io import atomic_write_text
from normfree_bench.report.html import CSS, REPORT_NAME, esc, figure, fmt_num, html_table, para, write_report
from normfree_bench.tables.ladder import gap_rule
from normfree_bench.tables.ladder_plots import PLOT_NAMES
from normfree_bench.tables.render import fmt_lr

LADDER_FILE = "ladder.json"


def is_ladder_dir(path: Path) -> bool:
    return (Path(path) / LADDER_FILE).is_file()


def read_ladder(ladder_dir: Path) -> dict[str, Any]:
    path = Path(ladder_dir) / LADDER_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} cannot be read as a ladder summary ({exc}); run `normfree-bench ladder` "
                        "again to rewrite it") from None
    if not isinstance(data, dict) or not {"widths", "cells", "schemes", "rungs"} <= set(data):
        raise UserError(f"{path} is not a ladder summary (widths, cells, schemes, rungs); run "
                        "`normfree-bench ladder` again to rewrite it")
    return data


def ladder_sections(ladder_dir: Path, summary: dict[str, Any]) -> list[str]:
    ref = summary["reference"]
    verdicts = html_table(
        ["scheme", "trained at d_model", "best-LR slope vs width", f"gap to {ref}"],
        [[s["baseline"], ", ".join(map(str, s["trained_at"])) or "–",
          fmt_num(s["lr_width_slope"], 3, signed=True), s["gap_verdict"]] for s in summary["schemes"]])
    cells = html_table(
        ["d_model", "scheme", "verdict", "loss", "±CI95", f"gap to {ref}", "±CI95", "rank", "best LR", "widened"],
        [[c["width"], c["baseline"], c["verdict"], fmt_num(c["loss"]), fmt_num(c["loss_ci95"], 2),
          fmt_num(c["gap_to_reference"], 4, signed=True), fmt_num(c["gap_ci95"], 2), fmt_num(c["rank"], 3),
          fmt_lr(c["best_lr"]) if c["best_lr"] else "–", "yes" if c["widened"] else ""] for c in summary["cells"]])
    rho = html_table(["rungs", "Spearman ρ", "schemes"],
                     [[f"{r['from']} → {r['to']}", fmt_num(r["spearman_rho"], 3), r["schemes"]]
                      for r in summary["spearman"]])
    flips = [para(f"{f['baseline']}: {f['change']} from d_model {f['from']} to {f['to']}") for f in summary["flips"]] \
        or [para("No scheme changed between failed and trained from one rung to the next.")]
    plots_dir = Path(ladder_dir) / "plots"
    pngs = [plots_dir / f"{name}.png" for name in PLOT_NAMES]
    figures = [figure(png, plots_dir) for png in pngs if png.is_file()]
    links = []
    for rung in summary["rungs"]:
        for d in rung["dirs"]:
            links.append(f'<li><a href="{esc(d)}/{REPORT_NAME}">{esc(d)}</a>: d_model {rung["width"]}, '
                         f'{rung["steps"]} steps, {rung["n_heads"]} heads</li>')
    return ["<h2>Verdicts</h2>", para(gap_rule(summary)), verdicts, "<h2>Per rung</h2>", cells,
            "<h2>Rank agreement and flips</h2>", rho, *flips, "<h2>Plots</h2>", *figures,
            "<h2>Rungs</h2>", f"<ul>{''.join(links)}</ul>"]


def write_ladder_report(ladder_dir: Path) -> Path:
    """``ladder_dir/report.html`` and every rung's ``report.html``; returns the ladder page's path."""
    ladder_dir = Path(ladder_dir)
    summary = read_ladder(ladder_dir)
    for rung in summary["rungs"]:
        for d in rung["dirs"]:
            write_report(ladder_dir / d)
    widths = ", ".join(map(str, summary["widths"]))
    body = [f"<h1>normfree-bench ladder {esc(ladder_dir.name)}</h1>",
            para(f"The same benchmark at d_model {widths}; reference scheme {summary['reference']}. Each rung is an "
                 "ordinary run directory with its own report (linked below)."),
            *ladder_sections(ladder_dir, summary)]
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>normfree-bench ladder: {esc(ladder_dir.name)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
    path = ladder_dir / REPORT_NAME
    atomic_write_text(path, page)
    return path
