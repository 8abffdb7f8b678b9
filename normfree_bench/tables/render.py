"""Render leaderboard rows as text tables (tabulate), CSV or JSON.

Usage: ``print(render(rows, "github", axes=[]))``; formats: github, psql, latex, html, csv, json

Text formats round for reading, mark censored figures (``≤`` / ``≥``: a best LR at an edge of the grid, a
stable LR or a basin that reaches the top or an edge of it), show an empty cell as ``-`` and list the
notes of the rows below github and psql tables. CSV and JSON keep the raw values, with a boolean column
per censored figure; JSON writes every missing or infinite number as null (a missed target is then
told by ``target_reached``).
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
from normfree_bench.tables.leaderboard import HELDOUT_STALLED, LEADERBOARD_COLUMNS

FORMATS = ("github", "psql", "latex", "html", "csv", "json")
# Columns a reader needs in a text table, in order; CSV/JSON carry every column.
TEXT_COLUMNS = ("baseline", "verdict", "init", "best_val_loss", "tuning_seeds", "best_lr", "heldout_loss",
                "heldout_seeds", "p_vs_reference", "best_val_accuracy", "heldout_accuracy", "lr_sensitivity",
                "lr_basin_decades", "max_stable_lr", "diverged", "stalled", "spiked", "steps_to_target",
                "target_reached", "tokens_per_s", "params")
OPTIONAL = ("heldout_loss", "heldout_seeds", "p_vs_reference", "best_val_accuracy", "heldout_accuracy")  # if used
CENSORED = {"max_stable_lr": "max_stable_lr_censored", "lr_basin_decades": "lr_basin_censored"}  # shown as ">= x"


NUMBER_FORMATS: dict[str, Any] = {
    "best_val_accuracy": lambda v: f"{100 * v:.1f}%",
    "heldout_accuracy": lambda v: f"{100 * v:.1f}%",
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
    """One cell of a text table."""
    if column == "steps_to_target" and (value is None or math.isinf(value)) and row.get("target_reached"):
        return "∞"  # the target was missed (JSON keeps an infinity as null)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column in ("best_val_loss", "heldout_loss"):
        ci = row.get(f"{column}_ci95")
        return f"{value:.4f}" + (f" ± {ci:.4f}" if ci is not None and math.isfinite(ci) else "")
    if column == "best_lr":
        return {"low": "≤", "high": "≥"}.get(row.get("best_lr_edge") or "", "") + fmt_lr(value)
    text = fmt_lr(value) if column == "max_stable_lr" else NUMBER_FORMATS.get(column, str)(value)
    return ("≥" if row.get(CENSORED.get(column, "")) else "") + text


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
    columns = [c for c in columns if c not in OPTIONAL or any(r.get(c) is not None for r in rows)]
    body = [[_fmt(c, r.get(c), r) for c in columns] for r in rows]
    table = tabulate(body, headers=columns, tablefmt=fmt, disable_numparse=True)
    if fmt in ("github", "psql"):
        table += "\n\n" + "\n".join(notes(rows, axes))
        grid = study_grid(rows, axes)
        if grid:
            table += "\n\n" + STUDY_TITLE + "\n\n" + tabulate(grid[1], headers=grid[0], tablefmt=fmt,
                                                               disable_numparse=True)
    return table


STUDY_TITLE = ("The study at a glance: one row per scheme, one column per cell of the swept axes; each cell is the "
               "best validation loss over the LR grid and its LR sensitivity (⚠ when the held-out seeds stalled), "
               "or the verdict of a failed cell.")


def study_grid(rows: list[dict[str, Any]], axes: Sequence[str]) -> tuple[list[str], list[list[str]]] | None:
    """The leaderboard of a sweep with axes pivoted to one row per scheme and one column per cell, an axis named
    by its key alone (``layernorm.affine`` and ``dyt.affine`` share the ``affine`` columns; ``model.placement``
    is ``placement``): each cell ``loss (sens. s)`` for a trained cell (marked when its held-out seeds stalled),
    ``✗ <verdict>: loss`` for a failed one. None without axes."""
    if not axes or not rows:
        return None
    columns: list[str] = []
    cells: dict[str, dict[str, str]] = {}
    for r in rows:
        key = ", ".join(f"{a.split('.', 1)[1]}={r[a]}" for a in axes if r.get(a) is not None) or "-"
        if key not in columns:
            columns.append(key)
        loss = _fmt("best_val_loss", r.get("best_val_loss"), {})  # the leaderboard's own formats, no interval
        verdict = str(r.get("verdict") or "")
        if verdict.startswith("failed"):
            text = f"✗ {verdict.removeprefix('failed: ')}: {loss}"
        else:
            sens = r.get("lr_sensitivity")
            text = loss + (f" (sens. {_fmt('lr_sensitivity', sens, {})})" if sens is not None else "")
            if HELDOUT_STALLED in (r.get("note") or ""):  # trained on the tuning seed alone: not a result
                text += " ⚠ held-out seeds stalled"
        cells.setdefault(r["baseline"], {})[key] = text
    return ["scheme", *columns], [[name, *(by.get(c, "") for c in columns)] for name, by in cells.items()]


def notes(rows: list[dict[str, Any]], axes: Sequence[str]) -> list[str]:
    """The lines under a text table: what the marks mean, and each row's note."""
    lines = ["≤ / ≥: censored at an edge of the LR grid (best LR, max stable LR, LR basin); "
             "- : no value (see the notes); loss ± 95 % t-interval over the seeds named beside it"]
    for r in rows:
        if r.get("note"):
            cell = ", ".join(f"{a}={r[a]}" for a in axes if r.get(a) is not None)
            lines.append(f"{r['baseline']}{f' ({cell})' if cell else ''}: {r['note']}")
    return lines

