"""The leaderboard's computation (normfree_bench.tables.leaderboard) against small hand-computed tables, and
its rendering: a scheme that never learned, one that diverges everywhere, a grid that misses the window,
a non-monotone divergence pattern, held-out seeds.

All tables use l0 = 5.0 and a trivial loss of 4.0, so the arithmetic in the comments stays simple: a cell
trained when its best loss is below 4.0 * (1 - 0.02) = 3.92.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from scipy import stats

from normfree_bench.config import SweepConfig
from normfree_bench.errors import UserError
from normfree_bench.tables import leaderboard as lb
from normfree_bench.tables.render import render, sort_key, sort_rows

L0, TRIVIAL, INF = 5.0, 4.0, math.inf
GRID = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]  # the default window's 1-3 points


def rec(baseline: str, lr: float, seed: int, loss: float, *, diverged: bool = False, spiked: bool = False,
        phase: str = "tune", curve: list[tuple[int, float]] | None = None, tps: float = 1000.0,
        params: int = 100, **axes: Any) -> dict[str, Any]:
    return {"baseline": baseline, "lr": lr, "seed": seed, "final_val_loss": loss, "best_val_loss": loss,
            "diverged": diverged, "spiked": spiked, "phase": phase, "curve": curve or [], "tokens_per_s": tps,
            "params": params, **axes}


def grid_records(baseline: str, losses: list[float], **kw: Any) -> list[dict[str, Any]]:
    return [rec(baseline, lr, 0, x, **kw) for lr, x in zip(GRID, losses, strict=True)]


def rows_by_name(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["baseline"]: r for r in rows}


# ---- per-trial pieces ---------------------------------------------------------------------------------
def test_capped_loss_counts_diverged_and_non_finite_as_l0() -> None:
    assert lb.capped_loss(rec("a", 1e-3, 0, 3.2), L0) == pytest.approx(3.2)
    assert lb.capped_loss(rec("a", 1e-3, 0, 6.0), L0) == 5.0
    for bad in (math.nan, INF, -INF):
        assert lb.capped_loss(rec("a", 1e-3, 0, bad), L0) == 5.0
    assert lb.capped_loss(rec("a", 1e-3, 0, 3.0, diverged=True), L0) == 5.0


def test_steps_to_target_interpolates_between_eval_points() -> None:
    # between (100, 4.0) and (200, 3.0) the curve crosses 3.5 half-way: step 150
    assert lb.steps_to_reach([(100, 4.0), (200, 3.0)], 3.5, L0) == pytest.approx(150.0)
    # already below at the first eval point: from (0, l0 = 5.0) to (50, 3.0), 3.5 is crossed at 37.5
    assert lb.steps_to_reach([(50, 3.0)], 3.5, L0) == pytest.approx(37.5)
    assert lb.steps_to_reach([(100, 4.0), (200, 3.6)], 3.5, L0) == INF
    # a non-finite point never counts, and the crossing after it is not interpolated through it
    assert lb.steps_to_reach([(100, math.nan), (200, 3.0)], 3.5, L0) == 200.0
    assert lb.steps_to_reach([(100, 4.0), (200, 3.5)], 3.5, L0) == 200.0  # reaching equality counts


def test_window_points_are_the_1_3_points() -> None:
    assert lb.window_points(3e-4, 3e-1) == GRID
    assert lb.window_points(1e-4, 1.0) == [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
    assert lb.window_points(1e-3, 3e-2) == [1e-3, 3e-3, 1e-2, 3e-2]


def test_holm_known_vector_and_range_check() -> None:
    assert lb.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert lb.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError):
        lb.holm([1.5])


def test_welch_is_one_sided_and_undefined_without_variance() -> None:
    a, b = [3.0, 3.1, 3.2], [3.4, 3.5, 3.7]
    want = stats.ttest_ind(a, b, equal_var=False, alternative="less").pvalue
    assert lb.welch_less(a, b) == pytest.approx(want) and lb.welch_less(a, b) < 0.05
    assert lb.welch_less(b, a) == pytest.approx(1 - want)  # the other direction is not significant
    assert lb.welch_less([3.0, 3.0], [3.5, 3.5]) is None  # both constant: undefined, not 0
    assert lb.welch_less([3.0], [3.5, 3.6]) is None


# ---- the main table ---------------------------------------------------------------------------------
# layernorm: a clear minimum at 1e-2 (2.0); at 3e-1 one diverged trial.
LN = [3.6, 3.0, 2.4, 2.0, 2.2, 2.8, 5.0]
# dyt: flat at 4.1, above the trivial 4.0: it never learned, whatever the LR.
DYT = [4.1, 4.1, 4.1, 4.1, 4.1, 4.1, 4.1]
# nonorm: diverges at every LR.
NONORM = [INF] * 7


def main_rows(**sweep: Any) -> dict[str, dict[str, Any]]:
    records = grid_records("dyt", DYT) + grid_records("layernorm", LN) + \
        [rec("nonorm", lr, 0, INF, diverged=True) for lr in GRID]
    records[len(DYT) + 6]["diverged"] = True  # layernorm at 3e-1
    return rows_by_name(lb.summarize(records, L0, TRIVIAL, sweep=SweepConfig(eval_seeds=0, **sweep)))


def test_rows_come_reference_first_with_every_column() -> None:
    records = grid_records("dyt", DYT) + grid_records("layernorm", LN)
    rows = lb.summarize(records, L0, TRIVIAL)
    assert [r["baseline"] for r in rows] == ["layernorm", "dyt"]
    assert list(rows[0]) == list(lb.LEADERBOARD_COLUMNS)
    assert set(lb.COLUMN_DOCS) == set(lb.LEADERBOARD_COLUMNS) - {"baseline"}


def test_a_trained_cell_by_hand() -> None:
    row = main_rows()["layernorm"]
    assert row["verdict"] == "trained" and row["best_lr"] == 1e-2 and row["best_val_loss"] == 2.0
    assert row["best_lr_censored"] is False and row["best_lr_edge"] is None and row["tuning_seeds"] == "0"
    # sensitivity over the 7 window points (the grid itself): mean(3.6, 3.0, 2.4, 2.0, 2.2, 2.8, 5.0) - 2.0
    assert row["lr_sensitivity"] == pytest.approx(sum(LN) / 7 - 2.0)
    # basin: within 2.0 + 0.1 * (4.0 - 2.0) = 2.2 of the best. Left: 3e-3 (2.4) is outside, the crossing
    # between log10 3e-3 and -2 at t = (2.2 - 2.0) / (2.4 - 2.0) = 0.5 of the way from 1e-2 back to 3e-3.
    # Right: 3e-2 (2.2) is inside (inclusive), 1e-1 (2.8) outside: 2.2 is reached at 3e-2 itself (t = 0).
    left = -2 + 0.5 * (math.log10(3e-3) + 2)
    assert row["lr_basin_decades"] == pytest.approx(math.log10(3e-2) - left)
    assert row["lr_basin_censored"] is False
    # stable from 1e-2 up to 1e-1; 3e-1 diverged
    assert row["max_stable_lr"] == 1e-1 and row["max_stable_lr_censored"] is False
    assert row["diverged"] == "1/7" and row["stalled"] == "0/7" and row["spiked"] == "0/7"
    assert row["heldout_loss"] is None and row["p_vs_reference"] is None and row["note"] is None


def test_a_scheme_that_never_learned_gets_no_robustness_figure() -> None:
    row = main_rows()["dyt"]
    assert row["verdict"] == "failed: no learning"
    for column in ("lr_sensitivity", "lr_basin_decades", "max_stable_lr", "spiked", "lr_basin_censored",
                   "max_stable_lr_censored"):
        assert row[column] is None, column
    assert row["stalled"] == "7/7" and row["diverged"] == "0/7" and "failed: no learning" in row["note"]
    assert row["steps_to_target"] == INF and row["target_reached"] == "0/1"


def test_a_scheme_that_diverges_everywhere_gets_no_robustness_figure() -> None:
    row = main_rows()["nonorm"]
    assert row["verdict"] == "failed: diverged" and row["diverged"] == "7/7" and row["stalled"] == "0/7"
    assert row["lr_sensitivity"] is None and row["lr_basin_decades"] is None and row["max_stable_lr"] is None
    assert row["best_val_loss"] == L0


def test_the_margin_decides_a_cell_just_below_the_trivial_loss() -> None:
    records = grid_records("layernorm", LN) + grid_records("near", [3.93] * 7) + grid_records("clear", [3.91] * 7)
    rows = rows_by_name(lb.summarize(records, L0, TRIVIAL))
    assert rows["near"]["verdict"] == "failed: no learning"  # 3.93 >= 3.92
    assert rows["clear"]["verdict"] == "trained" and rows["clear"]["lr_sensitivity"] == 0.0  # flat but learned
    assert rows["clear"]["lr_basin_decades"] == pytest.approx(3.0) and rows["clear"]["lr_basin_censored"]


def test_a_grid_that_misses_the_window_gives_no_sensitivity_and_says_why() -> None:
    lrs = [1e-3, 3e-3, 1e-2, 3e-2]
    records = [rec("layernorm", lr, 0, x) for lr, x in zip(lrs, [3.0, 2.4, 2.0, 2.2], strict=True)]
    row = lb.summarize(records, L0, TRIVIAL)[0]
    assert row["lr_sensitivity"] is None and "does not cover the sensitivity window" in row["note"]
    row = lb.summarize(records, L0, TRIVIAL, sweep=SweepConfig(sensitivity_window=[1e-3, 3e-2]))[0]
    assert row["lr_sensitivity"] == pytest.approx((3.0 + 2.4 + 2.0 + 2.2) / 4 - 2.0)


def test_sensitivity_interpolates_a_finer_or_offset_grid() -> None:
    # loss linear in log10(lr): 4 + 0.5 * log10(lr) on an offset grid 2e-4 .. 6e-1; the window's points
    # 3e-4 .. 3e-1 are interpolated exactly, and the best (lowest) sample is at 3e-4.
    lrs = [2e-4 * 3**k for k in range(8)]  # 2e-4, 6e-4, ..., 0.4374
    f = lambda lr: 3.0 + 0.25 * math.log10(lr)  # noqa: E731
    records = [rec("layernorm", lr, 0, f(lr)) for lr in lrs]
    row = lb.summarize(records, L0, TRIVIAL)[0]
    samples = [f(p) for p in GRID]
    assert row["lr_sensitivity"] == pytest.approx(sum(samples) / 7 - min(samples))


def test_a_non_monotone_divergence_pattern() -> None:
    # best at 1e-3; diverges at 1e-2 but not at 3e-2: the stable run from the best LR up ends at 3e-3
    losses = [3.0, 2.0, 2.5, 9.9, 2.9, 3.5, 3.8]
    records = grid_records("layernorm", losses)
    records[3]["diverged"] = True
    records[6]["diverged"] = True
    row = lb.summarize(records, L0, TRIVIAL)[0]
    assert row["best_lr"] == 1e-3 and row["max_stable_lr"] == 3e-3 and row["max_stable_lr_censored"] is False
    assert row["diverged"] == "2/7"


def test_censoring_at_the_edges_of_the_grid() -> None:
    records = grid_records("layernorm", [2.0, 2.1, 2.3, 2.6, 3.0, 3.4, 3.8])  # best at the lowest LR
    row = lb.summarize(records, L0, TRIVIAL)[0]
    assert row["best_lr_censored"] and row["best_lr_edge"] == "low"
    assert row["lr_basin_censored"] and row["max_stable_lr"] == 3e-1 and row["max_stable_lr_censored"]
    header, _, line = render([row], "github").splitlines()[:3]
    names = [c.strip() for c in header.strip("|").split("|")]
    cells = dict(zip(names, [c.strip() for c in line.strip("|").split("|")]))
    assert cells["best_lr"] == "≤3e-4" and cells["max_stable_lr"] == "≥3e-1"
    assert cells["lr_basin_decades"] == f"≥{row['lr_basin_decades']:.2f}"


def test_spiked_counts_recovered_trials_only_and_stalled_the_finished_above_threshold() -> None:
    records = grid_records("layernorm", [3.0, 2.0, 2.5, 3.95, 2.9, 3.5, 3.8])
    records[2]["spiked"] = True  # recovered
    records[6].update(spiked=True, diverged=True)  # spiked, then diverged: counted as diverged only
    row = lb.summarize(records, L0, TRIVIAL)[0]
    assert row["spiked"] == "1/7" and row["diverged"] == "1/7" and row["stalled"] == "1/7"  # 3.95 >= 3.92


def test_ties_go_to_the_smaller_lr() -> None:
    row = lb.summarize([rec("layernorm", lr, 0, 2.0) for lr in (1e-3, 1e-2)], L0, TRIVIAL)[0]
    assert row["best_lr"] == 1e-3


# ---- held-out seeds, p-values and the target ------------------------------------------------------------
def heldout(baseline: str, lr: float, losses: list[float], first_seed: int = 1, **kw: Any) -> list[dict]:
    return [rec(baseline, lr, first_seed + i, x, phase="eval", **kw) for i, x in enumerate(losses)]


def test_held_out_seeds_give_the_final_loss_and_a_one_sided_holm_corrected_p() -> None:
    ln_held, good_held, bad_held = [2.0, 2.1, 2.2], [1.6, 1.7, 1.75], [2.5, 2.6, 2.9]
    records = (grid_records("layernorm", LN) + heldout("layernorm", 1e-2, ln_held)
               + grid_records("good", [x - 0.3 for x in LN]) + heldout("good", 1e-2, good_held)
               + grid_records("bad", [x + 0.3 for x in LN]) + heldout("bad", 1e-2, bad_held))
    rows = rows_by_name(lb.summarize(records, L0, TRIVIAL))
    ln, good, bad = rows["layernorm"], rows["good"], rows["bad"]
    assert ln["heldout_loss"] == pytest.approx(2.1) and ln["heldout_seeds"] == "1-3" and ln["tuning_seeds"] == "0"
    t = stats.t.ppf(0.975, 2) * stats.tstd(good_held) / math.sqrt(3)
    assert good["heldout_loss_ci95"] == pytest.approx(t)
    raw = [stats.ttest_ind(x, ln_held, equal_var=False, alternative="less").pvalue for x in (good_held, bad_held)]
    assert [good["p_vs_reference"], bad["p_vs_reference"]] == pytest.approx(lb.holm(raw))
    assert ln["p_vs_reference"] is None and good["p_vs_reference"] < 0.05 < bad["p_vs_reference"]


def test_no_p_value_from_the_tuning_seeds_alone() -> None:
    records = [rec(b, 1e-3, s, x) for b, xs in (("layernorm", [2.0, 2.1, 2.2]), ("other", [1.0, 1.1, 1.2]))
               for s, x in enumerate(xs)]
    assert all(r["p_vs_reference"] is None for r in lb.summarize(records, L0, TRIVIAL))


def test_steps_to_target_from_the_references_held_out_loss() -> None:
    # reference held-out mean 2.0; target = 2.0 + 0.05 * (4.0 - 2.0) = 2.1
    curves = {1: [(100, 3.0), (200, 2.0)], 2: [(100, 2.5), (200, 2.05)], 3: [(100, 3.0), (200, 2.3)]}
    records = grid_records("layernorm", LN) + [rec("layernorm", 1e-2, seed, 2.0, phase="eval", curve=curve)
                                               for seed, curve in curves.items()]
    row = lb.summarize(records, L0, TRIVIAL)[0]
    # seed 1: 3.0 -> 2.0 crosses 2.1 at 100 + 100 * 0.9 / 1.0 = 190; seed 2: 2.5 -> 2.05 at 100 + 100 * 0.4 / 0.45
    # seed 3: never; the median of (190, 188.9, inf) is 190
    assert row["steps_to_target"] == pytest.approx(190.0) and row["target_reached"] == "2/3"
    explicit = lb.summarize(records, L0, TRIVIAL, sweep=SweepConfig(target_loss=2.5))[0]
    assert explicit["target_reached"] == "3/3"


def test_no_target_when_the_reference_did_not_train() -> None:
    records = grid_records("layernorm", DYT) + grid_records("other", LN)
    rows = lb.summarize(records, L0, TRIVIAL)
    assert all(r["steps_to_target"] is None and r["target_reached"] is None for r in rows)


# ---- axes and errors ----------------------------------------------------------------------------------
def test_axis_cells_and_a_reference_without_the_axis() -> None:
    records = grid_records("layernorm", LN)
    for alpha, shift in ((0.5, 0.0), (1.0, 0.4)):
        records += [rec("dyt", lr, 0, x + shift, **{"dyt.alpha_init": alpha}) for lr, x in zip(GRID, LN)]
        records += heldout("dyt", 1e-2, [2.0 + shift, 2.1 + shift, 2.2 + shift], **{"dyt.alpha_init": alpha})
    records += heldout("layernorm", 1e-2, [2.0, 2.1, 2.3])
    rows = lb.summarize(records, L0, TRIVIAL, axes=["dyt.alpha_init"])
    assert [(r["baseline"], r["dyt.alpha_init"]) for r in rows] == [("layernorm", None), ("dyt", 0.5), ("dyt", 1.0)]
    assert rows[1]["p_vs_reference"] is not None and rows[2]["p_vs_reference"] is not None  # both vs layernorm
    assert rows[2]["best_val_loss"] == pytest.approx(2.4)


def test_errors() -> None:
    with pytest.raises(ValueError, match="no records"):
        lb.summarize([], L0, TRIVIAL)
    with pytest.raises(ValueError, match="lacks required"):
        lb.summarize([{"baseline": "a", "lr": 1e-3}], L0, TRIVIAL)
    with pytest.raises(ValueError, match="non-positive"):
        lb.summarize([rec("a", 0.0, 0, 2.0)], L0, TRIVIAL)
    with pytest.raises(ValueError, match="duplicate"):
        lb.summarize([rec("a", 1e-3, 0, 2.0), rec("a", 1e-3, 0, 2.1)], L0, TRIVIAL)


# ---- rendering ----------------------------------------------------------------------------------------
def test_json_holds_numbers_or_null_never_strings_for_numbers() -> None:
    rows = list(main_rows().values())
    data = json.loads(render(rows, "json"))
    for row in data:
        for column in ("steps_to_target", "lr_sensitivity", "best_val_loss", "max_stable_lr"):
            assert row[column] is None or isinstance(row[column], (int, float)), (column, row[column])
    # no curve reaches the target here: an infinity is null in JSON, and target_reached tells it was a miss
    assert [(r["steps_to_target"], r["target_reached"]) for r in data] == [(None, "0/1")] * 3


def test_text_tables_show_failed_cells_empty_with_their_note() -> None:
    text = render(list(main_rows().values()), "github")
    dyt = next(line for line in text.splitlines() if line.startswith("| dyt"))
    cells = [c.strip() for c in dyt.strip("|").split("|")]
    assert cells[1] == "failed: no learning" and cells.count("-") >= 4
    assert "dyt: failed: no learning: robustness figures are left out" in text


def test_sort_key_orders_numbers_then_counts_then_text_then_missing() -> None:
    """``--sort``: numbers by value (booleans as 0/1), ``k/N`` by its fraction then k, text by the text,
    None and NaN last; one list holding every kind sorts into exactly this order."""
    from normfree_bench.tables.render import sort_key

    values = ["b", None, "2/4", 3.5, "1/4", math.nan, True, "a", "1/2", -1, " 3 / 3 ", "0/0", 0.25]
    ordered = sorted(values, key=sort_key)
    assert ordered[:4] == [-1, 0.25, True, 3.5]
    assert ordered[4:9] == ["1/4", "1/2", "2/4", " 3 / 3 ", "0/0"]  # 0/0 has no fraction: after every count
    assert ordered[9:11] == ["a", "b"]
    assert ordered[11] is None and math.isnan(ordered[12])
    assert sort_key(False) < sort_key(True) < sort_key(2) and sort_key("1/2") < sort_key("2/4")
    assert sort_key(None) == sort_key(math.nan) and sort_key("x/2") == (2, "x/2")


def test_trials_at_best_lr_are_the_complete_tuning_trials_of_the_row_cell() -> None:
    from normfree_bench.tables.leaderboard import trials_at_best_lr

    def t(lr: float, seed: int, **kw: Any) -> dict[str, Any]:
        return {"baseline": kw.pop("baseline", "dyt"), "lr": lr, "seed": seed, "alpha": kw.pop("alpha", 0.5), **kw}

    keep = [t(0.01, 0), t(0.01, 1, status="COMPLETE", phase="tune")]
    others = [t(0.03, 0), t(0.01, 2, status="FAIL"), t(0.01, 3, phase="eval"), t(0.01, 4, baseline="layernorm"),
              t(0.01, 5, alpha=1.0), t("0.01", 6, status="PRUNED")]
    rows = [{"baseline": "dyt", "alpha": 0.5, "best_lr": 0.01}, {"baseline": "dyt", "alpha": 1.0, "best_lr": 0.01}]
    first, second = trials_at_best_lr(rows, [*others, *keep], axes=["alpha"])
    assert first == keep and [x["seed"] for x in second] == [5]
    assert trials_at_best_lr(rows[:1], [*others, *keep], axes=[])[0] == [*[x for x in others if x["seed"] == 5],
                                                                        *keep]  # no axis: alpha is not compared


def test_chosen_cells_pick_each_cells_arg_min_lr_with_ties_to_the_smaller() -> None:
    """The held-out phase's choice: per (baseline, axis values) cell, the LR of the lowest mean capped loss."""
    from normfree_bench.sweep.selection import chosen_cells

    l0 = 5.0

    def r(name: str, alpha: float | None, lr: float, loss: float, diverged: bool = False) -> dict[str, Any]:
        return {"baseline": name, "alpha": alpha, "lr": lr, "final_val_loss": loss, "diverged": diverged}

    records = [
        r("dyt", 0.5, 0.01, 3.0), r("dyt", 0.5, 0.01, 2.0), r("dyt", 0.5, 0.03, 2.4), r("dyt", 0.5, 0.03, 2.4),
        r("dyt", 1.0, 0.01, 9.0), r("dyt", 1.0, 0.03, 1.0, diverged=True), r("dyt", 1.0, 0.1, 4.0),
        r("layernorm", None, 0.003, 2.0), r("layernorm", None, 0.01, 2.0), r("layernorm", None, 0.001, math.nan),
    ]
    assert chosen_cells(records, ["alpha"], l0) == {("dyt", (0.5,)): 0.03,  # means 2.5 vs 2.4
                                                    ("dyt", (1.0,)): 0.1,  # 9 caps to 5, diverged counts as 5
                                                    ("layernorm", (None,)): 0.003}  # tie: the smaller LR
    merged = chosen_cells(records, [], l0)
    assert set(merged) == {("dyt", ()), ("layernorm", ())}
    assert merged[("dyt", ())] == 0.03  # (2.4 * 2 + 5) / 3 = 3.27 < (3 + 2 + 5) / 3 = 3.33 and 0.1's 4.0


def test_interpolate_at_grid_points_between_them_and_on_a_one_point_grid() -> None:
    from normfree_bench.tables.leaderboard import interpolate

    curve = {1e-3: 3.0, 1e-2: 2.0, 1e-1: 4.0}
    assert interpolate(curve, 1e-3) == 3.0 and interpolate(curve, 1e-2) == 2.0 and interpolate(curve, 1e-1) == 4.0
    assert interpolate(curve, 10 ** -2.5) == pytest.approx(2.5)  # halfway in log10(LR)
    assert interpolate(curve, 10 ** -1.25) == pytest.approx(3.5)
    assert interpolate({3e-3: 2.7}, 3e-3) == 2.7  # a one-point grid


def test_window_points_are_the_1_3_points_inside_any_window() -> None:
    from normfree_bench.tables.leaderboard import window_points

    assert window_points(3e-4, 3e-1) == [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
    assert window_points(2e-4, 0.25) == [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]  # ends that are not 1-3 points
    assert window_points(1.5e-3, 5e-3) == [3e-3]


def test_sort_rows_by_an_axis_column_and_its_errors() -> None:
    rows = [{"baseline": "dyt", "dyt.alpha_init": 2.0}, {"baseline": "dyt", "dyt.alpha_init": 0.5}]
    assert [r["dyt.alpha_init"] for r in sort_rows(rows, "dyt.alpha_init")] == [0.5, 2.0]
    assert sort_rows([], "best_lr") == [] and sort_rows(rows, None) is rows
    with pytest.raises(UserError, match=r"^unknown sort column 'nope'; valid: baseline, dyt.alpha_init$"):
        sort_rows(rows, "nope")
    assert sorted([True, 1.0, False, 0], key=sort_key) == [False, 0, True, 1.0]  # booleans as 0/1, ties stable
    assert sorted([1.0, True], key=sort_key) == [1.0, True]


def test_notes_under_a_text_table_explain_the_marks_and_name_each_rows_cell() -> None:
    from normfree_bench.tables.render import notes

    rows = [{"baseline": "layernorm", "dyt.alpha_init": None, "seq": None, "note": None},
            {"baseline": "dyt", "dyt.alpha_init": 0.5, "seq": 64, "note": "failed: no learning: left out"},
            {"baseline": "dyt", "dyt.alpha_init": 2.0, "seq": None, "note": "the grid misses the window"}]
    assert notes(rows, ["dyt.alpha_init", "seq"]) == [
        "≤ / ≥: censored at an edge of the LR grid (best LR, max stable LR, LR basin); - : no value (see the "
        "notes); loss ± 95 % t-interval over the seeds named beside it",
        "dyt (dyt.alpha_init=0.5, seq=64): failed: no learning: left out",
        "dyt (dyt.alpha_init=2.0): the grid misses the window"]
    assert notes(rows[1:2], []) == [notes([], [])[0], "dyt: failed: no learning: left out"]


def test_render_defaults_formats_and_columns() -> None:
    """github by default; JSON indented by two spaces; CSV with every column (not the text subset); a
    wrong format names the valid ones."""
    rows = lb.summarize([{"baseline": "layernorm", "lr": lr, "seed": 0, "final_val_loss": loss, "diverged": False}
                         for lr, loss in ((1e-3, 3.0), (1e-2, 2.0), (1e-1, 2.5))], l0=math.log(256), trivial=3.3)
    assert render(rows) == render(rows, "github") and render(rows).startswith("| baseline ")
    assert render(rows, "json") == json.dumps(json.loads(render(rows, "json")), indent=2)
    assert render(rows, "json").splitlines()[1] == "  {"
    header = render(rows, "csv").splitlines()[0].split(",")
    assert header == list(lb.LEADERBOARD_COLUMNS) and "best_val_loss_std" in header
    with pytest.raises(UserError, match=r"^unknown format 'yaml'; valid: github, psql, latex, html, csv, json$"):
        render(rows, "yaml")
