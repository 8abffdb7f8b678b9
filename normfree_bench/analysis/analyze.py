"""Numerical-stability analysis of a finished run: ``normfree-bench analyze RUN_DIR``.

Usage: ``analysis = analyze_run(Path("runs/smoke"), scope="best")``  (writes analysis.json/.csv, plots)

For the best trial of each leaderboard row (``scope="best"``: at the row's best LR, the leaderboard's
one definition of the best cell, the seed with the lowest final validation loss) or for every
COMPLETE trial (``scope="all"``), the trial is trained
again from its stored config. On a CPU this is bitwise deterministic, and the recomputed validation
loss is checked against the stored one (``reproduced``); on a GPU the difference is reported. Then:

- **activation outliers** on the first validation batch: kurtosis and max/RMS at every norm site's
  input and output, and the LLM.int8() outlier features (|x| >= 6 in >= 25% of layers and >= 6% of
  tokens) counted on the inputs of the linear layers, i.e. the attn and mlp sites' outputs;
- **post-training quantization**: validation loss with simulated int8 weights (per output channel)
  alone and with int8 activations (per tensor, per token), and with fp8 e4m3 weights and activations
  where torch has the dtype; the increase over fp32 per baseline;
- **low-precision training** (best trials only): the same trial retrained with ``bf16-mixed``, and
  with ``bf16-true`` where the device supports bf16; loss difference and divergence;
- **alpha against 1/std** (DyT paper §6.2): for every site with a learnable scalar ``alpha``, its
  value against 1/std of that site's input over training (from the diagnostics recorded at eval
  steps; for a run recorded without them, the retrained trial's), with Pearson's r per site and pooled;
- **rescaling invariance** (``--invariance``, ``--scales``): the output's change when the weights that feed
  the norm sites, or the input, are multiplied by c (default {0.1, 0.5, 2, 10}), at init and after training
  (normfree_bench.analysis.invariance); and, for the best trials, the trial retrained from scratch with its
  data rescaled by each c (``model.input_scale``: the pixels for the ViT, the token embedding's output for
  the LM), with the loss difference to the trial as trained;
- the plots of normfree_bench.analysis_plots (S-curves, curves above the best LR, diagnostics).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from tqdm import tqdm

from normfree_bench.analysis.invariance import SCALES, rescaling_invariance
from normfree_bench.analysis.plots import plot_analysis
from normfree_bench.config import RunConfig
from normfree_bench.data.task import load_data, loaders
from normfree_bench.errors import UserError
from normfree_bench.io import write_csv, write_json
from normfree_bench.models.factory import build_model
from normfree_bench.models.transformer import Transformer, task_loss
from normfree_bench.store.rundir import run_config
from normfree_bench.sweep.grid import trial_config
from normfree_bench.tables.export import read_tables
from normfree_bench.tables.leaderboard import trials_at_best_lr
from normfree_bench.training.diagnostics import DIAG_COLUMNS, DiagnosticProbe
from normfree_bench.training.numerics import (
    excess_kurtosis,
    fp8_supported,
    max_over_rms,
    outlier_dims,
    pearson,
    simulated_quantization,
)
from normfree_bench.training.train import resolve_device, train_one

SCOPES = ("best", "all")
PTQ_SCHEMES = {  # name -> (weights, activations) for numerics.simulated_quantization
    "int8_weights": ("int8", "none"),
    "int8_w_act_tensor": ("int8", "int8_tensor"),
    "int8_w_act_token": ("int8", "int8_token"),
    "fp8_e4m3": ("fp8", "fp8"),
}
LOW_PRECISIONS = ("bf16-mixed", "bf16-true")
INVARIANCE_NOTE = ("invariance: 'weights' multiplies every parameter that writes into the residual stream (embeddings, "
                   "positions, attention and MLP output projections) by c; 'input' the first embedding's weight "
                   "alone (tokens, or pixels for the ViT); rel_change = ||logits_c - logits|| / ||logits|| on the "
                   "first validation batch, at init and after training")
CSV_COLUMNS = ("baseline", "trial", "lr", "seed", "val_loss", "stored_val_loss", "reproduced", "n_outlier_dims",
               "max_kurtosis", "max_max_over_rms", *(f"ptq_{k}_delta" for k in PTQ_SCHEMES),
               *(f"{p}_delta" for p in LOW_PRECISIONS), *(f"{p}_diverged" for p in LOW_PRECISIONS), "alpha_inv_std_r",
               "invariance_weights_rel_change_c10", "invariance_input_rel_change_c10", "invariance_retrained_delta_c10")


class _KeepModel(pl.Callback):
    """Hands the trained Transformer back from `train_one`."""

    def __init__(self) -> None:
        self.model: Transformer | None = None

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.model = module.model


def choose_trials(trials: list[dict[str, Any]], rows: list[dict[str, Any]], axes: list[str],
                  scope: str) -> list[dict[str, Any]]:
    """The trial rows to analyze: every COMPLETE trial (``all``), or per leaderboard row the seed with
    the lowest final loss among the non-diverged trials at the row's best LR (``best``)."""
    if scope not in SCOPES:
        raise UserError(f"unknown scope '{scope}'; valid: {', '.join(SCOPES)}")
    if scope == "all":
        return [t for t in trials if t["status"] == "COMPLETE"]
    chosen = []
    for cell in trials_at_best_lr(rows, trials, axes):
        ok = [t for t in cell if not t.get("diverged") and t.get("final_val_loss") is not None
              and math.isfinite(t["final_val_loss"])]
        if ok:
            chosen.append(min(ok, key=lambda t: t["final_val_loss"]))
    return chosen


@torch.no_grad()
def validation_loss(model: Transformer, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Token-weighted mean cross-entropy over ``batches`` (the sweep's validation loss)."""
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        total += float(task_loss(model(x), y)) * y.numel()
        count += y.numel()
    return total / count


@torch.no_grad()
def activation_outliers(model: Transformer, batch: torch.Tensor) -> tuple[dict[str, Any], dict]:
    """Outlier statistics on one batch, and the probe's (input, output) tensors per site."""
    model.eval()
    with DiagnosticProbe(model, keep_io=True) as probe:
        model(batch)
    per_site, linear_inputs = [], []
    for (layer, site), (x, y) in sorted(probe.io.items()):
        per_site.append({"layer": layer, "site": site, "kurtosis": excess_kurtosis(x), "max_over_rms": max_over_rms(x),
                         "output_kurtosis": excess_kurtosis(y), "output_max_over_rms": max_over_rms(y)})
        if site in ("attn", "mlp"):
            linear_inputs.append(y.reshape(-1, y.shape[-1]))
    dims = outlier_dims(linear_inputs)
    finite = [s for s in per_site if math.isfinite(s["kurtosis"])]
    return {"n_outlier_dims": len(dims), "outlier_dims": dims,
            "max_kurtosis": max((s["kurtosis"] for s in finite), default=math.nan),
            "max_max_over_rms": max((s["max_over_rms"] for s in finite), default=math.nan),
            "per_site": per_site}, probe.io


def quantized_losses(model: Transformer, batches: list, fp32: float) -> dict[str, float | None]:
    """Validation loss under each simulated quantization (None where fp8 is unsupported)."""
    out: dict[str, float | None] = {"fp32": fp32}
    for name, (weights, activations) in PTQ_SCHEMES.items():
        if "fp8" in (weights, activations) and not fp8_supported():
            out[name] = None
            continue
        with simulated_quantization(model, weights=weights, activations=activations):
            out[name] = validation_loss(model, batches)
    return out


def bf16_supported(device: str) -> bool:
    return device == "cpu" or (device == "cuda" and torch.cuda.is_bf16_supported())


def low_precision_runs(cfg: RunConfig, data: Any, fp32: float) -> dict[str, dict[str, Any]]:
    """The trial retrained in bf16-mixed and bf16-true: its loss, the difference to fp32, divergence."""
    device = resolve_device(cfg.train.device)
    out: dict[str, dict[str, Any]] = {}
    for precision in LOW_PRECISIONS:
        if precision == "bf16-true" and not bf16_supported(device):
            out[precision] = {"skipped": f"{device} does not support bf16"}
            continue
        result = train_one(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=precision,
                                                                              diagnostics=False)), corpus=data)
        out[precision] = {"val_loss": result.final_val_loss, "delta": result.final_val_loss - fp32,
                          "diverged": result.diverged, "diverged_step": result.diverged_step}
    return out


def alpha_vs_inv_std(diagnostics: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per site with a learnable ``alpha``: the (1/std, alpha) points over training and Pearson's r;
    key ``pooled`` holds r over every site's points together."""
    alpha: dict[tuple, float] = {}
    std: dict[tuple, float] = {}
    for row in diagnostics:
        key = (row["layer"], row["site"], row["step"])
        if row["metric"] == "param.alpha":
            alpha[key] = float(row["value"])
        elif row["metric"] == "std":
            std[key] = float(row["value"])
    by_site: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for key in sorted(alpha, key=lambda k: (-1 if k[0] is None else k[0], k[1], k[2])):
        if key in std and std[key] > 0:
            layer, site, step = key
            by_site[f"{layer}.{site}"].append((step, 1.0 / std[key], alpha[key]))
    out: dict[str, dict[str, Any]] = {}
    for name, points in by_site.items():
        out[name] = {"r": pearson([p[1] for p in points], [p[2] for p in points]), "points": len(points),
                     "steps": [p[0] for p in points], "inv_std": [p[1] for p in points],
                     "alpha": [p[2] for p in points]}
    if out:
        pooled = [p for points in by_site.values() for p in points]
        out["pooled"] = {"r": pearson([p[1] for p in pooled], [p[2] for p in pooled]), "points": len(pooled)}
    return out


def invariance_at_init_and_trained(cfg: RunConfig, trained: Transformer, batch: tuple[torch.Tensor, torch.Tensor],
                                   scales: tuple[float, ...] = SCALES) -> dict[str, Any]:
    """`rescaling_invariance` of the trial's model at init (built as `train_one` builds it, same seed) and
    after training."""
    pl.seed_everything(cfg.train.seed, verbose=False)
    init = build_model(cfg.baseline, cfg.model, **cfg.baseline_hparams()).float().cpu()
    return {"init": rescaling_invariance(init, *batch, scales),
            "trained": rescaling_invariance(trained, *batch, scales)}


def rescaled_data_runs(cfg: RunConfig, data: Any, val_loss: float, scales: tuple[float, ...]) -> dict[str, Any]:
    """The trial trained again from scratch with its data rescaled by each c (``model.input_scale``):
    its final validation loss, the difference to the trial's, and divergence."""
    out: dict[str, Any] = {}
    for c in scales:
        model = dataclasses.replace(cfg.model, input_scale=cfg.model.input_scale * c)
        train = dataclasses.replace(cfg.train, diagnostics=False)
        result = train_one(dataclasses.replace(cfg, model=model, train=train), corpus=data)
        out[f"{c:g}"] = {"val_loss": result.final_val_loss, "delta": result.final_val_loss - val_loss,
                         "diverged": result.diverged, "diverged_step": result.diverged_step}
    return out


def analyze_trial(cfg: RunConfig, row: dict[str, Any], data: Any, diagnostics: list[dict[str, Any]],
                  low_precision: bool, invariance: bool = False, retrain_rescaled: bool = False,
                  scales: tuple[float, ...] = SCALES) -> tuple[dict[str, Any], dict]:
    """Everything measured for one trial, and its S-curve tensors."""
    keep = _KeepModel()
    result = train_one(cfg, corpus=data, callbacks=[keep])
    if keep.model is None:
        raise UserError(f"trial {row['trial']} did not train; analyze needs trials that ran")
    model = keep.model.float().cpu()
    batches = [(x.cpu(), y.cpu()) for x, y in loaders(cfg, data)[1]]
    fp32 = validation_loss(model, batches)
    stored = row.get("final_val_loss")
    outliers, io = activation_outliers(model, batches[0][0])
    entry = {"baseline": row["baseline"], "trial": row["trial"], "lr": row["lr"], "seed": row["seed"],
             "val_loss": fp32, "retrained_val_loss": result.final_val_loss, "stored_val_loss": stored,
             "reproduced": stored is not None and result.final_val_loss == stored, "outliers": outliers,
             "ptq": quantized_losses(model, batches, fp32),
             "alpha_vs_inv_std": alpha_vs_inv_std(diagnostics or [dict(zip(DIAG_COLUMNS, r))
                                                                  for r in result.diagnostics])}
    if invariance:
        entry["invariance"] = invariance_at_init_and_trained(cfg, model, batches[0], scales)
        if retrain_rescaled:
            entry["invariance"]["retrained"] = rescaled_data_runs(cfg, data, result.final_val_loss, scales)
    if low_precision:
        entry["low_precision"] = low_precision_runs(cfg, data, fp32)
    return entry, io


def csv_row(entry: dict[str, Any]) -> dict[str, Any]:
    ptq, lowp = entry["ptq"], entry.get("low_precision", {})
    row = {k: entry.get(k) for k in ("baseline", "trial", "lr", "seed", "val_loss", "stored_val_loss", "reproduced")}
    row |= {k: entry["outliers"][k] for k in ("n_outlier_dims", "max_kurtosis", "max_max_over_rms")}
    row |= {f"ptq_{k}_delta": (ptq[k] - ptq["fp32"] if ptq.get(k) is not None else None) for k in PTQ_SCHEMES}
    for p in LOW_PRECISIONS:
        row[f"{p}_delta"] = lowp.get(p, {}).get("delta")
        row[f"{p}_diverged"] = lowp.get(p, {}).get("diverged")
    row["alpha_inv_std_r"] = entry["alpha_vs_inv_std"].get("pooled", {}).get("r")
    trained = entry.get("invariance", {}).get("trained", {})
    for kind in ("weights", "input"):
        row[f"invariance_{kind}_rel_change_c10"] = trained.get(kind, {}).get("10", {}).get("rel_change")
    row["invariance_retrained_delta_c10"] = entry.get("invariance", {}).get("retrained", {}).get("10", {}).get("delta")
    return row


def analyze_run(run_dir: Path, scope: str = "best", low_precision: bool = True, storage_url: str | None = None,
                plots: bool = True, progress: bool = True, invariance: bool = False,
                scales: tuple[float, ...] | str | None = None) -> dict[str, Any]:
    """Analyze a run directory; write analysis.json, analysis.csv and plots/analysis_*.png. ``scales``: the
    factors c of ``invariance`` (default `SCALES`), each > 0."""
    if scope not in SCOPES:
        raise UserError(f"unknown scope '{scope}'; valid: {', '.join(SCOPES)}")
    scales = check_scales(scales, invariance)
    tables = read_tables(run_dir, storage_url)
    record, trials, curves, diagnostics, axes = tables.record, tables.trials, tables.curves, tables.diagnostics, \
        tables.axes
    chosen = choose_trials(trials, tables.rows, axes, scope)
    if not chosen:
        raise UserError(f"{run_dir} has no completed, non-diverged trial to analyze; run or resume the sweep first")
    cfg = run_config(record)
    data = load_data(cfg)
    diag_by_trial: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in diagnostics:
        diag_by_trial[d["trial"]].append(d)
    best = {t["trial"] for t in choose_trials(trials, tables.rows, axes, "best")}
    entries, s_curves = [], {}
    for row in tqdm(chosen, desc="analyze", unit="trial", disable=not progress):
        params = {"lr": row["lr"], "seed": row["seed"], **{a: row[a] for a in axes if row.get(a) is not None}}
        trial_cfg = trial_config(cfg, row["baseline"], params)
        entry, io = analyze_trial(trial_cfg, row, data, diag_by_trial[row["trial"]],
                                  low_precision=low_precision and row["trial"] in best, invariance=invariance,
                                  retrain_rescaled=invariance and row["trial"] in best, scales=scales)
        entries.append(entry)
        if row["trial"] in best or row["baseline"] not in s_curves:
            s_curves[row["baseline"]] = io
    analysis = {"run_name": record.get("run_name"), "scope": scope, "device": resolve_device(cfg.train.device),
                "batch": {"sequences": cfg.data.batch_size, "tokens": cfg.data.batch_size * cfg.model.n_tokens},
                "fp8_supported": fp8_supported(), "trials": entries,
                "notes": [
                    "outlier features follow LLM.int8(): |x| >= 6 in >= 25% of layers and >= 6% of tokens, counted "
                    "on the inputs of the attention and MLP linear layers (the attn and mlp norm sites' outputs)",
                    "PTQ is simulated (quantize, then dequantize) on every nn.Linear; embeddings stay fp32",
                    "trials are retrained from their stored config; on a CPU the retrained loss must equal the "
                    "stored one (reproduced)",
                ] + ([INVARIANCE_NOTE] if invariance else [])}
    write_json(run_dir / "analysis.json", analysis)
    write_csv(run_dir / "analysis.csv", [csv_row(e) for e in entries], CSV_COLUMNS)
    if plots:
        plot_analysis(analysis, s_curves, trials, curves, diagnostics, run_dir / "plots")
    return analysis


def parse_scales(text: str) -> list[float]:
    """``"0.1,0.5,2,10"`` as numbers; a part that is not one is a `UserError` naming it."""
    out = []
    for part in text.split(","):
        try:
            out.append(float(part))
        except ValueError:
            raise UserError(f"invalid rescaling factor {part.strip()!r} in --scales; valid: comma-separated positive "
                            "numbers such as 0.1,0.5,2,10") from None
    return out


def check_scales(scales: tuple[float, ...] | str | None, invariance: bool) -> tuple[float, ...]:
    """The factors c of ``--invariance``: each finite and > 0 (`SCALES` when None); given without
    ``invariance``, a `UserError` (they would be ignored)."""
    if scales is None:
        return SCALES
    scales = tuple(parse_scales(scales)) if isinstance(scales, str) else scales
    if not invariance:
        raise UserError("--scales applies to --invariance; add --invariance or leave --scales out")
    if not scales:
        raise UserError("--scales names no factor; valid: comma-separated positive numbers such as 0.1,0.5,2,10")
    for i, c in enumerate(scales):
        if not math.isfinite(c) or c <= 0:
            raise UserError(f"invalid rescaling factor c = {c:g} in --scales; valid: positive finite numbers such as "
                            "0.1,0.5,2,10")
        if c in scales[:i]:
            raise UserError(f"--scales gives c = {c:g} twice; valid: distinct positive numbers such as 0.1,0.5,2,10")
    return tuple(scales)
