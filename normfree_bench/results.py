"""A run directory's tables, derived from its Optuna studies: trials.csv, curves.csv, leaderboard.*, plots/.

Usage: ``rows = write_results(Path("runs/smoke"))``  (also works while the sweep is still running)

The studies in the run's storage are the source of truth; every table here is regenerated from
them and written atomically, so an interrupted run never leaves half a table.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna

from normfree_bench.config import read_yaml
from normfree_bench.diagnostics import DIAG_COLUMNS
from normfree_bench.errors import UserError
from normfree_bench.io import write_csv, write_json
from normfree_bench.leaderboard import render, table_columns
from normfree_bench.metrics import summarize

TRIAL_COLUMNS = ("trial", "baseline", "lr", "seed", "status", "value", "final_val_loss", "best_val_loss",
                 "final_val_perplexity", "final_val_accuracy", "diverged", "diverged_step", "diverged_reason",
                 "spiked", "n_spikes", "max_train_loss", "steps", "tokens", "tokens_per_s", "wall_s", "train_s",
                 "eval_s", "params", "error")
CURVE_COLUMNS = ("trial", "baseline", "lr", "seed", "step", "train_loss", "val_loss", "grad_norm")


def read_run(run_dir: Path) -> dict[str, Any]:
    """The record in ``config.yaml``; a directory that is not a run is a `UserError`."""
    path = run_dir / "config.yaml"
    if not run_dir.is_dir() or not path.is_file():
        raise UserError(f"{run_dir} is not a normfree-bench run directory (no config.yaml); "
                        "valid: a directory made by `normfree-bench run`")
    record = read_yaml(path)
    if "run_name" not in record or "storage" not in record:
        raise UserError(f"{path} is not a run's config.yaml (no run_name/storage); it may be a `train` output")
    return record


def run_l0(record: dict[str, Any]) -> float:
    """The run's initial loss l0: ln(vocab) for the LM, ln(classes) for the ViT."""
    from normfree_bench.config import ModelConfig, build_dataclass

    return build_dataclass(ModelConfig, record["model"], "model").initial_loss


def run_axes(record: dict[str, Any]) -> list[str]:
    return list(record.get("sweep", {}).get("axes", {}))


def load_trials(record: dict[str, Any], run_dir: Path,
                storage_url: str | None = None) -> list[tuple[str, optuna.trial.FrozenTrial]]:
    """Every trial of the run's studies, as (baseline, trial), in baseline then trial order."""
    from normfree_bench.storage import open_storage, resolve_storage

    storage = open_storage(resolve_storage(record, run_dir, storage_url), heartbeat=False)
    prefix = record["run_name"] + ":"
    names = [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)
             if s.study_name.startswith(prefix)]
    order = {b: i for i, b in enumerate(record.get("baselines", []))}
    out = []
    for name in sorted(names, key=lambda n: (order.get(n[len(prefix):], len(order)), n)):
        study = optuna.load_study(study_name=name, storage=storage)
        out += [(name[len(prefix):], t) for t in study.get_trials(deepcopy=False)]
    return out


def trial_row(baseline: str, trial: optuna.trial.FrozenTrial, axes: list[str]) -> dict[str, Any]:
    attrs = trial.user_attrs
    row = {"trial": f"{baseline}-{trial.number}", "baseline": baseline, "lr": trial.params.get("lr"),
           "seed": trial.params.get("seed"), "status": trial.state.name, "value": trial.value,
           **{a: trial.params.get(a) for a in axes},
           **{k: attrs.get(k) for k in TRIAL_COLUMNS if k in attrs}}
    row["n_spikes"] = len(attrs.get("spikes", []) or [])
    return row


def metric_record(row: dict[str, Any], trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The input `normfree_bench.metrics.summarize` expects for one COMPLETE trial."""
    curve = [(int(p[0]), float(p[2])) for p in trial.user_attrs.get("curve", [])
             if p[2] is not None and not (isinstance(p[2], float) and math.isnan(p[2]))]
    return {**row, "curve": curve, "final_val_loss": _num(row.get("final_val_loss")),
            "best_val_loss": _num(row.get("best_val_loss")), "diverged": bool(row.get("diverged")),
            "spiked": bool(row.get("spiked")), "tokens_per_s": _num(row.get("tokens_per_s"))}


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def collect(record: dict[str, Any], run_dir: Path,
            storage_url: str | None = None) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """(trial rows, curve rows, metric records of COMPLETE trials, diagnostics rows) for a run."""
    axes = run_axes(record)
    trials, curves, records, diagnostics = [], [], [], []
    for baseline, trial in load_trials(record, run_dir, storage_url):
        row = trial_row(baseline, trial, axes)
        trials.append(row)
        if trial.state != optuna.trial.TrialState.COMPLETE:
            continue
        records.append(metric_record(row, trial))
        key = {k: row[k] for k in ("trial", "baseline", "lr", "seed", *axes)}  # leads every curve and diagnostics row
        for step, train_loss, val_loss, grad_norm in trial.user_attrs.get("curve", []):
            curves.append({**key, "step": step, "train_loss": train_loss, "val_loss": val_loss, "grad_norm": grad_norm})
        for values in trial.user_attrs.get("diagnostics", []):
            diagnostics.append({**key, **dict(zip(DIAG_COLUMNS, values))})
    return trials, curves, records, diagnostics


def leaderboard_rows(record: dict[str, Any], records: list[dict]) -> list[dict[str, Any]]:
    if not records:
        return []
    sweep = record.get("sweep", {})
    l0 = run_l0(record)
    return summarize(records, l0, axes=run_axes(record), tol=sweep.get("basin_tol", 0.05),
                     target=sweep.get("target_loss"))


def write_results(run_dir: Path, plots: bool = True, storage_url: str | None = None) -> list[dict[str, Any]]:
    """Regenerate every table (and the plots) of a run directory; return the leaderboard rows."""
    record = read_run(run_dir)
    axes = run_axes(record)
    trials, curves, records, diagnostics = collect(record, run_dir, storage_url)
    rows = leaderboard_rows(record, records)
    write_csv(run_dir / "trials.csv", trials, (*TRIAL_COLUMNS[:4], *axes, *TRIAL_COLUMNS[4:]))
    write_csv(run_dir / "curves.csv", curves, (*CURVE_COLUMNS[:4], *axes, *CURVE_COLUMNS[4:]))
    write_csv(run_dir / "diagnostics.csv", diagnostics, (*CURVE_COLUMNS[:4], *axes, *DIAG_COLUMNS))
    write_json(run_dir / "leaderboard.json", rows)
    write_csv(run_dir / "leaderboard.csv", rows, table_columns(axes))
    from normfree_bench.io import atomic_write_text

    atomic_write_text(run_dir / "leaderboard.md", render(rows, "github", axes) + "\n")
    record_compute(run_dir, trials)
    if plots and records:
        from normfree_bench.plots import plot_all

        plot_all(records_with_full_curves(records, trials, curves), rows, run_l0(record),
                 run_dir / "plots", axes)
    return rows


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
    import json

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
