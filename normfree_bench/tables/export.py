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

from normfree_bench.config import RunConfig
from normfree_bench.core.registry import get_baseline
from normfree_bench.data.task import load_data, trivial_loss
from normfree_bench.errors import UserError
from normfree_bench.io import atomic_write_text, jsonable, write_csv, write_json
from normfree_bench.store.rundir import (
    load_trials,
    open_run,
    run_axes,
    run_config,
    run_l0,
    run_studies,
    study_label,
)
from normfree_bench.store.trials import (
    KEY_COLUMNS,
    TRIAL_COLUMNS,
    curve_points,
    diagnostics_rows,
    metric_record,
    trial_row,
)
from normfree_bench.tables.leaderboard import summarize
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
    trivial: float  # the loss of the best constant predictor on the run's data
    rows: list[dict[str, Any]]  # the leaderboard
    storage: optuna.storages.BaseStorage

    @property
    def axes(self) -> list[str]:
        return run_axes(self.record)


def collect(record: dict[str, Any], storage: optuna.storages.BaseStorage
            ) -> tuple[list[dict], list[dict], list[dict], list[dict], float]:
    """(trial rows, curve rows, metric records of COMPLETE trials, diagnostics rows, trivial loss) for a run."""
    axes = run_axes(record)
    trials, curves, records, diagnostics = [], [], [], []
    trivial = None
    for study, trial in load_trials(record, storage):
        trivial = study.user_attrs.get("trivial_loss", trivial)
        attrs = study.user_attrs
        row = trial_row(study_label(study, record["run_name"]), attrs["baseline"], attrs.get("phase", "tune"), trial,
                        axes)
        trials.append(row)
        if trial.state != optuna.trial.TrialState.COMPLETE:
            continue
        records.append(metric_record(row, trial))
        key = {k: row[k] for k in (*KEY_COLUMNS, *axes)}  # leads every curve and diagnostics row
        curves += [{**key, **point} for point in curve_points(trial)]
        diagnostics += [{**key, **values} for values in diagnostics_rows(trial)]
    if trivial is None:  # a run recorded before its studies carried it: measure it on the run's data
        trivial = trivial_loss(load_data(run_config(record)))
    return trials, curves, records, diagnostics, trivial


def leaderboard_rows(record: dict[str, Any], records: list[dict], trivial: float) -> list[dict[str, Any]]:
    if not records:
        return []
    cfg = run_config(record)
    inits = {name: init_label(cfg, name) for name in dict.fromkeys(r["baseline"] for r in records)}
    return summarize(records, run_l0(record), trivial, axes=run_axes(record), reference=cfg.sweep.reference,
                     sweep=cfg.sweep, inits=inits)


def init_label(cfg: RunConfig, baseline: str) -> str:
    """``paper: xavier``, ``shared: gpt2``, ``paper: timm (timm:vit_tiny_patch16_224)``: the network init a
    baseline trained from (``paper`` alone when its plugin is not loaded here)."""
    backbone = f" ({cfg.model.backbone})" if cfg.model.backbone != "native" else ""
    if cfg.model.init == "shared":
        return f"shared: gpt2{backbone}"
    try:
        rule = get_baseline(baseline)(cfg.model, **cfg.baseline_hparams(baseline)).network_init()
    except UserError:
        return f"paper{backbone}"
    return f"paper: {'timm' if backbone else rule}{backbone}"


def read_tables(run_dir: Path, storage_url: str | None = None) -> RunTables:
    """A run's tables, computed from its studies; reads only (see `normfree_bench.store.rundir.open_run`)."""
    record, storage = open_run(run_dir, storage_url)
    trials, curves, records, diagnostics, trivial = collect(record, storage)
    return RunTables(record, trials, curves, records, diagnostics, trivial,
                     leaderboard_rows(record, records, trivial), storage)


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
    mark_chosen(t)
    if plots:
        write_plots(t, run_dir)
    return t.rows


def mark_chosen(tables: RunTables) -> None:
    """Put each cell's chosen LR and verdict on its baseline's study (user attribute ``leaderboard``), so
    that optuna-dashboard shows the leaderboard's choice, not Optuna's best single trial (seed is a grid
    parameter there, and the leaderboard chooses by the mean over seeds)."""
    axes = tables.axes
    by_baseline: dict[str, dict[str, Any]] = {}
    for row in tables.rows:
        cell = ",".join(f"{a}={row[a]}" for a in axes if row.get(a) is not None) or "all"
        by_baseline.setdefault(row["baseline"], {})[cell] = {
            "chosen_lr": row["best_lr"], "verdict": row["verdict"], "best_val_loss": row["best_val_loss"],
            "heldout_loss": row["heldout_loss"]}
    for study in run_studies(tables.storage, tables.record["run_name"]):
        if study.user_attrs.get("phase", "tune") == "tune" and study.user_attrs.get("baseline") in by_baseline:
            study.set_user_attr("leaderboard", jsonable(by_baseline[study.user_attrs["baseline"]]))


def write_plots(tables: RunTables, run_dir: Path) -> list[Path]:
    """Draw the sweep's plots into ``run_dir/plots``; the tables stay as they are. The LR curves use
    the grid's trials; the held-out seeds appear as one marker at each chosen LR."""
    tune = [r for r in tables.records if r.get("phase", "tune") == "tune"]
    if not tune:
        return []
    return plot_all(records_with_full_curves(tune, tables.trials, tables.curves), tables.rows,
                    run_l0(tables.record), run_dir / "plots", tables.axes, trivial=tables.trivial)


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
            "compile_s": round(total(done, "compile_s"), 3),  # train.compile: apart from the step time
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
