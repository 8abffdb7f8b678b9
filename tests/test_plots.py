"""Tests for normfree_bench.tables.plots: synthetic sweeps rendered to PNG, plus the pure helpers.

The figures are checked through their artists, not their pixels: a fixture wraps
``matplotlib.figure.Figure.savefig`` to keep every Figure that ``plot_all`` saves (then saves it as
usual), and the tests read back line data, scatter offsets, heatmap cells, scales, labels, titles and
legend entries.  Expected values come from the tests' own computation over the input records
(`expected_means`), never from the plot module's helpers.

Run: ``.venv/bin/python -m pytest -q tests/test_plots.py``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib.image as mpimg
import matplotlib.pyplot as plt  # noqa: E402  (after plots.py has chosen the Agg backend)
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

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
# Figures, checked through their artists
# --------------------------------------------------------------------------

Draw = Callable[..., dict[str, Figure]]


@pytest.fixture
def draw() -> Draw:
    """``draw(records, rows, l0, out_dir, **kw)``: `run_strict` plus ``{file name: the Figure saved to it}``.

    While it runs, ``Figure.savefig`` is replaced so that every saved figure is kept; ``plot_all``
    saves one figure per path it returns, in the same order.  Nothing is rendered (a stub file stands
    in for the PNG, which the tests through `assert_png` check): the artists are all these tests read."""
    saved: list[Figure] = []

    def savefig(self: Figure, fname: Any, *args: Any, **kwargs: Any) -> None:
        saved.append(self)
        Path(fname).write_bytes(b"\x89PNG stub")

    def run(*args: Any, **kwargs: Any) -> dict[str, Figure]:
        saved.clear()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Figure, "savefig", savefig)
            paths = run_strict(*args, **kwargs)
        assert len(saved) == len(paths)
        return {path.name: fig for path, fig in zip(paths, saved, strict=True)}

    return run


def capped(rec: dict[str, Any], l0: float) -> float:
    """The documented capped loss, computed here: l0 when diverged or not finite, else min(loss, l0)."""
    loss = float(rec["final_val_loss"])
    return l0 if rec["diverged"] or not math.isfinite(loss) else min(loss, l0)


def expected_means(records: list[dict[str, Any]], l0: float) -> tuple[list[float], list[float]]:
    """(LRs ascending, mean capped loss over the records at each LR)."""
    by_lr: dict[float, list[float]] = {}
    for rec in records:
        by_lr.setdefault(float(rec["lr"]), []).append(capped(rec, l0))
    lrs = sorted(by_lr)
    return lrs, [sum(by_lr[lr]) / len(by_lr[lr]) for lr in lrs]


def rgb(color: Any) -> tuple[float, float, float]:
    return tuple(round(c, 6) for c in to_rgba(color)[:3])  # type: ignore[return-value]


def labelled_line(ax: Axes, label: str) -> Line2D:
    found = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(found) == 1, (label, [ln.get_label() for ln in ax.get_lines()])
    return found[0]


def hlines(ax: Axes) -> list[tuple[float, str]]:
    """(y, linestyle) of every axhline of ``ax``."""
    out = []
    for ln in ax.get_lines():
        x, y = list(map(float, ln.get_xdata())), list(map(float, ln.get_ydata()))
        if x == [0.0, 1.0] and len(y) == 2 and y[0] == y[1] and ln.get_transform() != ax.transData:
            out.append((y[0], ln.get_linestyle()))
    return out


def data_lines(ax: Axes) -> list[Line2D]:
    return [ln for ln in ax.get_lines() if ln.get_transform() == ax.transData]


def points(ax: Axes, color: Any) -> list[tuple[float, float]]:
    """Sorted offsets of every scatter of ``ax`` whose face colour is ``color`` (alpha ignored)."""
    out: list[tuple[float, float]] = []
    for coll in ax.collections:
        faces = coll.get_facecolor()
        if len(faces) and rgb(faces[0]) == rgb(color):
            out += [(float(x), float(y)) for x, y in np.asarray(coll.get_offsets())]
    return sorted(out)


def legend_texts(fig: Figure) -> list[str]:
    assert len(fig.legends) == 1
    return [t.get_text() for t in fig.legends[0].get_texts()]


def assert_xy(line: Line2D, xs: list[float], ys: list[float]) -> None:
    assert np.asarray(line.get_xdata(), dtype=float).tolist() == xs  # exact: the LRs themselves, in this order
    assert np.asarray(line.get_ydata(), dtype=float) == pytest.approx(ys, rel=1e-12)


def table_records(table: dict[tuple[str, float], list[tuple[float, bool]]]) -> list[dict[str, Any]]:
    """Records from ``{(baseline, lr): [(final_val_loss, diverged) per seed]}``, largest LR first."""
    recs = []
    for lr in sorted({lr for _, lr in table}, reverse=True):
        for (name, at), seeds in table.items():
            if at == lr:
                recs += [{"baseline": name, "lr": lr, "seed": s, "final_val_loss": loss, "diverged": div,
                          "curve": []} for s, (loss, div) in enumerate(seeds)]
    return recs


HAND = {
    ("layernorm", 1e-4): [(3.0, False), (3.2, False)],
    ("layernorm", 1e-3): [(2.0, False), (2.4, False)],
    ("layernorm", 1e-2): [(2.5, False), (7.0, False)],  # 7.0 is above l0: capped at l0
    ("fixup", 1e-4): [(4.0, False), (4.4, False)],
    ("fixup", 1e-3): [(3.0, False), (math.nan, False)],  # a NaN loss counts as l0 and as diverged
    ("fixup", 1e-2): [(2.0, True), (2.1, True)],  # flagged diverged: l0 whatever its loss
}


def test_loss_vs_lr_draws_each_baseline_as_its_capped_mean_over_increasing_lr(draw: Draw, tmp_path: Path) -> None:
    records = table_records(HAND)  # largest LR first: the figure must sort
    fig = draw(records, [], L0, tmp_path)["loss_vs_lr.png"]
    assert fig.get_suptitle() == "Final validation loss vs learning rate"
    (ax,) = fig.axes
    lrs = [1e-4, 1e-3, 1e-2]
    layernorm, fixup = labelled_line(ax, "layernorm"), labelled_line(ax, "fixup")
    assert_xy(layernorm, lrs, [3.1, 2.2, (2.5 + L0) / 2])  # by hand
    assert_xy(fixup, lrs, [4.2, (3.0 + L0) / 2, L0])
    for name, line in (("layernorm", layernorm), ("fixup", fixup)):  # and by the independent computation
        assert_xy(line, *expected_means([r for r in records if r["baseline"] == name], L0))
        assert line.get_marker() == "o" and line.get_linestyle() == "-"
    assert rgb(layernorm.get_color()) != rgb(fixup.get_color())
    assert len(data_lines(ax)) == 2

    # seeds as dots in their baseline's colour (non-diverged only), diverged trials as red x at l0
    assert points(ax, layernorm.get_color()) == sorted(
        [(1e-4, 3.0), (1e-4, 3.2), (1e-3, 2.0), (1e-3, 2.4), (1e-2, 2.5), (1e-2, L0)])
    assert points(ax, fixup.get_color()) == [(1e-4, 4.0), (1e-4, 4.4), (1e-3, 3.0)]
    assert points(ax, "tab:red") == [(1e-3, L0), (1e-2, L0), (1e-2, L0)]
    assert hlines(ax) == [(L0, "--")]

    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"
    assert ax.get_xlabel() == "learning rate" and ax.get_ylabel() == "final val loss (capped at l0)"
    lo, hi = ax.get_xlim()
    assert lo < 1e-4 and hi > 1e-2
    assert list(ax.get_xticks()) == lrs  # few LRs: one tick per grid LR
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1e-4", "1e-3", "1e-2"]
    ylo, yhi = ax.get_ylim()
    assert ylo < 2.0 and yhi > L0  # every seed dot and the l0 line are inside
    assert legend_texts(fig) == ["layernorm", "fixup", "individual seeds", "diverged (at l0)",
                                 f"l0 (diverged) = {L0:.3g}"]


def test_loss_vs_lr_greys_failed_cells_and_marks_heldout_and_trivial(draw: Draw, tmp_path: Path) -> None:
    records = table_records(HAND)
    rows = [{"baseline": "layernorm", "verdict": "trained", "best_lr": 1e-3, "heldout_loss": 2.3},
            {"baseline": "fixup", "verdict": "failed: no learning", "best_lr": 1e-4, "heldout_loss": 4.1}]
    fig = draw(records, rows, L0, tmp_path, trivial=4.5)["loss_vs_lr.png"]
    (ax,) = fig.axes
    layernorm, fixup = labelled_line(ax, "layernorm"), labelled_line(ax, "fixup (failed: no learning)")
    assert_xy(fixup, *expected_means([r for r in records if r["baseline"] == "fixup"], L0))
    assert rgb(fixup.get_color()) == rgb("0.75") and fixup.get_linestyle() == "--"  # greyed out
    assert rgb(layernorm.get_color()) != rgb("0.75") and layernorm.get_linestyle() == "-"
    diamonds = {}  # held-out points: hollow diamonds edged in the line's colour
    for coll in ax.collections:
        if len(coll.get_offsets()) == 1 and not np.any(coll.get_facecolor()[:, 3] > 0):
            diamonds[rgb(coll.get_edgecolor()[0])] = [float(v) for v in coll.get_offsets()[0]]
    assert diamonds == {rgb(layernorm.get_color()): [1e-3, 2.3], rgb("0.75"): [1e-4, 4.1]}
    assert sorted(hlines(ax)) == sorted([(L0, "--"), (4.5, ":")])
    assert legend_texts(fig) == ["layernorm", "fixup (failed: no learning)", "individual seeds",
                                 "diverged (at l0)", f"l0 (diverged) = {L0:.3g}", "held-out seeds at the chosen LR",
                                 "trivial (constant predictor) = 4.5"]


def test_loss_vs_lr_one_panel_per_axis_value_with_axis_free_baselines_in_each(draw: Draw, tmp_path: Path) -> None:
    axis = "dyt.alpha_init"
    records = make_records(with_axis=True)
    fig = draw(records, make_rows(records, [axis]), L0, tmp_path, axes=[axis])["loss_vs_lr.png"]
    panels = fig.axes
    assert [ax.get_title() for ax in panels] == [f"{axis} = 0.5", f"{axis} = 1"]
    names = ["layernorm", "fixup", "dyt"]
    assert legend_texts(fig)[:3] == names  # each baseline once, in record order
    color = {name: rgb(labelled_line(panels[0], name).get_color()) for name in names}
    for ax, value in zip(panels, (0.5, 1.0), strict=True):
        assert ax.get_xscale() == "log" and ax.get_xlabel() == "learning rate"
        mine = [r for r in records if r[axis] is None or r[axis] == value]
        lines = {rgb(ln.get_color()): ln for ln in data_lines(ax)}
        assert set(lines) == set(color.values())
        for name in names:
            assert_xy(lines[color[name]], *expected_means([r for r in mine if r["baseline"] == name], L0))
        diverged = [(r["lr"], L0) for r in mine if r["diverged"]]
        assert points(ax, "tab:red") == sorted(diverged)
    assert panels[0].get_ylabel() == "final val loss (capped at l0)" and panels[1].get_ylabel() == ""


def test_loss_vs_lr_one_line_per_cell_of_the_other_axes(draw: Draw, tmp_path: Path) -> None:
    records = [make_record("dyt", lr, s, a=1.0, b=b) for lr in LRS for s in SEEDS for b in ("x", "y")]
    records[0]["diverged"] = True
    fig = draw(records, [], L0, tmp_path, axes=["a", "b"])["loss_vs_lr.png"]
    (ax,) = fig.axes
    assert ax.get_title() == "a = 1"
    styles = []
    for b in ("x", "y"):
        line = labelled_line(ax, f"dyt (b={b})")
        assert_xy(line, *expected_means([r for r in records if r["b"] == b], L0))
        styles.append(line.get_linestyle())
    assert styles == ["-", "--"]


def test_loss_vs_lr_spreads_many_axis_values_over_six_panels(draw: Draw, tmp_path: Path) -> None:
    values = [round(0.1 * k, 1) for k in range(1, 10)]
    records = [make_record("dyt", lr, 0, a=v) for lr in LRS[:2] for v in values]
    figs = draw(records, [], L0, tmp_path, axes=["a"])
    titles = [ax.get_title() for ax in figs["loss_vs_lr.png"].axes]
    shown = [float(t.removeprefix("a = ")) for t in titles]
    assert len(shown) == 6 and shown == sorted(shown) and shown[0] == 0.1 and shown[-1] == 0.9
    for ax, value in zip(figs["loss_vs_lr.png"].axes, shown, strict=True):
        (line,) = data_lines(ax)
        assert_xy(line, *expected_means([r for r in records if r["a"] == value], L0))


def test_curves_panel_per_baseline_at_its_best_lr_with_every_seed(draw: Draw, tmp_path: Path) -> None:
    records = make_records()
    rows = [{"baseline": "layernorm", "best_lr": 1e-3}, {"baseline": "fixup", "best_lr": 3e-3}]
    fig = draw(records, rows, L0, tmp_path)["curves_best_lr.png"]
    assert fig.get_suptitle() == "Loss curves at each baseline's best LR (other seeds faint)"
    panels = fig.axes
    # fixup diverged in both seeds at 3e-3
    assert [ax.get_title() for ax in panels] == ["layernorm\nlr = 1e-3", "fixup\nlr = 3e-3, diverged 2/2"]
    for ax, (name, lr) in zip(panels, (("layernorm", 1e-3), ("fixup", 3e-3)), strict=True):
        seeds = sorted((r for r in records if r["baseline"] == name and r["lr"] == lr), key=lambda r: r["seed"])
        val = [ln for ln in data_lines(ax) if ln.get_marker() == "o"]
        train = [ln for ln in data_lines(ax) if ln.get_marker() in (None, "None", "")]
        assert len(val) == len(train) == len(seeds) == 2
        for kind, lines in (("val_loss", val), ("train_loss", train)):
            for line, rec in zip(lines, seeds, strict=True):
                finite = [(p["step"], p[kind]) for p in rec["curve"] if math.isfinite(p[kind])]
                assert_xy(line, [s for s, _ in finite], [v for _, v in finite])
        assert all(rgb(ln.get_color()) == rgb("black") for ln in val)
        assert val[0].get_alpha() > val[1].get_alpha()  # the first seed opaque, the others faint
        assert hlines(ax) == [(L0, "--")]
        assert ax.get_xlabel() == "step"
    assert panels[0].get_ylabel() == "loss"
    assert legend_texts(fig) == ["train loss", "val loss", f"l0 = {L0:.3g}"]


def test_heatmap_cells_are_mean_capped_losses_missing_cells_grey(draw: Draw, tmp_path: Path) -> None:
    lrs, alphas = [1e-4, 1e-3, 1e-2], [0.5, 1.0, 2.0]
    records = [make_record("layernorm", lr, s, alpha=None) for lr in lrs for s in SEEDS]  # no panel: no axis
    for alpha in alphas:
        for lr in lrs:
            if (alpha, lr) == (2.0, 1e-2):
                continue  # a missing cell (no trial finished there)
            records += [make_record("dyt", lr, s, diverged=(alpha, lr) == (1.0, 1e-2), alpha=alpha) for s in SEEDS]
    records[-1]["final_val_loss"] = 9.0  # above l0: capped
    half = next(r for r in records if (r["baseline"], r["alpha"], r["lr"], r["seed"]) == ("dyt", 0.5, 1e-2, 0))
    half["diverged"] = True  # one of two seeds diverged: a number, not "div"
    fig = draw(records, [], L0, tmp_path, axes=["alpha"])["heatmap_alpha.png"]
    assert fig.get_suptitle() == "Stability map: learning rate x alpha"
    ax, bar = fig.axes  # one panel (only dyt has the axis) and its colour bar
    assert ax.get_title() == "dyt" and bar.get_ylabel() == "mean capped val loss"
    assert ax.get_xlabel() == "learning rate" and ax.get_ylabel() == "alpha"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1e-4", "1e-3", "1e-2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0.5", "1", "2"]
    (image,) = ax.images
    cells = image.get_array()
    assert cells.shape == (3, 3)  # rows: alpha ascending (origin lower), columns: LR ascending
    expected = np.full((3, 3), np.nan)
    for i, alpha in enumerate(alphas):
        for j, lr in enumerate(lrs):
            here = [r for r in records if r["baseline"] == "dyt" and r["alpha"] == alpha and r["lr"] == lr]
            if here:
                expected[i, j] = sum(capped(r, L0) for r in here) / len(here)
    assert np.ma.getmaskarray(cells).tolist() == np.isnan(expected).tolist()
    assert np.ma.filled(cells, np.nan) == pytest.approx(expected, nan_ok=True)
    colours = image.to_rgba(cells)
    assert tuple(colours[2, 2]) == pytest.approx(to_rgba("0.9"))  # the missing cell is greyed out
    assert all(tuple(colours[i, j]) != pytest.approx(to_rgba("0.9")) for i in range(3) for j in range(3) if (i, j)
               != (2, 2))
    assert image.norm.vmax == pytest.approx(L0)
    assert tuple(colours[1, 2]) == pytest.approx(tuple(image.cmap(1.0)))  # all diverged: l0, the top colour
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in ax.texts}
    assert (2, 2) not in texts and texts[(2, 1)] == "div"
    assert {k: v for k, v in texts.items() if k != (2, 1)} == {
        (j, i): f"{expected[i, j]:.2f}" for i in range(3) for j in range(3) if (i, j) not in {(2, 2), (1, 2)}}


def test_heatmap_holds_other_axes_at_their_first_value(draw: Draw, tmp_path: Path) -> None:
    records = [make_record("dyt", lr, 0, a=a, b=b, diverged=(a, b, lr) == (2.0, "x", LRS[0]))
               for lr in LRS[:2] for a in (1.0, 2.0) for b in ("y", "x")]
    figs = draw(records, [], L0, tmp_path, axes=["a", "b"])

    def cell(a: float, b: str, lr: float) -> float:
        (rec,) = [r for r in records if (r["a"], r["b"], r["lr"]) == (a, b, lr)]
        return capped(rec, L0)

    ax = figs["heatmap_a.png"].axes[0]
    assert ax.get_title() == "dyt (b=x)"  # "x" sorts before "y"
    cells = np.ma.filled(ax.images[0].get_array(), np.nan)
    assert cells == pytest.approx(np.array([[cell(a, "x", lr) for lr in LRS[:2]] for a in (1.0, 2.0)]))
    ax = figs["heatmap_b.png"].axes[0]
    assert ax.get_title() == "dyt (a=1)"
    cells = np.ma.filled(ax.images[0].get_array(), np.nan)
    assert cells == pytest.approx(np.array([[cell(1.0, b, lr) for lr in LRS[:2]] for b in ("x", "y")]))
    # the colour scale tops out at l0 even when no cell of the map reaches it
    assert cells.max() < L0 and ax.images[0].norm.vmax == pytest.approx(L0)


def test_sensitivity_bars_least_sensitive_on_top_failed_cells_grey(draw: Draw, tmp_path: Path) -> None:
    rows = [{"baseline": "layernorm", "verdict": "trained", "best_lr": 1e-3, "lr_sensitivity": 0.5},
            {"baseline": "fixup", "verdict": "trained", "best_lr": 1e-3, "lr_sensitivity": 0.1},
            {"baseline": "dyt", "verdict": "failed: diverged", "best_lr": 1e-3, "lr_sensitivity": None},
            {"baseline": "nf", "verdict": "trained", "best_lr": 1e-3, "lr_sensitivity": None}]
    records = [make_record(name, 1e-3, 0) for name in ("layernorm", "fixup", "dyt", "nf")]
    fig = draw(records, rows, L0, tmp_path)["lr_sensitivity.png"]
    (ax,) = fig.axes
    bars = sorted(ax.patches, key=lambda p: -p.get_y())  # top first
    labels = {round(y): t.get_text() for y, t in zip(ax.get_yticks(), ax.get_yticklabels(), strict=True)}
    top_down = [labels[round(p.get_y() + p.get_height() / 2)] for p in bars]
    assert top_down == ["fixup", "layernorm", "dyt", "nf"]
    assert [p.get_width() for p in bars[:2]] == pytest.approx([0.1, 0.5])
    assert all(rgb(p.get_facecolor()) == rgb("0.75") for p in bars[2:])  # grey stubs, not ranked
    assert all(rgb(p.get_facecolor()) != rgb("0.75") for p in bars[:2])
    assert bars[2].get_width() < 0.1 and bars[3].get_width() < 0.1
    texts = sorted(((t.get_position()[1], t.get_text()) for t in ax.texts), reverse=True)
    assert [t for _, t in texts] == ["0.100", "0.500", "failed: diverged: not ranked",
                                     "grid misses the window: not ranked"]
    assert ax.get_title() == "Learning-rate sensitivity of the trained cells"
    assert ax.get_xlabel().startswith("LR sensitivity")


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
    for path in paths:
        assert_png(path)


def test_empty_records_return_nothing(tmp_path: Path) -> None:
    out = tmp_path / "none"
    assert plots.plot_all([], [], L0, out) == []
    assert not out.exists()


def test_rows_without_sensitivity_and_nan_curves(draw: Draw, tmp_path: Path) -> None:
    """No lr_sensitivity key -> no bar chart; an all-NaN curve is skipped without warnings."""
    records = make_records()
    for rec in records:
        if rec["baseline"] == "fixup":
            rec["curve"] = [
                {"step": float(i), "train_loss": math.nan, "val_loss": math.nan, "grad_norm": math.nan}
                for i in range(10)
            ]
    rows = [{k: v for k, v in r.items() if k != "lr_sensitivity"} for r in make_rows(records, [])]
    figs = draw(records, rows, L0, tmp_path)
    assert sorted(figs) == ["curves_best_lr.png", "loss_vs_lr.png"]
    assert [ax.get_title().split("\n")[0] for ax in figs["curves_best_lr.png"].axes] == ["layernorm"]
    # with no curves at all and no rows, only the loss-vs-LR figure remains
    for rec in records:
        rec["curve"] = []
    assert list(draw(records, [], L0, tmp_path / "b")) == ["loss_vs_lr.png"]


def test_single_lr_and_all_diverged(draw: Draw, tmp_path: Path) -> None:
    """One LR in the whole sweep; nf diverges everywhere; dyt diverges in every cell of its axis."""
    records = [make_record("layernorm", 1e-3, s, alpha=None) for s in SEEDS]
    records += [make_record("nf", 1e-3, s, diverged=True, alpha=None) for s in SEEDS]
    records += [make_record("dyt", 1e-3, s, diverged=True, alpha=a) for s in SEEDS for a in (0.5, 1.0)]
    paths = run_strict(records, make_rows(records, ["alpha"]), L0, tmp_path / "png", axes=["alpha"])
    for path in paths:
        assert_png(path, min_bytes=2_000)
    figs = draw(records, make_rows(records, ["alpha"]), L0, tmp_path, axes=["alpha"])
    assert set(figs) == {"loss_vs_lr.png", "curves_best_lr.png", "heatmap_alpha.png", "lr_sensitivity.png"}
    panels = figs["loss_vs_lr.png"].axes
    color = {name: rgb(labelled_line(panels[0], name).get_color()) for name in ("layernorm", "nf", "dyt")}
    layernorm = expected_means([r for r in records if r["baseline"] == "layernorm"], L0)
    for ax in panels:
        lines = {rgb(ln.get_color()): ln for ln in data_lines(ax)}
        assert_xy(lines[color["layernorm"]], *layernorm)
        assert_xy(lines[color["nf"]], [1e-3], [L0])
        assert_xy(lines[color["dyt"]], [1e-3], [L0])
        lo, hi = ax.get_xlim()
        assert lo < 1e-3 < hi  # a single LR still gets a log range around it
    heat = figs["heatmap_alpha.png"].axes[0]
    assert [t.get_text() for t in heat.texts] == ["div", "div"]
    assert np.ma.filled(heat.images[0].get_array(), np.nan).tolist() == [[L0], [L0]]


def test_many_axis_values_capped_and_no_figure_leak(tmp_path: Path) -> None:
    values = [0.1 * k for k in range(1, 10)]  # 9 values -> at most 6 panels
    records = [make_record("dyt", lr, 0, a=v) for lr in LRS[:2] for v in values]
    paths = run_strict(records, [], L0, tmp_path, axes=["a"])  # run_strict also checks for leaked figures
    assert "heatmap_a.png" in {p.name for p in paths}
