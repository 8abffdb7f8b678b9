"""Render leaderboard rows as text tables (tabulate), CSV or JSON.

Usage: ``print(render(rows, "github", axes=[]))``; formats: github, psql, latex, html, csv, json

Text formats round for reading and mark a best LR at the edge of the grid with ``*`` (the grid is
then too narrow to know the optimum). CSV and JSON keep the raw values.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from normfree_bench.errors import UserError
from normfree_bench.io import jsonable
from normfree_bench.tables.leaderboard import LEADERBOARD_COLUMNS

FORMATS = ("github", "psql", "latex", "html", "csv", "json")
EDGE_NOTE = "* best LR at the edge of the grid: widen the grid to locate the optimum."
# Columns a reader needs in a text table, in order; CSV/JSON carry every column.
TEXT_COLUMNS = ("baseline", "best_val_loss", "best_val_loss_std", "best_val_accuracy", "best_lr", "lr_sensitivity",
                "diverged", "max_stable_lr", "spiked", "lr_basin_decades", "steps_to_target", "tokens_per_s",
                "params", "p_vs_reference")


NUMBER_FORMATS: dict[str, Any] = {
    "best_val_accuracy": lambda v: f"{100 * v:.1f}%",
    "lr_sensitivity": "{:.3f}".format,
    "lr_basin_decades": "{:.2f}".format,
    "steps_to_target": "{:.0f}".format,
    "tokens_per_s": "{:,.0f}".format,
    "params": lambda v: f"{int(v):,}",
    "p_vs_reference": "{:.3g}".format,
}


def fmt_lr(value: float) -> str:
    """A learning rate in short scientific notation, the one format of every table, plot and report:
    ``1e-3``, ``3e-4``, ``2.5e-2``."""
    mantissa, exponent = f"{value:.3e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def table_columns(axes: Sequence[str], text: bool = False) -> list[str]:
    base = TEXT_COLUMNS if text else LEADERBOARD_COLUMNS
    cols = list(base)
    return [cols[0], *axes, *cols[1:]]


def _fmt(column: str, value: Any, row: dict[str, Any]) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "-" if column == "best_val_loss_std" else "nan"
    if column in ("best_val_loss", "best_val_loss_std", "best_val_loss_ci95"):
        text = f"{value:.4f}"
        if column == "best_val_loss" and row.get("best_val_loss_ci95") is not None:
            text += f" ± {row['best_val_loss_ci95']:.4f}"
        return text
    if column in ("best_lr", "max_stable_lr"):
        return fmt_lr(value) + ("*" if column == "best_lr" and row.get("best_lr_at_edge") else "")
    if column == "steps_to_target" and math.isinf(value):
        return "∞"
    if column in NUMBER_FORMATS:
        return NUMBER_FORMATS[column](value)
    return str(value)


def sort_rows(rows: list[dict[str, Any]], column: str | None) -> list[dict[str, Any]]:
    if not column:
        return rows
    valid = sorted({k for r in rows for k in r}) or list(LEADERBOARD_COLUMNS)
    if column not in valid:
        raise UserError(f"unknown sort column '{column}'; valid: {', '.join(valid)}")

    return sorted(rows, key=lambda row: sort_key(row.get(column)))


def sort_key(value: Any) -> tuple[int, Any]:
    """Numbers by value, a ``k/N`` count by its fraction k/N (then k), other text by the text, and a
    missing value (None, NaN) last."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return (3, 0)
    if isinstance(value, bool):
        return (0, (float(value), 0.0))
    if isinstance(value, (int, float)):
        return (0, (float(value), 0.0))
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
    if match:
        k, n = int(match.group(1)), int(match.group(2))
        return (1, (k / n if n else math.inf, k))
    return (2, str(value))


def render(rows: list[dict[str, Any]], fmt: str = "github", axes: Sequence[str] = ()) -> str:
    """The leaderboard in ``fmt``; an empty leaderboard says so."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}'; valid: {', '.join(FORMATS)}")
    extra = [c for c in ("run",) if any(c in r for r in rows)]
    if fmt == "json":
        return json.dumps(jsonable(rows), indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=[*extra, *table_columns(axes)], extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
        return buf.getvalue().rstrip("\n")
    if not rows:
        return "(no finished trials yet)"
    columns = [*extra, *table_columns(axes, text=True)]
    if all(r.get("best_val_accuracy") is None for r in rows):  # language modelling: no accuracy column
        columns.remove("best_val_accuracy")
    body = [[_fmt(c, r.get(c), r) for c in columns] for r in rows]
    table = tabulate(body, headers=columns, tablefmt=fmt, disable_numparse=True)
    if any(r.get("best_lr_at_edge") for r in rows) and fmt in ("github", "psql"):
        table += "\n\n" + EDGE_NOTE
    return table

