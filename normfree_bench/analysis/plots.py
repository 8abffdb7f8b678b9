"""The figures of ``normfree-bench analyze`` (PNG, written atomically into RUN_DIR/plots/).

Usage: ``plot_analysis(analysis, s_curves, trials, curves, diagnostics, run_dir / "plots")``

- ``analysis_s_curves_<baseline>.png``: each norm site's input against its output on one validation
  batch, one panel per site and layer (DyT paper Fig. 1): a norm draws a cloud, a point-wise
  function an S-curve, an identity site a line;
- ``analysis_alpha_vs_inv_std.png``: every learnable ``alpha`` against 1/std of its site's input
  over training, one panel per baseline that has one, Pearson's r in the title (DyT paper Fig. 8);
- ``analysis_curves_above_best.png``: validation loss against step at each baseline's best LR and
  the two grid LRs above it (the tuning playbook's instability view);
- ``analysis_diagnostics.png``: the diagnostics of each best trial over training: max attention
  logit, output log Z, final residual RMS, and the token-mean/spread ratio at the final site;
- ``analysis_outliers.png``: kurtosis and max/RMS of every norm site's input, by depth;
- ``analysis_ptq.png``: the validation-loss increase of each simulated quantization over fp32;
- ``analysis_invariance_<baseline>.png`` (``analyze --invariance``): the output's relative change against c
  for each rescaling (weights, input) at init and trained, and the loss difference of the trial retrained
  with its data rescaled by c.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from normfree_bench.tables.plots import baseline_colors, sanitize_name, save_figure, subplot_grid

MAX_POINTS = 2000  # per S-curve panel


def finish(fig: Figure, title: str, path: Path) -> Path:
    """Title, tighten, save atomically and close ``fig``; return ``path``."""
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def _order(entries: Sequence[dict[str, Any]]) -> list[str]:
    """Baselines in the order the analysis lists them (the run's baseline order, reference first)."""
    return list(dict.fromkeys(e["baseline"] for e in entries))


def plot_s_curves(baseline: str, io: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]], out_dir: Path) -> Path:
    sites = sorted(io)
    fig = plt.figure(figsize=(3.2 * min(3, len(sites)), 2.8 * math.ceil(len(sites) / 3)))
    gen = torch.Generator().manual_seed(0)
    for ax, key in zip(subplot_grid(fig, len(sites)), sites):
        x, y = (t.reshape(-1) for t in io[key])
        pick = torch.randperm(x.numel(), generator=gen)[:MAX_POINTS]
        ax.scatter(x[pick].numpy(), y[pick].numpy(), s=2, alpha=0.4, rasterized=True)
        ax.set_title(f"layer {key[0]} {key[1]}", fontsize=9)
        ax.set_xlabel("input", fontsize=8)
        ax.set_ylabel("output", fontsize=8)
    return finish(fig, f"{baseline}: norm-site input vs output (one validation batch)",
                  out_dir / f"analysis_s_curves_{sanitize_name(baseline)}.png")


def plot_alpha_vs_inv_std(entries: Sequence[dict[str, Any]], out_dir: Path) -> Path | None:
    with_alpha = [e for e in entries if e["alpha_vs_inv_std"]]
    if not with_alpha:
        return None
    fig = plt.figure(figsize=(4.2 * min(3, len(with_alpha)), 3.6 * math.ceil(len(with_alpha) / 3)))
    for ax, entry in zip(subplot_grid(fig, len(with_alpha)), with_alpha):
        sites = {k: v for k, v in entry["alpha_vs_inv_std"].items() if k != "pooled"}
        cmap = plt.get_cmap("viridis")
        for i, (name, points) in enumerate(sites.items()):
            ax.plot(points["inv_std"], points["alpha"], "o-", ms=3, lw=0.8, color=cmap(i / max(1, len(sites) - 1)),
                    label=name)
        r = entry["alpha_vs_inv_std"].get("pooled", {}).get("r", math.nan)
        ax.set_title(f"{entry['baseline']} lr={entry['lr']:.2g}: pooled r = {r:.2f}", fontsize=9)
        ax.set_xlabel("1 / std(site input)")
        ax.set_ylabel("alpha")
        ax.legend(fontsize=6, ncol=2)
    return finish(fig, "alpha against 1/std of its input over training (DyT paper Fig. 8)",
                  out_dir / "analysis_alpha_vs_inv_std.png")


def plot_curves_above_best(entries: Sequence[dict[str, Any]], trials: Sequence[dict[str, Any]],
                           curves: Sequence[dict[str, Any]], out_dir: Path, above: int = 2) -> Path | None:
    best = {e["baseline"]: e for e in entries}
    names = _order(entries)
    if not names:
        return None
    by_trial: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for point in curves:
        value = point.get("val_loss")
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            by_trial[point["trial"]].append((int(point["step"]), float(value)))
    fig = plt.figure(figsize=(4.2 * min(3, len(names)), 3.4 * math.ceil(len(names) / 3)))
    for ax, name in zip(subplot_grid(fig, len(names), sharey=True), names):
        b = best[name]
        same = [t for t in trials if t["baseline"] == name and t["seed"] == b["seed"] and t["status"] == "COMPLETE"]
        higher = sorted({t["lr"] for t in same if t["lr"] > b["lr"]})[:above]
        for lr, style in [(b["lr"], "-"), *((lr, "--") for lr in higher)]:
            for t in (t for t in same if t["lr"] == lr):
                pts = sorted(by_trial.get(t["trial"], []))
                if pts:
                    label = f"lr={lr:.2g}" + (" (best)" if lr == b["lr"] else "") + (" diverged" if t.get("diverged")
                                                                                     else "")
                    ax.plot(*zip(*pts), style, marker="o", ms=3, label=label)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss")
        ax.legend(fontsize=7)
    return finish(fig, "validation loss at the best LR and the LRs just above it",
                  out_dir / "analysis_curves_above_best.png")


def _series(diagnostics: Sequence[dict[str, Any]], trial: str, metric: str, site: str | None = None,
            reduce: Any = max) -> tuple[list[int], list[float]]:
    by_step: dict[int, list[float]] = defaultdict(list)
    for d in diagnostics:
        if d["trial"] == trial and d["metric"] == metric and (site is None or d["site"] == site):
            by_step[int(d["step"])].append(float(d["value"]))
    steps = sorted(by_step)
    return steps, [reduce(by_step[s]) for s in steps]


def plot_diagnostics(entries: Sequence[dict[str, Any]], diagnostics: Sequence[dict[str, Any]],
                     out_dir: Path) -> Path | None:
    names = _order(entries)
    best = {e["baseline"]: e["trial"] for e in entries}
    colors = baseline_colors(names)
    views = [("max attention logit (max over layers)", "max_attn_logit", None, max, "linear"),
             ("output log Z (mean)", "log_z", "model", max, "linear"),
             ("residual RMS entering the final site", "rms", "final", max, "log"),
             ("saturated fraction, mean over point-wise sites", "saturation", None, np.mean, "linear")]
    fig = plt.figure(figsize=(11, 7.5))
    drawn = 0
    for ax, (title, metric, site, reduce, scale) in zip(subplot_grid(fig, len(views), max_cols=2), views):
        for name in names:
            steps, values = _series(diagnostics, best[name], metric, site, reduce)
            if steps:
                ax.plot(steps, values, marker="o", ms=3, color=colors[name], label=name)
                drawn += 1
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_yscale(scale)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if not drawn:
        plt.close(fig)
        return None
    return finish(fig, "numerical diagnostics over training (best trial of each baseline)",
                  out_dir / "analysis_diagnostics.png")


def plot_outliers(entries: Sequence[dict[str, Any]], out_dir: Path) -> Path:
    names = _order(entries)
    best = {e["baseline"]: e for e in entries}
    colors = baseline_colors(names)
    fig, axs = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        sites = best[name]["outliers"]["per_site"]
        labels = [f"{s['layer']}.{s['site']}" for s in sites]
        for ax, key in zip(axs, ("kurtosis", "max_over_rms")):
            ax.plot(range(len(sites)), [s[key] for s in sites], marker="o", ms=3, color=colors[name], label=name)
            ax.set_xticks(range(len(sites)), labels, rotation=60, fontsize=7)
    axs[0].set_ylabel("excess kurtosis of the site input")
    axs[0].set_yscale("symlog")
    axs[1].set_ylabel("max |x| / RMS of the site input")
    axs[1].legend(fontsize=7)
    return finish(fig, "activation outliers at every norm site (one validation batch)",
                  out_dir / "analysis_outliers.png")


def plot_ptq(entries: Sequence[dict[str, Any]], out_dir: Path) -> Path:
    names = _order(entries)
    best = {e["baseline"]: e for e in entries}
    schemes = [k for k in best[names[0]]["ptq"] if k != "fp32"]
    width = 0.8 / max(1, len(schemes))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(names)), 4))
    for i, scheme in enumerate(schemes):
        deltas = [best[n]["ptq"].get(scheme) for n in names]
        values = [(d - best[n]["ptq"]["fp32"]) if d is not None else np.nan for d, n in zip(deltas, names)]
        ax.bar(np.arange(len(names)) + i * width, values, width, label=scheme)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(np.arange(len(names)) + width * (len(schemes) - 1) / 2, names)
    ax.set_ylabel("validation loss increase over fp32 (nats)")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.legend(fontsize=8)
    return finish(fig, "simulated post-training quantization", out_dir / "analysis_ptq.png")


def plot_invariance(entry: dict[str, Any], out_dir: Path) -> Path | None:
    """One baseline's rescaling invariance: output change against c, and the retrained loss difference."""
    inv = entry.get("invariance")
    if not inv:
        return None
    fig, axs = plt.subplots(1, 2, figsize=(11, 4))
    for when, style in (("init", "--"), ("trained", "-")):
        for kind, marker in (("weights", "o"), ("input", "s")):
            by_c = inv.get(when, {}).get(kind, {})
            cs = sorted(by_c, key=float)
            axs[0].plot([float(c) for c in cs], [by_c[c]["rel_change"] for c in cs], style, marker=marker, ms=4,
                        label=f"{kind} rescaled, {when}")
    axs[0].axhline(0.0, color="0.6", lw=0.8)
    axs[0].set_xscale("log")
    axs[0].set_yscale("symlog", linthresh=1e-4)
    axs[0].set_xlabel("c")
    axs[0].set_ylabel("||f_c - f|| / ||f|| of the logits")
    axs[0].legend(fontsize=7)
    retrained = inv.get("retrained", {})
    if retrained:
        cs = sorted(retrained, key=float)
        axs[1].plot([float(c) for c in cs], [retrained[c]["delta"] for c in cs], marker="o", color="black")
        for c in cs:
            if retrained[c].get("diverged"):
                axs[1].annotate("diverged", (float(c), retrained[c]["delta"]), fontsize=7, color="red")
        axs[1].axhline(0.0, color="0.6", lw=0.8)
    else:
        axs[1].text(0.5, 0.5, "not retrained (not a best trial)", ha="center", va="center", transform=axs[1].transAxes)
    axs[1].set_xscale("log")
    axs[1].set_xlabel("c (data rescaled, retrained from scratch)")
    axs[1].set_ylabel("final val loss - the trial's (nats)")
    return finish(fig, f"{entry['baseline']}: rescaling invariance",
                  out_dir / f"analysis_invariance_{sanitize_name(entry['baseline'])}.png")


def plot_analysis(analysis: dict[str, Any], s_curves: dict[str, dict], trials: Sequence[dict[str, Any]],
                  curves: Sequence[dict[str, Any]], diagnostics: Sequence[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Every analysis figure; returns the paths written. Uses the best entry per baseline."""
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = analysis["trials"]
    best: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e["baseline"] not in best or e["val_loss"] < best[e["baseline"]]["val_loss"]:
            best[e["baseline"]] = e
    chosen = list(best.values())
    paths = [plot_s_curves(name, io, out_dir) for name, io in s_curves.items()]
    paths += [plot_outliers(chosen, out_dir), plot_ptq(chosen, out_dir)]
    for path in (plot_alpha_vs_inv_std(chosen, out_dir), plot_curves_above_best(chosen, trials, curves, out_dir),
                 plot_diagnostics(chosen, diagnostics, out_dir), *(plot_invariance(e, out_dir) for e in chosen)):
        if path is not None:
            paths.append(path)
    return paths
