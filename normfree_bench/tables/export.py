"""A run directory's tables, derived from its Optuna studies: trials.csv, curves.csv, leaderboard.*, plots/.

Usage: ``rows = write_results(Path("runs/smoke"))``  (also works while the sweep is still running)

The studies in the run's storage are the source of truth; every table here is regenerated from
them and written atomically, so an interrupted run never leaves half a table.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from normfree_bench.io import atomic_write_text, write_csv, write_json
from normfree_bench.store.rundir import load_trials, open_run, run_axes, run_l0
from normfree_bench.store.trials import (
    KEY_COLUMNS,
    TRIAL_COLUMNS,
    curve_points,
    diagnostics_rows,
    metric_record,
    trial_row,
)
from normfree_bench.tables.leaderboard import REFERENCE, summarize
from normfree_bench.tables.plots import plot_all
from normfree_bench.tables.render import render, table_columns
from normfree_bench.training.diagnostics import DIAG_COLUMNS
from normfree_bench.training.train import CURVE_FIELDS


@dataclass
class RunTables:
    """Everything the tables of a run are made of, read from its studies."""

    record: dict[str, Any]
    trials: list[dict[str, Any]]  # one row per trial (trials.csv)
    curves: list[dict[str, Any]]  # one row per logged step of a COMPLETE trial (curves.csv)
    records: list[dict[str, Any]]  # the leaderboard computation's input, one per COMPLETE trial
    diagnostics: list[dict[str, Any]]  # diagnostics.csv
    rows: list[dict[str, Any]]  # the leaderboard

    @property
    def axes(self) -> list[str]:
        return run_axes(self.record)


def collect(record: dict[str, Any],
            storage: optuna.storages.BaseStorage) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """(trial rows, curve rows, metric records of COMPLETE trials, diagnostics rows) for a run."""
    axes = run_axes(record)
    trials, curves, records, diagnostics = [], [], [], []
    for baseline, trial in load_trials(record, storage):
        row = trial_row(baseline, trial, axes)
        trials.append(row)
        if trial.state != optuna.trial.TrialState.COMPLETE:
            continue
        records.append(metric_record(row, trial))
        key = {k: row[k] for k in (*KEY_COLUMNS, *axes)}  # leads every curve and diagnostics row
        curves += [{**key, **point} for point in curve_points(trial)]
        diagnostics += [{**key, **values} for values in diagnostics_rows(trial)]
    return trials, curves, records, diagnostics


def leaderboard_rows(record: dict[str, Any], records: list[dict]) -> list[dict[str, Any]]:
    if not records:
        return []
    sweep = record.get("sweep", {})
    l0 = run_l0(record)
    return summarize(records, l0, axes=run_axes(record), tol=sweep.get("basin_tol", 0.05),
                     target=sweep.get("target_loss"), reference=sweep.get("reference", REFERENCE))


def read_tables(run_dir: Path, storage_url: str | None = None) -> RunTables:
    """A run's tables, computed from its studies; reads only (see `normfree_bench.store.rundir.open_run`)."""
    record, storage = open_run(run_dir, storage_url)
    trials, curves, records, diagnostics = collect(record, storage)
    return RunTables(record, trials, curves, records, diagnostics, leaderboard_rows(record, records))


def write_results(run_dir: Path, plots: bool = True, storage_url: str | None = None) -> list[dict[str, Any]]:
    """Regenerate every table (and the plots) of a run directory; return the leaderboard rows. Only
    the sweep that owns the run calls this: other commands read the tables, or add plots."""
    t = read_tables(run_dir, storage_url)
    axes = t.axes
    n_key = len(KEY_COLUMNS)
    write_csv(run_dir / "trials.csv", t.trials, (*KEY_COLUMNS, *axes, *TRIAL_COLUMNS[n_key:]))
    write_csv(run_dir / "curves.csv", t.curves, (*KEY_COLUMNS, *axes, *CURVE_FIELDS))
    write_csv(run_dir / "diagnostics.csv", t.diagnostics, (*KEY_COLUMNS, *axes, *DIAG_COLUMNS))
    write_json(run_dir / "leaderboard.json", t.rows)
    write_csv(run_dir / "leaderboard.csv", t.rows, table_columns(axes))
    atomic_write_text(run_dir / "leaderboard.md", render(t.rows, "github", axes) + "\n")
    record_compute(run_dir, t.trials)
    if plots:
        write_plots(t, run_dir)
    return t.rows


def write_plots(tables: RunTables, run_dir: Path) -> list[Path]:
    """Draw the sweep's plots into ``run_dir/plots``; the tables stay as they are."""
    if not tables.records:
        return []
    return plot_all(records_with_full_curves(tables.records, tables.trials, tables.curves), tables.rows,
                    run_l0(tables.record), run_dir / "plots", tables.axes)


def compute_summary(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """Training steps and seconds spent, in total and by trials that diverged (the cost of divergence)."""
    done = [t for t in trials if t["status"] == "COMPLETE"]
    diverged = [t for t in done if t.get("diverged")]

    def total(rows: list[dict[str, Any]], key: str) -> float:
        return float(sum(t.get(key) or 0 for t in rows))

    wall = total(done, "wall_s")
    return {"complete_trials": len(done), "diverged_trials": len(diverged),
            "steps": int(total(done, "steps")), "diverged_steps": int(total(diverged, "steps")),
            "train_s": round(total(done, "train_s"), 3), "diverged_train_s": round(total(diverged, "train_s"), 3),
            "trial_wall_s": round(wall, 3),
            # setup (model, Trainer), evaluation and I/O inside trials, as a share of their wall time
            "outside_train_share": round(1 - total(done, "train_s") / wall, 4) if wall else None}


def record_compute(run_dir: Path, trials: list[dict[str, Any]]) -> None:
    """Add the compute summary to provenance.json (created by the sweep)."""
    path = run_dir / "provenance.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    data["compute"] = compute_summary(trials)
    write_json(path, data)


def records_with_full_curves(records: list[dict], trials: list[dict], curves: list[dict]) -> list[dict]:
    """Metric records whose ``curve`` holds dict points (step, train_loss, val_loss, grad_norm) for plots."""
    by_trial: dict[str, list[dict]] = {}
    for point in curves:
        by_trial.setdefault(point["trial"], []).append(
            {k: (math.nan if point[k] is None else point[k]) for k in ("step", "train_loss", "val_loss", "grad_norm")})
    return [{**r, "curve": by_trial.get(r["trial"], [])} for r in records]
