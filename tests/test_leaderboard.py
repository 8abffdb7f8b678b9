"""Unit tests for normfree_bench.tables.leaderboard (the leaderboard computation) against small hand-computed tables.

All tables use l0 = 5.0 so the arithmetic in the comments stays simple.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

try:
    from normfree_bench.tables import leaderboard as metrics
except ImportError:  # package __init__ missing or importing heavy things
    _path = Path(__file__).resolve().parents[1] / "normfree_bench" / "metrics.py"
    _spec = importlib.util.spec_from_file_location("normfree_bench_metrics", _path)
    assert _spec is not None and _spec.loader is not None
    metrics = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(metrics)

L0 = 5.0
INF = math.inf


def rec(
    baseline: str,
    lr: float,
    seed: int,
    loss: float,
    *,
    diverged: bool = False,
    spiked: bool = False,
    best: float | None = None,
    tps: float = 1000.0,
    params: int = 100,
    curve: list[tuple[int, float]] | None = None,
    **axes: Any,
) -> dict[str, Any]:
    r: dict[str, Any] = {
        "baseline": baseline,
        "lr": lr,
        "seed": seed,
        "final_val_loss": loss,
        "best_val_loss": loss if best is None else best,
        "diverged": diverged,
        "spiked": spiked,
        "tokens_per_s": tps,
        "params": params,
        "curve": curve if curve is not None else [],
    }
    r.update(axes)
    return r


def by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["baseline"]: r for r in rows}


# ---------------------------------------------------------------------------
# capped_loss
# ---------------------------------------------------------------------------


def test_capped_loss_cases() -> None:
    assert metrics.capped_loss(rec("a", 1e-3, 0, 3.2), L0) == pytest.approx(3.2)
    assert metrics.capped_loss(rec("a", 1e-3, 0, 6.0), L0) == 5.0  # above l0 -> capped
    assert metrics.capped_loss(rec("a", 1e-3, 0, math.nan), L0) == 5.0
    assert metrics.capped_loss(rec("a", 1e-3, 0, INF), L0) == 5.0
    assert metrics.capped_loss(rec("a", 1e-3, 0, -INF), L0) == 5.0
    # diverged counts as exactly l0 even with a finite low loss
    assert metrics.capped_loss(rec("a", 1e-3, 0, 3.0, diverged=True), L0) == 5.0


# ---------------------------------------------------------------------------
# Main table: layernorm (3 seeds x 4 LRs), skipinit, nonorm (all diverged), rezero
# ---------------------------------------------------------------------------

LN_LOSSES = {
    1e-4: [3.6, 3.7, 3.8],  # mean 3.7
    1e-3: [3.1, 3.2, 3.3],  # mean 3.2  <- best
    1e-2: [3.20, 3.22, 3.24],  # mean 3.22 (within 0.05 of best)
}
# best_val_loss per seed at 1e-3 (median 3.15 is the default target)
LN_BEST = [3.05, 3.15, 3.25]
LN_CURVES = [
    [(100, 4.0), (200, 3.1), (300, 3.05)],  # first <= 3.15 at step 200
    [
        (100, 4.0),
        (200, 3.3),
        (300, 3.15),
    ],  # first <= 3.15 at step 300 (equality counts)
    [(100, 4.0), (200, 3.3), (300, 3.25)],  # never -> inf
]
SKIP_LOSSES = {
    1e-3: [3.5, 3.6, 3.7],  # mean 3.6
    1e-2: [3.3, 3.35, 3.45],  # mean 3.3667 <- best (top edge of grid)
}
REZERO_LOSSES = [3.0, 3.1, 3.2]  # single LR 1e-3


def main_table() -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    # skipinit appears first in the records, layernorm must still come first
    for lr, losses in SKIP_LOSSES.items():
        for s, x in enumerate(losses):
            records.append(
                rec(
                    "skipinit",
                    lr,
                    s,
                    x,
                    params=200,
                    tps=500.0,
                    curve=[(50, 3.1)] if lr == 1e-2 and s < 2 else [],
                )
            )
    for lr, losses in LN_LOSSES.items():
        for s, x in enumerate(losses):
            kw: dict[str, Any] = {"tps": [100.0, 200.0, 300.0][s]}
            if lr == 1e-3:
                kw.update(best=LN_BEST[s], curve=LN_CURVES[s])
            if lr == 1e-2 and s == 0:
                kw["spiked"] = True
            records.append(rec("layernorm", lr, s, x, **kw))
    # lr 1e-1: seed0 diverged (nan), seed1 6.0 -> capped 5.0, seed2 4.0 (spiked)
    records.append(rec("layernorm", 1e-1, 0, math.nan, diverged=True, tps=5000.0))
    records.append(rec("layernorm", 1e-1, 1, 6.0, tps=200.0))
    records.append(rec("layernorm", 1e-1, 2, 4.0, spiked=True, tps=300.0))
    for lr in (1e-3, 1e-2):
        for s in (0, 1):
            records.append(rec("nonorm", lr, s, INF, diverged=True, tps=[10.0, 30.0][s]))
    for s, x in enumerate(REZERO_LOSSES):
        records.append(rec("rezero", 1e-3, s, x, params=300))
    return records


def test_row_order_and_keys() -> None:
    rows = metrics.summarize(main_table(), L0)
    assert [r["baseline"] for r in rows] == [
        "layernorm",
        "skipinit",
        "nonorm",
        "rezero",
    ]
    for r in rows:
        assert tuple(r) == metrics.LEADERBOARD_COLUMNS
    assert len(set(metrics.LEADERBOARD_COLUMNS)) == len(metrics.LEADERBOARD_COLUMNS)


def test_reference_row_by_hand() -> None:
    ln = by_name(metrics.summarize(main_table(), L0))["layernorm"]
    assert ln["best_lr"] == 1e-3
    assert ln["best_val_loss"] == pytest.approx(3.2)  # (3.1+3.2+3.3)/3
    # sqrt((0.1^2 + 0 + 0.1^2) / 2) = 0.1
    assert ln["best_val_loss_std"] == pytest.approx(0.1)
    # t.ppf(0.975, 2) = 4.302652729749462; * 0.1 / sqrt(3) = 0.248413771175033
    assert ln["best_val_loss_ci95"] == pytest.approx(0.248413771175033)
    assert ln["best_lr_at_edge"] is False
    # per-LR means: 3.7, 3.2, 3.22, (5+5+4)/3 = 4.666667
    # mean = (3.7+3.2+3.22+4.666667)/4 = 3.696667; minus 3.2 -> 0.496667
    assert ln["lr_sensitivity"] == pytest.approx((3.7 + 3.2 + 3.22 + 14 / 3) / 4 - 3.2)
    assert ln["lr_sensitivity"] == pytest.approx(0.4966666667)
    assert ln["diverged"] == "1/12"
    assert ln["diverged_count"] == 1
    assert ln["n_trials"] == 12
    assert ln["max_stable_lr"] == 1e-2  # 1e-1 has a diverged seed
    assert ln["spiked"] == "2/12"
    assert ln["spiked_count"] == 2
    # band: 1e-4 (3.7) out, 1e-3 best, 1e-2 (3.22 <= 3.25) in, 1e-1 out
    # log10(1e-2) - log10(1e-3) = 1.0
    assert ln["lr_basin_decades"] == pytest.approx(1.0)
    # default target = median(3.05, 3.15, 3.25) = 3.15; steps = median(200, 300, inf) = 300
    assert ln["steps_to_target"] == 300.0
    # non-diverged tps: 100 x3, 200 x4, 300 x4 (the diverged 5000 excluded) -> 6th of 11 = 200
    assert ln["tokens_per_s"] == 200.0
    assert ln["params"] == 100
    assert ln["p_vs_reference"] is None
    assert ln["seeds"] == 3


def test_skipinit_row_edge_and_steps() -> None:
    sk = by_name(metrics.summarize(main_table(), L0))["skipinit"]
    assert sk["best_lr"] == 1e-2
    assert sk["best_val_loss"] == pytest.approx(10.1 / 3)  # (3.3+3.35+3.45)/3 = 3.366667
    assert sk["best_lr_at_edge"] is True  # 1e-2 is the largest LR of its grid
    # means 3.6, 3.366667: mean 3.483333 - 3.366667 = 0.116667
    assert sk["lr_sensitivity"] == pytest.approx((3.6 + 10.1 / 3) / 2 - 10.1 / 3)
    assert sk["lr_sensitivity"] == pytest.approx(0.1166666667)
    # 3.6 - 3.3667 = 0.233 > 0.05 -> single point band
    assert sk["lr_basin_decades"] == 0.0
    assert sk["diverged"] == "0/6"
    assert sk["max_stable_lr"] == 1e-2
    # target 3.15 from layernorm: seeds 0,1 reach it at step 50 (3.1), seed 2 has no
    # curve -> median(50, 50, inf) = 50
    assert sk["steps_to_target"] == 50.0
    assert sk["params"] == 200
    assert sk["tokens_per_s"] == 500.0
    assert sk["seeds"] == 3


def test_all_diverged_baseline() -> None:
    nn = by_name(metrics.summarize(main_table(), L0))["nonorm"]
    # every capped loss is l0 = 5.0 -> tie everywhere -> smaller LR
    assert nn["best_lr"] == 1e-3
    assert nn["best_val_loss"] == 5.0
    assert nn["best_val_loss_std"] == 0.0  # two seeds, both 5.0
    assert nn["best_val_loss_ci95"] is None  # only 2 seeds
    assert nn["lr_sensitivity"] == 0.0
    assert nn["diverged"] == "4/4"
    assert nn["diverged_count"] == 4
    assert nn["max_stable_lr"] is None
    # every LR within tol of best: log10(1e-2) - log10(1e-3) = 1.0
    assert nn["lr_basin_decades"] == pytest.approx(1.0)
    assert nn["best_lr_at_edge"] is True
    assert nn["steps_to_target"] == INF  # empty curves never reach the target
    # all diverged -> median over all trials: (10, 30, 10, 30) -> 20
    assert nn["tokens_per_s"] == 20.0
    assert nn["p_vs_reference"] is None  # fewer than 3 seeds
    assert nn["seeds"] == 2


def test_welch_and_holm_against_scipy() -> None:
    rows = by_name(metrics.summarize(main_table(), L0))
    ln = LN_LOSSES[1e-3]
    p_skip = stats.ttest_ind(SKIP_LOSSES[1e-2], ln, equal_var=False).pvalue
    p_rez = stats.ttest_ind(REZERO_LOSSES, ln, equal_var=False).pvalue
    # family of two (nonorm has 2 seeds -> not tested): smallest x2, then monotone max
    lo, hi = sorted([p_skip, p_rez])
    adj = {lo: min(1.0, 2 * lo), hi: max(min(1.0, 2 * lo), hi)}
    assert rows["skipinit"]["p_vs_reference"] == pytest.approx(adj[p_skip])
    assert rows["rezero"]["p_vs_reference"] == pytest.approx(adj[p_rez])
    # the raw values differ from the adjusted ones for at least the smaller p
    assert min(rows["skipinit"]["p_vs_reference"], rows["rezero"]["p_vs_reference"]) == (pytest.approx(2 * lo))
    # rezero: single LR grid -> at edge, basin 0, sensitivity 0
    rz = rows["rezero"]
    assert rz["best_lr_at_edge"] is True
    assert rz["lr_basin_decades"] == 0.0
    assert rz["lr_sensitivity"] == 0.0
    assert rz["best_val_loss"] == pytest.approx(3.1)


def test_zero_variance_welch() -> None:
    records = []
    for s in range(3):
        records.append(rec("layernorm", 1e-3, s, 3.0))
        records.append(rec("same", 1e-3, s, 3.0))  # equal means, zero variance -> p 1.0
        records.append(rec("diff", 1e-3, s, 3.5))  # different means -> p 0.0
    rows = by_name(metrics.summarize(records, L0))
    # Holm over raw [1.0, 0.0]: sorted 0.0*2 = 0.0, max(0.0, 1.0*1) = 1.0
    assert rows["same"]["p_vs_reference"] == 1.0
    assert rows["diff"]["p_vs_reference"] == 0.0


# ---------------------------------------------------------------------------
# Focused cases
# ---------------------------------------------------------------------------


def test_single_seed() -> None:
    records = [rec("layernorm", 1e-3, 0, 3.0), rec("layernorm", 1e-2, 0, 3.4)]
    (row,) = metrics.summarize(records, L0)
    assert row["best_lr"] == 1e-3
    assert row["best_val_loss"] == 3.0
    assert math.isnan(row["best_val_loss_std"])
    assert row["best_val_loss_ci95"] is None
    assert row["seeds"] == 1
    assert row["p_vs_reference"] is None
    # (3.0 + 3.4)/2 - 3.0 = 0.2
    assert row["lr_sensitivity"] == pytest.approx(0.2)


def test_tie_goes_to_smaller_lr() -> None:
    # given out of order on purpose
    records = [
        rec("a", 1e-2, 0, 3.0),
        rec("a", 1e-2, 1, 3.2),  # mean 3.1
        rec("a", 1e-3, 0, 3.2),
        rec("a", 1e-3, 1, 3.0),  # mean 3.1 (tie)
        rec("a", 1e-4, 0, 3.5),
        rec("a", 1e-4, 1, 3.5),  # mean 3.5
    ]
    (row,) = metrics.summarize(records, L0)
    assert row["best_lr"] == 1e-3
    assert row["best_lr_at_edge"] is False
    assert row["best_val_loss"] == pytest.approx(3.1)
    # sample std of (3.2, 3.0): sqrt(2 * 0.1^2 / 1) = 0.141421
    assert row["best_val_loss_std"] == pytest.approx(0.1414213562)


def test_nan_inf_and_above_l0_counted_as_l0() -> None:
    records = [
        rec("a", 1e-3, 0, math.nan),  # not flagged diverged but nan -> 5.0
        rec("a", 1e-3, 1, INF),  # -> 5.0
        rec("a", 1e-2, 0, 7.0),  # above l0 -> 5.0
        rec("a", 1e-2, 1, 4.0),  # 4.0 -> mean 4.5 (best)
    ]
    (row,) = metrics.summarize(records, L0)
    assert row["best_lr"] == 1e-2
    assert row["best_val_loss"] == pytest.approx(4.5)  # (5.0 + 4.0) / 2
    assert row["lr_sensitivity"] == pytest.approx(0.25)  # (5.0 + 4.5)/2 - 4.5
    assert row["diverged"] == "0/4"  # only the flag counts as diverged
    assert row["max_stable_lr"] == 1e-2
    assert row["p_vs_reference"] is None


def test_basin_contiguity_and_tol() -> None:
    means = {1e-4: 3.0, 1e-3: 3.5, 1e-2: 2.98, 1e-1: 3.02, 1.0: 4.0}
    records = [rec("a", lr, 0, x) for lr, x in means.items()]
    (row,) = metrics.summarize(records, L0)
    assert row["best_lr"] == 1e-2
    # 1e-4 (3.0) is within 0.05 of 2.98 but separated by 1e-3 (3.5): not in the band.
    # band = {1e-2, 1e-1}: log10(1e-1) - log10(1e-2) = 1.0
    assert row["lr_basin_decades"] == pytest.approx(1.0)
    # tol 0.01: 3.02 - 2.98 = 0.04 > 0.01 -> single point -> 0.0
    (row,) = metrics.summarize(records, L0, tol=0.01)
    assert row["lr_basin_decades"] == 0.0
    # tol 1.1: everything within 2.98 + 1.1 = 4.08 -> 1e-4..1: 4 decades
    (row,) = metrics.summarize(records, L0, tol=1.1)
    assert row["lr_basin_decades"] == pytest.approx(4.0)


def test_basin_tol_boundary_inclusive() -> None:
    # 3.35 - 3.3 is 0.05 mathematically, but 3.35 > 3.3 + 0.05 in floats: still within tol
    records = [rec("a", 1e-3, 0, 3.3), rec("a", 1e-2, 0, 3.35), rec("a", 1e-1, 0, 3.36)]
    (row,) = metrics.summarize(records, L0)
    assert row["lr_basin_decades"] == pytest.approx(1.0)  # {1e-3, 1e-2}


def test_best_lr_at_lower_edge() -> None:
    records = [rec("a", 1e-4, 0, 3.0), rec("a", 1e-3, 0, 3.3), rec("a", 1e-2, 0, 3.6)]
    (row,) = metrics.summarize(records, L0)
    assert row["best_lr"] == 1e-4
    assert row["best_lr_at_edge"] is True


def test_steps_to_target_explicit_and_even_median() -> None:
    records = [
        rec("a", 1e-3, 0, 3.0, curve=[(10, 4.0), (20, 3.4), (30, 3.0)]),  # <= 3.5 at 20
        rec("a", 1e-3, 1, 3.0, curve=[(10, 3.5), (20, 3.2)]),  # <= 3.5 at 10
        rec("a", 1e-3, 2, 3.0, curve=[(10, math.nan), (20, 3.6), (40, 3.5)]),  # at 40
        rec("a", 1e-3, 3, 3.0, curve=[(10, 4.0)]),  # miss -> inf
    ]
    (row,) = metrics.summarize(records, L0, target=3.5)
    # sorted (10, 20, 40, inf): median = (20 + 40) / 2 = 30
    assert row["steps_to_target"] == 30.0
    # no layernorm and no explicit target -> None
    (row,) = metrics.summarize(records, L0)
    assert row["steps_to_target"] is None


def test_default_target() -> None:
    records = main_table()
    assert metrics.default_target(records, L0) == pytest.approx(3.15)  # median(3.05, 3.15, 3.25)
    assert metrics.default_target(records, L0, reference="missing") is None
    # rezero as reference: single LR, best_val_loss = final: median(3.0, 3.1, 3.2) = 3.1
    assert metrics.default_target(records, L0, reference="rezero") == pytest.approx(3.1)


def test_custom_reference_goes_first() -> None:
    rows = metrics.summarize(main_table(), L0, reference="rezero")
    assert [r["baseline"] for r in rows] == [
        "rezero",
        "skipinit",
        "layernorm",
        "nonorm",
    ]
    assert rows[0]["p_vs_reference"] is None
    p_ln = stats.ttest_ind(LN_LOSSES[1e-3], REZERO_LOSSES, equal_var=False).pvalue
    p_sk = stats.ttest_ind(SKIP_LOSSES[1e-2], REZERO_LOSSES, equal_var=False).pvalue
    assert by_name(rows)["layernorm"]["p_vs_reference"] == pytest.approx(metrics.holm([p_sk, p_ln])[1])


def test_tokens_per_s_excludes_diverged_and_params_max() -> None:
    records = [
        rec("a", 1e-3, 0, 3.0, tps=100.0, params=10),
        rec("a", 1e-3, 1, 3.0, tps=300.0, params=12),
        rec("a", 1e-2, 0, 3.0, tps=10_000.0, diverged=True, params=11),
    ]
    (row,) = metrics.summarize(records, L0)
    assert row["tokens_per_s"] == 200.0  # median(100, 300); with 10000 it would be 300
    assert row["params"] == 12


# ---------------------------------------------------------------------------
# Extra axes
# ---------------------------------------------------------------------------


def test_extra_axis_separate_cells() -> None:
    records = []
    # n_layers=4 first so that sorting is exercised
    for n_layers, base in ((4, 3.0), (2, 3.5)):
        for s in range(2):
            records.append(
                rec(
                    "skipinit",
                    1e-3,
                    s,
                    base + 0.1 * s,
                    n_layers=n_layers,
                    curve=[(10, base + 0.1 * s)],
                )
            )
            records.append(
                rec(
                    "layernorm",
                    1e-3,
                    s,
                    base - 0.2,
                    n_layers=n_layers,
                    best=base - 0.2 + 0.1 * s,
                )
            )
    rows = metrics.summarize(records, L0, axes=["n_layers"])
    assert [(r["baseline"], r["n_layers"]) for r in rows] == [
        ("layernorm", 2),
        ("layernorm", 4),
        ("skipinit", 2),
        ("skipinit", 4),
    ]
    assert list(rows[0])[:2] == ["baseline", "n_layers"]
    cells = {(r["baseline"], r["n_layers"]): r for r in rows}
    assert cells[("skipinit", 2)]["best_val_loss"] == pytest.approx(3.55)  # (3.5 + 3.6)/2
    assert cells[("skipinit", 4)]["best_val_loss"] == pytest.approx(3.05)  # (3.0 + 3.1)/2
    assert cells[("skipinit", 2)]["n_trials"] == 2
    # per-cell default target from layernorm's best_val_loss:
    #   n_layers=2: median(3.3, 3.4) = 3.35 -> skipinit curves (3.5), (3.6): both miss -> inf
    #   n_layers=4: median(2.8, 2.9) = 2.85 -> skipinit curves (3.0), (3.1): both miss -> inf
    assert cells[("skipinit", 2)]["steps_to_target"] == INF
    # with an explicit target of 3.55: n=2 -> (10, inf) median inf; n=4 -> (10, 10) -> 10
    rows = metrics.summarize(records, L0, axes=["n_layers"], target=3.55)
    cells = {(r["baseline"], r["n_layers"]): r for r in rows}
    assert cells[("skipinit", 2)]["steps_to_target"] == INF
    assert cells[("skipinit", 4)]["steps_to_target"] == 10.0


def test_reference_without_axis_key_matches_every_cell() -> None:
    records = []
    for s in range(3):
        records.append(rec("layernorm", 1e-3, s, 3.0 + 0.1 * s, best=3.0, curve=[(5, 3.0)]))  # no alpha_init key
        for alpha, x in ((0.1, 3.2), (1.0, 3.4)):
            records.append(
                rec(
                    "skipinit",
                    1e-3,
                    s,
                    x + 0.05 * s,
                    alpha_init=alpha,
                    curve=[(7, 2.9)] if alpha == 0.1 else [],
                )
            )
    rows = metrics.summarize(records, L0, axes=["alpha_init"])
    assert [(r["baseline"], r["alpha_init"]) for r in rows] == [
        ("layernorm", None),
        ("skipinit", 0.1),
        ("skipinit", 1.0),
    ]
    # target = median(3.0, 3.0, 3.0) = 3.0 in both cells
    assert rows[0]["steps_to_target"] == 5.0
    assert rows[1]["steps_to_target"] == 7.0
    assert rows[2]["steps_to_target"] == INF
    ln = [3.0, 3.1, 3.2]
    p1 = stats.ttest_ind([3.2, 3.25, 3.3], ln, equal_var=False).pvalue
    p2 = stats.ttest_ind([3.4, 3.45, 3.5], ln, equal_var=False).pvalue
    expected = metrics.holm([p1, p2])
    assert rows[1]["p_vs_reference"] == pytest.approx(expected[0])
    assert rows[2]["p_vs_reference"] == pytest.approx(expected[1])


# ---------------------------------------------------------------------------
# holm and errors
# ---------------------------------------------------------------------------


def test_holm_known_vector() -> None:
    # sorted: 0.01*3 = 0.03; 0.03*2 = 0.06; max(0.06, 0.04*1) = 0.06
    assert metrics.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # capped at 1: 0.5*2 = 1.0; max(1.0, 0.6) = 1.0
    assert metrics.holm([0.6, 0.5]) == pytest.approx([1.0, 1.0])
    # monotone: 0.001*4=0.004, 0.02*3=0.06, 0.025*2=0.05 -> 0.06, 0.04*1 -> 0.06
    assert metrics.holm([0.04, 0.001, 0.025, 0.02]) == pytest.approx([0.06, 0.004, 0.06, 0.06])
    assert metrics.holm([]) == []
    with pytest.raises(ValueError):
        metrics.holm([math.nan])
    with pytest.raises(ValueError):
        metrics.holm([1.5])


def test_errors() -> None:
    with pytest.raises(ValueError, match="no records"):
        metrics.summarize([], L0)
    bad = rec("a", 1e-3, 0, 3.0)
    del bad["diverged"]
    with pytest.raises(ValueError, match="diverged"):
        metrics.summarize([bad], L0)
    with pytest.raises(ValueError, match="duplicate"):
        metrics.summarize([rec("a", 1e-3, 0, 3.0), rec("a", 1e-3, 0, 3.1)], L0)
    with pytest.raises(ValueError, match="lr"):
        metrics.summarize([rec("a", 0.0, 0, 3.0)], L0)
