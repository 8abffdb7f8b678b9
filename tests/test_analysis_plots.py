"""The figures of ``normfree-bench analyze`` (normfree_bench.analysis.plots), checked through their artists.

`plot_analysis` runs on a synthetic analysis (two baselines, hand-chosen numbers) while
``Figure.savefig`` is replaced by a stub that keeps each Figure; the tests read line data, scatter
offsets, bar heights, scales, titles and legends back and compare them with values computed here from
the inputs.

Run: ``.venv/bin/python -m pytest -q tests/test_analysis_plots.py``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from normfree_bench.analysis import plots as aplots

SITES = [(0, "attn"), (0, "mlp"), (1, "attn")]


def per_site(kurtosis: list[float], ratio: list[float]) -> list[dict[str, Any]]:
    return [{"layer": layer, "site": site, "kurtosis": k, "max_over_rms": r}
            for (layer, site), k, r in zip(SITES, kurtosis, ratio, strict=True)]


def entry(baseline: str, trial: str, lr: float, val_loss: float, *, ptq: dict[str, float | None],
          outliers: list[dict[str, Any]], alpha: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"baseline": baseline, "trial": trial, "lr": lr, "seed": 0, "val_loss": val_loss,
            "outliers": {"per_site": outliers}, "ptq": ptq, "alpha_vs_inv_std": alpha or {}}


ALPHA = {"0.attn": {"inv_std": [0.5, 0.8, 1.1], "alpha": [0.4, 0.6, 0.9], "r": 0.99},
         "0.mlp": {"inv_std": [0.7, 0.6], "alpha": [1.0, 1.2], "r": -1.0},
         "pooled": {"r": 0.8765}}

ENTRIES = [
    entry("layernorm", "ln-0", 1e-3, 2.0, ptq={"fp32": 2.0, "int8": 2.01, "int4": 2.5, "fp8": None},
          outliers=per_site([1.0, 5.0, 20.0], [3.0, 6.0, 9.0])),
    entry("layernorm", "ln-1", 3e-3, 2.6, ptq={"fp32": 2.6, "int8": 9.0, "int4": 9.0, "fp8": None},
          outliers=per_site([100.0, 100.0, 100.0], [50.0, 50.0, 50.0])),  # not the best: never drawn
    entry("dyt", "dyt-0", 1e-3, 2.4, ptq={"fp32": 2.4, "int8": 2.45, "int4": 2.9, "fp8": 2.41},
          outliers=per_site([0.5, -0.2, 2.0], [2.5, 2.8, 4.0]), alpha=ALPHA),
]
BEST = {"layernorm": ENTRIES[0], "dyt": ENTRIES[2]}  # lowest val_loss of each baseline

# Trials of the sweep: layernorm seed 0 at its best LR 1e-3 and four higher LRs (only the next two count),
# a lower LR, another seed and a failed trial; dyt at 1e-3 and one higher LR that diverged.
TRIALS = [
    {"trial": "ln-0", "baseline": "layernorm", "seed": 0, "lr": 1e-3, "status": "COMPLETE", "diverged": False},
    {"trial": "ln-1", "baseline": "layernorm", "seed": 0, "lr": 3e-3, "status": "COMPLETE", "diverged": False},
    {"trial": "ln-2", "baseline": "layernorm", "seed": 0, "lr": 1e-2, "status": "COMPLETE", "diverged": True},
    {"trial": "ln-3", "baseline": "layernorm", "seed": 0, "lr": 3e-2, "status": "COMPLETE", "diverged": True},
    {"trial": "ln-4", "baseline": "layernorm", "seed": 0, "lr": 3e-4, "status": "COMPLETE", "diverged": False},
    {"trial": "ln-5", "baseline": "layernorm", "seed": 1, "lr": 3e-3, "status": "COMPLETE", "diverged": False},
    {"trial": "ln-6", "baseline": "layernorm", "seed": 0, "lr": 5e-3, "status": "FAIL", "diverged": False},
    {"trial": "dyt-0", "baseline": "dyt", "seed": 0, "lr": 1e-3, "status": "COMPLETE", "diverged": False},
    {"trial": "dyt-1", "baseline": "dyt", "seed": 0, "lr": 1e-2, "status": "COMPLETE", "diverged": True},
]


def val_curve(trial: str) -> list[tuple[int, float]]:
    """A distinct validation curve per trial, the points listed out of step order, one NaN point."""
    k = int(trial.split("-")[1]) + (10 if trial.startswith("dyt") else 0)
    return [(20, 3.0 + 0.1 * k), (0, 5.0 + 0.1 * k), (10, math.nan), (30, 2.5 + 0.1 * k)]


CURVES = [{"trial": t["trial"], "step": step, "val_loss": value} for t in TRIALS for step, value in
          val_curve(t["trial"])]


def diag(trial: str, step: int, metric: str, site: str, value: float, layer: int | None = 0) -> dict[str, Any]:
    return {"trial": trial, "step": step, "layer": layer, "site": site, "metric": metric, "value": value}


DIAGNOSTICS = [
    # layernorm's best trial: two layers' attention logits per step (max drawn), log Z, final RMS
    diag("ln-0", 10, "max_attn_logit", "attn", 3.0), diag("ln-0", 10, "max_attn_logit", "attn", 5.0, layer=1),
    diag("ln-0", 20, "max_attn_logit", "attn", 4.0), diag("ln-0", 20, "max_attn_logit", "attn", 1.0, layer=1),
    diag("ln-0", 10, "log_z", "model", 0.5, layer=None), diag("ln-0", 20, "log_z", "model", 0.7, layer=None),
    diag("ln-0", 10, "rms", "final", 2.0), diag("ln-0", 10, "rms", "attn", 99.0),  # not the final site
    diag("ln-0", 20, "rms", "final", 3.0),
    diag("ln-1", 10, "max_attn_logit", "attn", 77.0),  # not a best trial
    # dyt's best trial: saturation at two sites (mean drawn) and its attention logits
    diag("dyt-0", 10, "saturation", "attn", 0.1), diag("dyt-0", 10, "saturation", "mlp", 0.3),
    diag("dyt-0", 20, "saturation", "attn", 0.2), diag("dyt-0", 20, "saturation", "mlp", 0.6),
    diag("dyt-0", 20, "max_attn_logit", "attn", 8.0),
]

N_POINTS = 3000  # more than MAX_POINTS: the S-curve panels subsample


def s_curve_io() -> dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    io = {}
    for k, key in enumerate(SITES):
        x = torch.randn(2, N_POINTS // 2, generator=gen) * (k + 1)
        io[key] = (x, torch.tanh(x) * (k + 1))
    return io


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Figure]:
    """Every figure of `plot_analysis` on the synthetic analysis, by file name (saved as stubs)."""
    saved: list[Figure] = []

    def savefig(self: Figure, fname: Any, *args: Any, **kwargs: Any) -> None:
        saved.append(self)
        Path(fname).write_bytes(b"\x89PNG stub")

    before = set(plt.get_fignums())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", savefig)
        paths = aplots.plot_analysis({"trials": ENTRIES}, {"layernorm": s_curve_io()}, TRIALS, CURVES, DIAGNOSTICS,
                                     tmp_path_factory.mktemp("analysis") / "plots")
    assert set(plt.get_fignums()) == before  # every figure closed
    assert len(saved) == len(paths)
    return {path.name: fig for path, fig in zip(paths, saved, strict=True)}


def lines_by_label(ax: Axes) -> dict[str, tuple[list[float], list[float]]]:
    out = {}
    for ln in ax.get_lines():
        if not ln.get_label().startswith("_"):
            xs, ys = np.asarray(ln.get_xdata(), float), np.asarray(ln.get_ydata(), float)
            out[ln.get_label()] = (xs.tolist(), ys.tolist())
    return out


def test_every_figure_is_written(figures: dict[str, Figure]) -> None:
    assert sorted(figures) == sorted(["analysis_s_curves_layernorm.png", "analysis_outliers.png", "analysis_ptq.png",
                                      "analysis_alpha_vs_inv_std.png", "analysis_curves_above_best.png",
                                      "analysis_diagnostics.png"])


def test_s_curves_plot_real_input_output_pairs_per_site(figures: dict[str, Figure]) -> None:
    fig = figures["analysis_s_curves_layernorm.png"]
    assert fig.get_suptitle() == "layernorm: norm-site input vs output (one validation batch)"
    assert [ax.get_title() for ax in fig.axes] == ["layer 0 attn", "layer 0 mlp", "layer 1 attn"]
    io = s_curve_io()
    for ax, key in zip(fig.axes, SITES, strict=True):
        (coll,) = ax.collections
        xy = np.asarray(coll.get_offsets(), dtype=float)
        assert xy.shape == (aplots.MAX_POINTS, 2)  # subsampled from N_POINTS
        k = SITES.index(key) + 1
        assert xy[:, 1] == pytest.approx(np.tanh(xy[:, 0]) * k, abs=1e-6)  # each point an (input, output) pair
        inputs = set(io[key][0].reshape(-1).tolist())
        assert all(x in inputs for x in xy[:, 0].tolist()) and len(set(xy[:, 0].tolist())) == aplots.MAX_POINTS
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("input", "output")


def test_alpha_against_inverse_std_one_line_per_site(figures: dict[str, Figure]) -> None:
    fig = figures["analysis_alpha_vs_inv_std.png"]
    (ax,) = fig.axes  # layernorm has no alpha: only dyt's panel
    assert ax.get_title() == "dyt lr=0.001: pooled r = 0.88"
    assert lines_by_label(ax) == {name: (ALPHA[name]["inv_std"], ALPHA[name]["alpha"]) for name in ("0.attn", "0.mlp")}
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("1 / std(site input)", "alpha")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0.attn", "0.mlp"]


def test_curves_above_best_draw_the_best_lr_and_the_next_two_of_the_same_seed(figures: dict[str, Figure]) -> None:
    fig = figures["analysis_curves_above_best.png"]
    assert [ax.get_title() for ax in fig.axes] == ["layernorm", "dyt"]

    def expected(trial: str) -> tuple[list[float], list[float]]:
        pts = sorted((s, v) for s, v in val_curve(trial) if not math.isnan(v))
        return [float(s) for s, _ in pts], [v for _, v in pts]

    ln, dyt = fig.axes
    assert lines_by_label(ln) == {"lr=0.001 (best)": expected("ln-0"), "lr=0.003": expected("ln-1"),
                                  "lr=0.01 diverged": expected("ln-2")}
    assert lines_by_label(dyt) == {"lr=0.001 (best)": expected("dyt-0"), "lr=0.01 diverged": expected("dyt-1")}
    styles = {line.get_label(): line.get_linestyle() for line in ln.get_lines()}
    assert styles == {"lr=0.001 (best)": "-", "lr=0.003": "--", "lr=0.01 diverged": "--"}
    assert (ln.get_xlabel(), ln.get_ylabel()) == ("step", "validation loss")


def test_diagnostics_follow_each_best_trial(figures: dict[str, Figure]) -> None:
    fig = figures["analysis_diagnostics.png"]
    logits, log_z, rms, saturation = fig.axes
    assert logits.get_title() == "max attention logit (max over layers)"
    assert lines_by_label(logits) == {"layernorm": ([10.0, 20.0], [5.0, 4.0]), "dyt": ([20.0], [8.0])}
    assert lines_by_label(log_z) == {"layernorm": ([10.0, 20.0], [0.5, 0.7])}
    assert lines_by_label(rms) == {"layernorm": ([10.0, 20.0], [2.0, 3.0])}
    assert rms.get_yscale() == "log" and logits.get_yscale() == "linear"
    drawn = lines_by_label(saturation)
    assert list(drawn) == ["dyt"]  # layernorm has no point-wise site
    assert drawn["dyt"][0] == [10.0, 20.0] and drawn["dyt"][1] == pytest.approx([0.2, 0.4])  # mean over sites
    colours = {line.get_label(): line.get_color() for line in logits.get_lines()}
    assert colours["layernorm"] != colours["dyt"]


def test_outliers_by_site_for_the_best_trials(figures: dict[str, Figure]) -> None:
    fig = figures["analysis_outliers.png"]
    kurt, ratio = fig.axes
    positions = [0.0, 1.0, 2.0]
    assert lines_by_label(kurt) == {name: (positions, [s["kurtosis"] for s in BEST[name]["outliers"]["per_site"]])
                                    for name in ("layernorm", "dyt")}
    assert lines_by_label(ratio) == {
        name: (positions, [s["max_over_rms"] for s in BEST[name]["outliers"]["per_site"]]) for name in ("layernorm",
                                                                                                       "dyt")}
    assert [t.get_text() for t in kurt.get_xticklabels()] == ["0.attn", "0.mlp", "1.attn"]
    assert kurt.get_yscale() == "symlog" and ratio.get_yscale() == "linear"
    assert kurt.get_ylabel() == "excess kurtosis of the site input"


def test_ptq_bars_are_the_loss_increase_over_fp32(figures: dict[str, Figure]) -> None:
    fig = figures["analysis_ptq.png"]
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["layernorm", "dyt"]
    schemes = [t.get_text() for t in ax.get_legend().get_texts()]
    assert schemes == ["int8", "int4", "fp8"]
    bars = sorted(ax.patches, key=lambda p: p.get_x())
    heights = [p.get_height() for p in bars]
    # bars ordered by x: for each baseline, its schemes side by side
    expected = []
    for name in ("layernorm", "dyt"):
        for scheme in schemes:
            value = BEST[name]["ptq"][scheme]
            expected.append(math.nan if value is None else value - BEST[name]["ptq"]["fp32"])
    assert heights == pytest.approx(expected, nan_ok=True)
    assert ax.get_yscale() == "symlog"
    assert ax.get_ylabel() == "validation loss increase over fp32 (nats)"
