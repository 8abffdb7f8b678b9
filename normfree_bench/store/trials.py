"""The trial record: what one finished trial keeps in its Optuna user attributes, written and read here only.

Usage: ``objective = save_result(trial, result)`` (a worker); ``row = trial_row("dyt", frozen, axes)`` (the tables)

A trial's user attributes hold every field of `RunResult.metrics()` (``final_val_loss``,
``diverged``, ``spikes``, ``tokens_per_s``, ...), plus

- ``curve``: the logged points as named columns, ``{"step": [...], "train_loss": [...], ...}`` (the
  fields of `CURVE_FIELDS`; NaN where a quantity was not measured at that step);
- ``diagnostics``: rows ``[step, layer, site, metric, value]`` (`DIAG_COLUMNS`);
- ``worker`` (``host:pid``), and ``interrupted`` / ``error`` / ``duplicate`` / ``retry_of`` when they apply.

Run directories written before the record used named columns keep their curves as lists of
``[step, train_loss, val_loss, grad_norm]``; `curve_points` reads both.
"""

from __future__ import annotations

import math
from typing import Any

import optuna

from normfree_bench.training.diagnostics import DIAG_COLUMNS
from normfree_bench.training.train import CURVE_FIELDS, RunResult

KEY_COLUMNS = ("trial", "baseline", "phase", "lr", "seed")  # lead every row of trials.csv, curves.csv, ...
TRIAL_COLUMNS = (*KEY_COLUMNS, "status", "value", "final_val_loss", "best_val_loss", "final_val_perplexity",
                 "final_val_accuracy", "diverged", "diverged_step", "diverged_reason", "spiked", "n_spikes",
                 "max_train_loss", "steps", "tokens", "tokens_per_s", "wall_s", "train_s", "eval_s", "compile_s",
                 "params", "error")
_LEGACY_CURVE = ("step", "train_loss", "val_loss", "grad_norm")


def save_result(trial: optuna.Trial, result: RunResult) -> float:
    """Put a run's metrics, curve and diagnostics on its trial; return the objective (l0 when diverged)."""
    for key, value in result.metrics().items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("curve", {f: [point[f] for point in result.curve] for f in CURVE_FIELDS})
    trial.set_user_attr("diagnostics", [list(row) for row in result.diagnostics])
    return result.l0 if result.diverged else result.final_val_loss


def curve_points(trial: optuna.trial.FrozenTrial) -> list[dict[str, float]]:
    """The trial's logged points, one dict per step with every field of `CURVE_FIELDS` (NaN if absent)."""
    stored = trial.user_attrs.get("curve") or {}
    if isinstance(stored, list):  # the positional format of older run directories
        stored = {f: [p[i] for p in stored] for i, f in enumerate(_LEGACY_CURVE)}
    points = []
    for i, step in enumerate(stored.get("step", [])):
        point = {f: _float(stored[f][i]) if f in stored else math.nan for f in CURVE_FIELDS}
        points.append({**point, "step": int(step)})
    return points


def diagnostics_rows(trial: optuna.trial.FrozenTrial) -> list[dict[str, Any]]:
    """The trial's diagnostics, one dict per row keyed by `DIAG_COLUMNS`."""
    return [dict(zip(DIAG_COLUMNS, values)) for values in trial.user_attrs.get("diagnostics", [])]


def trial_row(label: str, baseline: str, phase: str, trial: optuna.trial.FrozenTrial,
              axes: list[str]) -> dict[str, Any]:
    """One row of trials.csv: the key (``trial`` is ``<study label>-<number>``, unique in the run), the
    phase (``tune`` or ``eval``), the axes, the state and objective, and the stored metrics."""
    attrs = trial.user_attrs
    row = {"trial": f"{label}-{trial.number}", "baseline": baseline, "phase": phase, "lr": trial.params.get("lr"),
           "seed": trial.params.get("seed"), "status": trial.state.name, "value": trial.value,
           **{a: trial.params.get(a) for a in axes},
           **{k: attrs.get(k) for k in TRIAL_COLUMNS if k in attrs}}
    row["n_spikes"] = len(attrs.get("spikes", []) or [])
    return row


def metric_record(row: dict[str, Any], trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The input the leaderboard computation expects for one COMPLETE trial: its row, with the
    validation curve as (step, val_loss) pairs and the metrics as floats."""
    curve = [(p["step"], p["val_loss"]) for p in curve_points(trial) if not math.isnan(p["val_loss"])]
    return {**row, "curve": curve, "final_val_loss": _float(row.get("final_val_loss")),
            "best_val_loss": _float(row.get("best_val_loss")), "diverged": bool(row.get("diverged")),
            "spiked": bool(row.get("spiked")), "tokens_per_s": _float(row.get("tokens_per_s"))}


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)
