"""Tests for normfree_bench.plots: synthetic sweeps rendered to PNG, plus the pure helpers.

Run: ``.venv/bin/python -m pytest tests/test_plots.py``.  ``plots.py`` is loaded from its file
path so that the test does not import torch through the package ``__init__``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import matplotlib.pyplot as plt  # noqa: E402  (after plots.py has chosen the Agg backend)
import numpy as np
import pytest

from normfree_bench.tables import plots

L0 = math.log(256)
LRS = [1e-4, 3e-4, 1e-3, 3e-3]
SEEDS = [0, 1]


def make_curve(final: float, n: int = 10, diverge: bool = False) -> list[dict[str, float]]:
    """~n points: train_loss every point, val_loss every third point, NaN elsewhere."""
    curve = []
    for i in range(n):
        step = float(i * 10)
        train = L0 - (L0 - final) * (1 - math.exp(-i / 3))
        if diverge and i >= n // 2:
            train = math.inf if i == n - 1 else 1e3 * i
        val = train + 0.05 if i % 3 == 0 or i == n - 1 else math.nan
        curve.append({"step": step, "train_loss": train, "val_loss": val, "grad_norm": math.nan})
    return curve


def make_record(baseline: str, lr: float, seed: int, *, diverged: bool = False, **extra: Any) -> dict[str, Any]:
    offset = {"layernorm": 0.0, "fixup": 0.25, "dyt": 0.1}.get(baseline, 0.4)
    final = math.nan if diverged else 2.0 + offset + abs(math.log10(lr) + 3.2) * 0.8 + 0.06 * seed
    return {
        "baseline": baseline,
        "lr": lr,
        "seed": seed,
        "final_val_loss": final,
        "diverged": diverged,
        "curve": make_curve(2.0 if diverged else final, diverge=diverged),
        **extra,
    }


def make_records(with_axis: bool = False) -> list[dict[str, Any]]:
    """layernorm and fixup over 4 LRs x 2 seeds (fixup diverges at the top LR); dyt optionally on an axis."""
    recs = []
    for lr in LRS:
        for seed in SEEDS:
            extra = {"dyt.alpha_init": None} if with_axis else {}
            recs.append(make_record("layernorm", lr, seed, **extra))
            recs.append(make_record("fixup", lr, seed, diverged=lr == LRS[-1], **extra))
            if with_axis:
                for alpha in (0.5, 1.0):
                    recs.append(
                        make_record("dyt", lr, seed, diverged=alpha == 1.0 and lr >= 1e-3, **{"dyt.alpha_init": alpha})
                    )
    return recs


def make_rows(records: list[dict[str, Any]], axes: list[str]) -> list[dict[str, Any]]:
    """Leaderboard-like rows: best LR by mean capped loss per (baseline, cell)."""
    cells: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for rec in records:
        cells.setdefault((rec["baseline"], *(rec.get(a) for a in axes)), []).append(rec)
    rows = []
    for key, recs in cells.items():
        by_lr: dict[float, list[dict[str, Any]]] = {}
        for rec in recs:
            by_lr.setdefault(rec["lr"], []).append(rec)
        means = {lr: plots.capped_mean(rs, L0) for lr, rs in by_lr.items()}
        best = min(means, key=lambda lr: (means[lr], lr))
        row = {
            "baseline": key[0],
            **dict(zip(axes, key[1:], strict=True)),
            "best_lr": best,
            "best_val_loss": means[best],
            "lr_sensitivity": float(np.mean(list(means.values()))) - means[best],
        }
        rows.append(row)
    return rows


def assert_png(path: Path, min_bytes: int = 5_000) -> np.ndarray:
    assert path.is_file(), path
    data = path.read_bytes()
    assert data[:4] == b"\x89PNG"
    assert len(data) > min_bytes
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] > 200 and img.shape[1] > 300
    assert np.any(img != img[0, 0])  # more than one distinct colour (cheap: np.unique over pixels is slow)
    return img


def run_strict(*args: Any, **kwargs: Any) -> list[Path]:
    """plot_all with every warning turned into an error; also checks that no figure is left open."""
    before = set(plt.get_fignums())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = plots.plot_all(*args, **kwargs)
    assert set(plt.get_fignums()) == before
    return paths


# --------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------


def test_capped_loss_rules() -> None:
    assert plots.capped_loss({"final_val_loss": 3.0, "diverged": False}, 5.0) == 3.0
    assert plots.capped_loss({"final_val_loss": 3.0, "diverged": True}, 5.0) == 5.0  # diverged -> l0
    assert plots.capped_loss({"final_val_loss": math.nan, "diverged": False}, 5.0) == 5.0  # nan -> l0
    assert plots.capped_loss({"final_val_loss": math.inf, "diverged": False}, 5.0) == 5.0
    assert plots.capped_loss({"final_val_loss": -math.inf, "diverged": False}, 5.0) == 5.0
    assert plots.capped_loss({"final_val_loss": 7.5, "diverged": False}, 5.0) == 5.0  # above l0 -> l0
    assert plots.is_diverged({"final_val_loss": math.nan, "diverged": False})
    assert not plots.is_diverged({"final_val_loss": 7.5, "diverged": False})


def test_capped_mean_hand_computed() -> None:
    recs = [
        {"final_val_loss": 3.0, "diverged": False},  # 3.0
        {"final_val_loss": 4.0, "diverged": True},  # 5.0
        {"final_val_loss": math.nan, "diverged": False},  # 5.0
        {"final_val_loss": 6.0, "diverged": False},  # 5.0
    ]
    assert plots.capped_mean(recs, 5.0) == pytest.approx(18.0 / 4)
    assert plots.capped_mean(recs[:1], 5.0) == 3.0
    assert math.isnan(plots.capped_mean([], 5.0))


def test_curve_series_drops_non_finite() -> None:
    curve = [
        {"step": 0, "train_loss": 5.0, "val_loss": 5.1},
        {"step": 1, "train_loss": 4.0, "val_loss": math.nan},
        {"step": 2, "train_loss": math.inf, "val_loss": 3.9},
        {"step": 3, "train_loss": None},
    ]
    steps, values = plots.curve_series(curve, "train_loss")
    assert steps.tolist() == [0.0, 1.0] and values.tolist() == [5.0, 4.0]
    steps, values = plots.curve_series(curve, "val_loss")
    assert steps.tolist() == [0.0, 2.0] and values.tolist() == [5.1, 3.9]
    # (step, val_loss) pairs, the metrics-module format
    steps, values = plots.curve_series([(0, 5.0), (10, math.nan), (20, 3.0)], "val_loss")
    assert steps.tolist() == [0.0, 20.0] and values.tolist() == [5.0, 3.0]
    assert plots.curve_series([(0, 5.0)], "train_loss")[0].size == 0
    assert plots.curve_series([], "val_loss")[0].size == 0


def test_sanitize_name() -> None:
    assert plots.sanitize_name("dyt.alpha_init") == "dyt_alpha_init"
    assert plots.sanitize_name("a/b c") == "a_b_c"


# --------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------


def test_plot_all_without_axes(tmp_path: Path) -> None:
    records = make_records()
    rows = make_rows(records, [])
    out = tmp_path / "plots" / "nested"
    paths = run_strict(records, rows, L0, out)
    names = sorted(p.name for p in paths)
    assert names == ["curves_best_lr.png", "loss_vs_lr.png", "lr_sensitivity.png"]
    for path in paths:
        assert path.parent == out
        assert_png(path)
    # nothing but the figures is left behind (no temporary files)
    assert sorted(p.name for p in out.iterdir()) == names


def test_plot_all_with_axis_writes_heatmap(tmp_path: Path) -> None:
    axes = ["dyt.alpha_init"]
    records = make_records(with_axis=True)
    rows = make_rows(records, axes)
    paths = run_strict(records, rows, L0, tmp_path, axes=axes)
    names = {p.name for p in paths}
    assert {"loss_vs_lr.png", "curves_best_lr.png", "heatmap_dyt_alpha_init.png", "lr_sensitivity.png"} == names
    img = assert_png(tmp_path / "heatmap_dyt_alpha_init.png")
    assert img.shape[1] > img.shape[0] * 0.8  # one panel (only dyt has the axis): roughly landscape
    # two panels side by side for the two alpha values
    wide = assert_png(tmp_path / "loss_vs_lr.png")
    assert wide.shape[1] > wide.shape[0] * 1.5


def test_empty_records_return_nothing(tmp_path: Path) -> None:
    out = tmp_path / "none"
    assert plots.plot_all([], [], L0, out) == []
    assert not out.exists()


def test_rows_without_sensitivity_and_nan_curves(tmp_path: Path) -> None:
    """No lr_sensitivity key -> no bar chart; an all-NaN curve is skipped without warnings."""
    records = make_records()
    for rec in records:
        if rec["baseline"] == "fixup":
            rec["curve"] = [
                {"step": float(i), "train_loss": math.nan, "val_loss": math.nan, "grad_norm": math.nan}
                for i in range(10)
            ]
    rows = [{k: v for k, v in r.items() if k != "lr_sensitivity"} for r in make_rows(records, [])]
    paths = run_strict(records, rows, L0, tmp_path)
    assert sorted(p.name for p in paths) == ["curves_best_lr.png", "loss_vs_lr.png"]
    # with no curves at all and no rows, only the loss-vs-LR figure remains
    for rec in records:
        rec["curve"] = []
    assert [p.name for p in run_strict(records, [], L0, tmp_path / "b")] == ["loss_vs_lr.png"]


def test_single_lr_and_all_diverged(tmp_path: Path) -> None:
    """One LR in the whole sweep; nf diverges everywhere; dyt diverges in every cell of its axis."""
    records = [make_record("layernorm", 1e-3, s, alpha=None) for s in SEEDS]
    records += [make_record("nf", 1e-3, s, diverged=True, alpha=None) for s in SEEDS]
    records += [make_record("dyt", 1e-3, s, diverged=True, alpha=a) for s in SEEDS for a in (0.5, 1.0)]
    paths = run_strict(records, make_rows(records, ["alpha"]), L0, tmp_path, axes=["alpha"])
    names = {p.name for p in paths}
    assert names == {"loss_vs_lr.png", "curves_best_lr.png", "heatmap_alpha.png", "lr_sensitivity.png"}
    for path in paths:
        assert_png(path, min_bytes=2_000)


def test_many_axis_values_capped_and_no_figure_leak(tmp_path: Path) -> None:
    values = [0.1 * k for k in range(1, 10)]  # 9 values -> at most 6 panels
    records = [make_record("dyt", lr, 0, a=v) for lr in LRS[:2] for v in values]
    paths = run_strict(records, [], L0, tmp_path, axes=["a"])  # run_strict also checks for leaked figures
    assert "heatmap_a.png" in {p.name for p in paths}
