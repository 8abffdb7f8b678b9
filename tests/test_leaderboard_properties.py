"""Properties of the leaderboard computation over random sweeps (Hypothesis): what must hold for any
set of trials, whatever the losses, divergences, grids and seeds.

Usage: ``pytest tests/test_leaderboard_properties.py -q``

Each property is checked with the test's own arithmetic (capped means, log-LR interpolation), not the
module's helpers, so a wrong line in ``normfree_bench.tables.leaderboard`` shows up as a counterexample.
"""

from __future__ import annotations

import math
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from normfree_bench.tables.leaderboard import summarize

L0 = math.log(256)
TRIVIAL = 3.3
STALL_AT = TRIVIAL * (1 - 0.02)  # SweepConfig's default trained_margin
GRID = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]
WINDOW_POINTS = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]  # the default sensitivity window's 1-3 points
ROBUSTNESS = ("lr_sensitivity", "lr_basin_decades", "lr_basin_censored", "max_stable_lr", "max_stable_lr_censored",
              "spiked", "spiked_count")
TUNING_COLUMNS = ("verdict", "best_val_loss", "best_val_loss_std", "best_val_loss_ci95", "tuning_seeds", "best_lr",
                  "best_lr_censored", "best_lr_edge", *ROBUSTNESS, "diverged", "stalled", "n_trials",
                  "tokens_per_s", "params")

losses = st.one_of(st.floats(0.5, L0 + 2.0), st.just(math.nan), st.just(math.inf))


@st.composite
def sweeps(draw: st.DrawFn, *, min_lrs: int = 1, grid: list[float] | None = None,
           held_out: bool = True) -> list[dict[str, Any]]:
    """Records of 1-3 baselines (the reference among them), each on its own LR grid and seeds."""
    names = draw(st.lists(st.sampled_from(["layernorm", "dyt", "rezero"]), min_size=1, max_size=3, unique=True))
    records: list[dict[str, Any]] = []
    for name in names:
        lrs = grid or sorted(draw(st.lists(st.sampled_from(GRID), min_size=min_lrs, max_size=6, unique=True)))
        seeds = draw(st.integers(1, 3))
        for lr in lrs:
            for seed in range(seeds):
                records.append(trial(draw, name, lr, seed, "tune"))
        if held_out and draw(st.booleans()):
            best = draw(st.sampled_from(lrs))  # held-out seeds sit at one LR of the grid
            for seed in range(100, 100 + draw(st.integers(1, 3))):
                records.append(trial(draw, name, best, seed, "eval"))
    return records


def trial(draw: st.DrawFn, name: str, lr: float, seed: int, phase: str) -> dict[str, Any]:
    diverged = draw(st.booleans())
    final = draw(losses)
    steps = [10 * (i + 1) for i in range(draw(st.integers(0, 4)))]
    return {"baseline": name, "lr": lr, "seed": seed, "phase": phase, "final_val_loss": final,
            "diverged": diverged, "spiked": draw(st.booleans()), "tokens_per_s": draw(st.floats(1.0, 1e5)),
            "params": 1000, "curve": [(s, draw(st.floats(0.5, L0))) for s in steps]}


def capped(rec: dict[str, Any]) -> float:
    loss = float(rec["final_val_loss"])
    return L0 if rec["diverged"] or not math.isfinite(loss) else min(loss, L0)


def lr_curve_of(records: list[dict[str, Any]], name: str) -> dict[float, float]:
    by_lr: dict[float, list[float]] = {}
    for r in records:
        if r["baseline"] == name and r["phase"] == "tune":
            by_lr.setdefault(r["lr"], []).append(capped(r))
    return {lr: sum(v) / len(v) for lr, v in sorted(by_lr.items())}


def by_baseline(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["baseline"]: row for row in rows}


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


@settings(max_examples=150, deadline=None)
@given(sweeps(), st.randoms(use_true_random=False))
def test_the_leaderboard_does_not_depend_on_trial_order(records: list[dict[str, Any]], rng: random.Random) -> None:
    shuffled = list(records)
    rng.shuffle(shuffled)
    a, b = by_baseline(summarize(records, L0, TRIVIAL)), by_baseline(summarize(shuffled, L0, TRIVIAL))
    assert a.keys() == b.keys()
    for name in a:
        for column, value in a[name].items():
            assert same(value, b[name][column]), (name, column, value, b[name][column])


@settings(max_examples=150, deadline=None)
@given(sweeps(held_out=False), st.integers(1, 3), st.data())
def test_held_out_seeds_never_move_a_tuning_figure(records: list[dict[str, Any]], extra: int,
                                                   data: st.DataObject) -> None:
    """Held-out seeds report on the chosen LR; they never choose it or change what the grid says."""
    before = by_baseline(summarize(records, L0, TRIVIAL))
    with_held = list(records)
    for name, row in before.items():
        for seed in range(200, 200 + extra):
            with_held.append(trial(data.draw, name, row["best_lr"], seed, "eval"))
    after = by_baseline(summarize(with_held, L0, TRIVIAL))
    for name, row in before.items():
        for column in TUNING_COLUMNS:
            assert same(row[column], after[name][column]), (name, column)
        assert after[name]["heldout_seeds"] == (f"200-{199 + extra}" if extra > 1 else "200")


@settings(max_examples=150, deadline=None)
@given(sweeps(held_out=False), st.data())
def test_adding_tuning_seeds_never_changes_a_cells_lr_set(records: list[dict[str, Any]], data: st.DataObject) -> None:
    """More seeds on the same grid: best_lr stays on that grid, the edges are that grid's, N grows."""
    more = list(records)
    for name in {r["baseline"] for r in records}:
        for lr in {r["lr"] for r in records if r["baseline"] == name}:
            more.append(trial(data.draw, name, lr, 50, "tune"))
    before, after = by_baseline(summarize(records, L0, TRIVIAL)), by_baseline(summarize(more, L0, TRIVIAL))
    for name, row in after.items():
        grid = sorted({r["lr"] for r in records if r["baseline"] == name})
        assert row["best_lr"] in grid
        assert row["n_trials"] == before[name]["n_trials"] + len(grid)
        expected_edge = None if len(grid) < 2 else {grid[0]: "low", grid[-1]: "high"}.get(row["best_lr"])
        assert row["best_lr_edge"] == expected_edge and row["best_lr_censored"] == (expected_edge is not None)
        if row["max_stable_lr"] is not None:
            assert row["max_stable_lr"] in grid


@settings(max_examples=200, deadline=None)
@given(sweeps())
def test_a_failed_scheme_never_gets_a_robustness_figure(records: list[dict[str, Any]]) -> None:
    for row in summarize(records, L0, TRIVIAL):
        curve = lr_curve_of(records, row["baseline"])
        tune = [r for r in records if r["baseline"] == row["baseline"] and r["phase"] == "tune"]
        best = min(curve.values())
        if all(r["diverged"] for r in tune):
            assert row["verdict"] == "failed: diverged"
        elif best >= STALL_AT:
            assert row["verdict"] == "failed: no learning"
        else:
            assert row["verdict"] == "trained"
        if row["verdict"] != "trained":
            assert all(row[c] is None for c in ROBUSTNESS), row
            assert "robustness figures are left out" in row["note"]
        else:
            assert row["spiked_count"] == sum(bool(r["spiked"]) and not r["diverged"] for r in tune)


def interpolated(curve: dict[float, float], lr: float) -> float:
    lrs = sorted(curve)
    for lo, hi in zip(lrs, lrs[1:]):
        if lo <= lr <= hi:
            t = (math.log10(lr) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
            return curve[lo] + t * (curve[hi] - curve[lo])
    return curve[lr]


@st.composite
def windowed_sweeps(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Grids that cover the sensitivity window; sometimes flat over it."""
    lrs = sorted({*draw(st.lists(st.sampled_from(GRID), max_size=4)), 3e-4, 3e-1})
    records = draw(sweeps(grid=lrs, held_out=False))
    if draw(st.booleans()):  # a flat window: every tuning trial inside it finishes at one loss
        flat = draw(st.floats(0.5, L0))
        for r in records:
            if 3e-4 <= r["lr"] <= 3e-1:
                r.update(final_val_loss=flat, diverged=False)
    return records


@settings(max_examples=200, deadline=None)
@given(windowed_sweeps())
def test_sensitivity_is_zero_only_for_a_trained_scheme_flat_over_the_window(records: list[dict[str, Any]]) -> None:
    for row in summarize(records, L0, TRIVIAL):
        curve = lr_curve_of(records, row["baseline"])
        samples = [interpolated(curve, p) for p in WINDOW_POINTS]
        flat = max(samples) - min(samples) <= 1e-12
        if row["verdict"] != "trained":
            assert row["lr_sensitivity"] is None
            continue
        expected = sum(samples) / len(samples) - min(samples)
        assert math.isclose(row["lr_sensitivity"], expected, rel_tol=1e-9, abs_tol=1e-12)
        assert (row["lr_sensitivity"] <= 1e-12) == flat


@settings(max_examples=200, deadline=None)
@given(sweeps(min_lrs=2, held_out=False))
def test_censoring_flags_appear_exactly_at_the_grid_edges(records: list[dict[str, Any]]) -> None:
    for row in summarize(records, L0, TRIVIAL):
        curve = lr_curve_of(records, row["baseline"])
        lrs = list(curve)
        low = min(curve.values())  # the arg-min; losses equal up to round-off (1e-12 relative) go to the smaller LR
        best = min(lr for lr in lrs if curve[lr] <= low + 1e-12 * max(1.0, abs(low)))
        assert row["best_lr"] == best
        assert row["best_lr_censored"] == (best in (lrs[0], lrs[-1]))
        if row["verdict"] != "trained":
            continue
        tune = [r for r in records if r["baseline"] == row["baseline"] and r["phase"] == "tune"]
        stable = None
        for lr in lrs[lrs.index(best):]:
            if any(r["diverged"] for r in tune if r["lr"] == lr):
                break
            stable = lr
        assert row["max_stable_lr"] == stable
        assert row["max_stable_lr_censored"] == (stable is not None and stable == lrs[-1])
        limit = curve[best] + 0.1 * (TRIVIAL - curve[best])  # SweepConfig's default basin_tol
        i = lrs.index(best)
        reaches_low = all(curve[lr] <= limit for lr in lrs[:i])
        reaches_high = all(curve[lr] <= limit for lr in lrs[i + 1:])
        assert row["lr_basin_censored"] == (reaches_low or reaches_high)
