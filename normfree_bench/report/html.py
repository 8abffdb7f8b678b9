"""One self-contained HTML page for a run directory: leaderboard, plots, analysis tables, provenance.

Usage: ``path = write_report(Path("runs/smoke"))``  (writes ``runs/smoke/report.html`` and returns its path)

The page needs no other file and no network: every PNG is embedded as a base64 data URI and the CSS is
inline. Sections, in order (a section with nothing to show is left out):

- Leaderboard: ``leaderboard.json`` as a table, with the run's scale read from ``config.yaml``,
  ``trials.csv`` and ``provenance.json``;
- Learning-rate sweep: ``plots/loss_vs_lr.png``, ``plots/lr_sensitivity.png``, ``plots/heatmap_*.png``;
- Training curves: ``plots/curves_best_lr.png``, ``plots/analysis_curves*.png``;
- Training diagnostics: ``plots/analysis_diagnostics*.png``, ``plots/diagnostics*.png``;
- Activation outliers and quantization: ``plots/analysis_outliers*.png``, ``plots/analysis_ptq*.png`` and
  the outlier and PTQ tables of ``analysis.json``;
- Low-precision training: ``plots/analysis_low_precision*.png`` (and ``analysis_bf16*``,
  ``analysis_precision*``) and the low-precision table of ``analysis.json``;
- DyT: alpha vs 1/std: ``plots/analysis_alpha*.png`` and the correlations of ``analysis.json``;
- Rescaling invariance: the output's change per c of ``analysis.json`` (``analyze --invariance``);
- Input-output S-curves: ``plots/analysis_s_curves*.png``;
- Other plots: every other PNG under ``plots/``, so nothing is dropped;
- Provenance: ``provenance.json``, the analysis settings and notes, and ``config.yaml``.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from normfree_bench.errors import UserError
from normfree_bench.io import atomic_write_text
from normfree_bench.store.rundir import CONFIG_FILE, read_run
from normfree_bench.tables.leaderboard import COLUMN_DOCS
from normfree_bench.tables.render import STUDY_TITLE, fmt_lr, notes, render, study_grid

REPORT_NAME = "report.html"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (id, title) in page order.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("leaderboard", "Leaderboard"),
    ("sweep", "Learning-rate sweep"),
    ("curves", "Training curves"),
    ("diagnostics", "Training diagnostics"),
    ("outliers", "Activation outliers and quantization"),
    ("low-precision", "Low-precision training"),
    ("alpha", "DyT: alpha vs 1/std"),
    ("invariance", "Rescaling invariance"),
    ("s-curves", "Input-output S-curves"),
    ("other", "Other plots"),
    ("provenance", "Provenance"),
)

# Plot file stem prefixes -> section id; the first match wins, an unmatched PNG goes to "other".
PLOT_RULES: tuple[tuple[str, str], ...] = (
    ("loss_vs_lr", "sweep"),
    ("lr_sensitivity", "sweep"),
    ("heatmap_", "sweep"),
    ("curves_best_lr", "curves"),
    ("analysis_curves", "curves"),
    ("analysis_diagnostics", "diagnostics"),
    ("diagnostics", "diagnostics"),
    ("analysis_outliers", "outliers"),
    ("analysis_ptq", "outliers"),
    ("analysis_low_precision", "low-precision"),
    ("analysis_bf16", "low-precision"),
    ("analysis_precision", "low-precision"),
    ("analysis_alpha", "alpha"),
    ("analysis_s_curves", "s-curves"),
)

# What a known figure shows, by file stem prefix (longest prefix first where they nest).
PLOT_CAPTIONS: tuple[tuple[str, str], ...] = (
    ("loss_vs_lr", "Final validation loss vs learning rate (log x), one line per baseline; diverged trials are "
                   "red crosses at the initial loss l0 (dashed line), the trivial loss is dotted, and a failed "
                   "cell's line is grey."),
    ("lr_sensitivity", "LR sensitivity per trained cell: Wortsman's mean excess over the fixed LR window (lower is "
                       "better); a failed cell is a grey bar labelled with its verdict, not ranked."),
    ("heatmap_", "Stability map: learning rate x swept axis value, colour = mean capped validation loss."),
    ("curves_best_lr", "Train (thin lines) and validation (markers) loss vs step at each baseline's best "
                       "learning rate."),
    ("analysis_curves_above_best", "Training curves at learning rates above each baseline's best."),
    ("analysis_diagnostics", "Numerical diagnostics recorded at eval steps."),
    ("analysis_outliers", "Activation outliers: per-site kurtosis and max/RMS of the residual stream."),
    ("analysis_ptq", "Post-training quantization: validation-loss increase over fp32 per scheme."),
    ("analysis_alpha_vs_inv_std", "Learned alpha of each point-wise site vs 1/std of its input."),
    ("analysis_s_curves_", "Input-output map of each normalization site (the S-curves)."),
)

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 1em 2em 3em; color: #1d1d1f; line-height: 1.45; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
p.description { color: #444; font-size: 1.1em; margin-top: 0; }
p.summary, p.note { background: #f5f7fa; border-left: 4px solid #5b8def; padding: 0.5em 0.8em; }
p.warning { background: #fff4e5; border-left: 4px solid #e89b2d; padding: 0.5em 0.8em; }
nav.toc { background: #fafafa; border: 1px solid #ddd; padding: 0.5em 1.5em; display: inline-block; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { background: #eef1f5; }
td:first-child, th:first-child { text-align: left; }
table.kv td { text-align: left; white-space: normal; }
.table-wrap { overflow-x: auto; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
pre { background: #f6f8fa; border: 1px solid #ddd; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
dl.legend { font-size: 0.85em; color: #444; display: grid; grid-template-columns: max-content auto;
            gap: 0.1em 1em; }
dl.legend dt { font-family: monospace; }
dl.legend dd { margin: 0; }
"""


@dataclass
class RunFiles:
    """What the report reads from a run directory; an optional file that is missing is None or empty."""

    run_dir: Path
    config: dict[str, Any]
    config_text: str
    provenance: dict[str, Any] | None = None
    leaderboard: list[dict[str, Any]] | None = None
    trials: list[dict[str, str]] = field(default_factory=list)
    analysis: dict[str, Any] | None = None
    diagnostics_rows: int | None = None
    plots: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # optional files that could not be read


# ----------------------------------------------------------------------------------------------- reading


def _read_config(run_dir: Path) -> tuple[dict[str, Any], str]:
    record = read_run(run_dir)
    return record, (run_dir / CONFIG_FILE).read_text(encoding="utf-8", errors="replace")


def _check_same_run(files: RunFiles, name: str, data: Any) -> None:
    """A file that names another run than config.yaml does is a `UserError`: never mix two runs."""
    other = data.get("run_name") if isinstance(data, dict) else None
    if other is not None and other != files.config.get("run_name"):
        raise UserError(f"{files.run_dir / name} belongs to run {other}, but config.yaml to run "
                        f"{files.config.get('run_name')}; the files of two runs are mixed in {files.run_dir}")


def _read_json(path: Path, problems: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{path.name} could not be read ({type(exc).__name__}: {exc}); its section is left out")
        return None


def _read_csv(path: Path, problems: list[str]) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        problems.append(f"{path.name} could not be read ({type(exc).__name__}: {exc})")
        return []


def _count_csv_rows(path: Path) -> int | None:
    if not path.is_file():
        return None
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return max(0, sum(1 for _ in csv.reader(fh)) - 1)
    except (OSError, csv.Error, UnicodeDecodeError):
        return None


def _unjson(value: Any) -> Any:
    """Undo `normfree_bench.io.jsonable` for infinities ("inf", "-inf")."""
    if value == "inf":
        return math.inf
    if value == "-inf":
        return -math.inf
    return value


def read_run_files(run_dir: Path) -> RunFiles:
    """Everything the report shows; raises `UserError` only when ``run_dir`` is not a run directory."""
    run_dir = Path(run_dir)
    config, config_text = _read_config(run_dir)
    files = RunFiles(run_dir=run_dir, config=config, config_text=config_text)
    provenance = _read_json(run_dir / "provenance.json", files.problems)
    _check_same_run(files, "provenance.json", provenance)
    files.provenance = provenance if isinstance(provenance, dict) else None
    rows = _read_json(run_dir / "leaderboard.json", files.problems)
    if isinstance(rows, list):
        files.leaderboard = [{k: _unjson(v) for k, v in r.items()} for r in rows if isinstance(r, dict)]
    files.trials = _read_csv(run_dir / "trials.csv", files.problems)
    analysis = _read_json(run_dir / "analysis.json", files.problems)
    _check_same_run(files, "analysis.json", analysis)
    files.analysis = analysis if isinstance(analysis, dict) else None
    files.diagnostics_rows = _count_csv_rows(run_dir / "diagnostics.csv")
    plots_dir = run_dir / "plots"
    if plots_dir.is_dir():
        files.plots = sorted((p for p in plots_dir.rglob("*") if p.is_file() and p.suffix.lower() == ".png"),
                             key=lambda p: p.relative_to(plots_dir).as_posix())
    return files


# -------------------------------------------------------------------------------------------- formatting


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def fmt_num(value: Any, digits: int = 4, signed: bool = False) -> str:
    """A number to ``digits`` significant digits; None is "–", booleans are yes/no, text stays text."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:+,}" if signed else f"{value:,}"
    number = _float(_unjson(value))
    if number is None:
        return str(value)
    if math.isnan(number):
        return "nan"
    if math.isinf(number):
        return ("+∞" if signed else "∞") if number > 0 else "−∞"
    return f"{number:+.{digits}g}" if signed else f"{number:.{digits}g}"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], cls: str = "") -> str:
    """An HTML table; every cell is escaped (cells are already formatted text)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "\n".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    attr = f' class="{esc(cls)}"' if cls else ""
    return (f'<div class="table-wrap"><table{attr}>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
            f"</tbody>\n</table></div>")


def para(text: str, cls: str = "summary") -> str:
    return f'<p class="{esc(cls)}">{esc(text)}</p>'


# ------------------------------------------------------------------------------------------- scale facts


def _distinct(rows: list[dict[str, str]], key: str, convert: Callable[[str], Any]) -> list[Any]:
    out = set()
    for row in rows:
        try:
            out.add(convert(row.get(key, "")))
        except (TypeError, ValueError):
            continue
    return sorted(out)


def _cfg(config: dict[str, Any], section: str) -> dict[str, Any]:
    value = config.get(section)
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    number = _float(value)
    return int(number) if number is not None and math.isfinite(number) else None


def scale_sentence(files: RunFiles) -> str:
    """What was measured and on what scale, from config.yaml, trials.csv and provenance.json."""
    config, trials, prov = files.config, files.trials, files.provenance or {}
    model, data, train, sweep = (_cfg(config, k) for k in ("model", "data", "train", "sweep"))
    baselines = config.get("baselines") or sorted({r.get("baseline", "") for r in trials} - {""})
    lrs = _distinct(trials, "lr", float) or sorted(_float(x) for x in sweep.get("lrs") or [] if _float(x))
    seeds = _distinct(trials, "seed", int)
    n_seeds = len(seeds) or _int(sweep.get("seeds")) or 0
    parts = [_plural(len(baselines), "baseline")]
    if lrs:
        span = f" ({fmt_lr(lrs[0])} .. {fmt_lr(lrs[-1])})" if len(lrs) > 1 else f" ({fmt_lr(lrs[0])})"
        parts.append(_plural(len(lrs), "learning rate") + span)
    axes = sweep.get("axes") if isinstance(sweep.get("axes"), dict) else {}
    planned = len(baselines) * max(len(lrs), 1) * max(n_seeds, 1)
    for name, values in axes.items():
        n_values = len(values) if isinstance(values, (list, tuple)) else 1
        parts.append(f"{n_values} values of {name}")
        planned *= n_values
    if n_seeds:
        parts.append(_plural(n_seeds, "seed"))
    text = " x ".join(parts)
    if trials and len(trials) != planned:  # an axis applies to some baselines only, or the run is not finished
        text += f"; {_plural(len(trials), 'trial')} in trials.csv"
    else:
        text += f" = {_plural(len(trials) or planned, 'trial')}"

    model_bits = []
    if model.get("d_model") is not None:
        model_bits.append(f"d_model={model['d_model']}")
    if model.get("n_layers") is not None:
        model_bits.append(_plural(_int(model["n_layers"]) or 0, "layer"))
    if model.get("n_heads") is not None:
        model_bits.append(_plural(_int(model["n_heads"]) or 0, "head"))
    if model_bits:
        text += "; model " + ", ".join(model_bits)
    steps, batch = _int(train.get("steps")), _int(data.get("batch_size"))
    vision = model.get("task") == "vit"
    if steps is not None and batch is not None:
        if vision:
            size = model.get("image_size")
            text += f", {steps:,} steps of batch {batch} images ({size}x{size}, patch {model.get('patch_size')})"
            text += f" on the {data.get('dataset', '?')} dataset"
        else:
            context = _int(model.get("context_length"))
            tokens = max(_distinct(trials, "tokens", int) or [0]) or (steps * batch * (context or 0))
            text += f", {steps:,} steps of batch {batch} x {context} tokens"
            if tokens:
                text += f" ({tokens:,} training tokens per trial)"
            corpus = data.get("corpus")
            if corpus:
                text += f" on the {corpus} corpus"
                sha = prov.get("corpus_sha256")
                if isinstance(sha, str) and sha:
                    text += f" (sha256 {sha[:12]}..)"
    device = prov.get("device")
    if device:
        name = prov.get("device_name")
        text += f"; device {device}" + (f" ({name})" if name else "")
    return text + "."


def outcome_sentence(files: RunFiles) -> str | None:
    """How the trials ended, from trials.csv, and the compute spent, from provenance.json."""
    trials = files.trials
    bits = []
    if trials:
        status = [r.get("status", "") for r in trials]
        complete = status.count("COMPLETE")
        diverged = sum(1 for r in trials if r.get("status") == "COMPLETE" and r.get("diverged") == "True")
        heldout = sum(1 for r in trials if r.get("phase") == "eval")
        failed = status.count("FAIL")
        other = len(trials) - complete - failed
        text = f"Of {_plural(len(trials), 'trial')}, {complete:,} finished ({diverged:,} of them diverged)"
        if heldout:
            text += f", {heldout:,} of them held-out seeds at the chosen learning rates"
        text += f", {failed:,} failed" + (f", {other:,} not finished yet" if other else "")
        bits.append(text)
    compute = (files.provenance or {}).get("compute")
    if isinstance(compute, dict) and _float(compute.get("train_s")) is not None:
        text = f"training took {fmt_num(_float(compute['train_s']))} s in total"
        if _int(compute.get("steps")) is not None:
            text += f" over {_int(compute['steps']):,} optimizer steps"
        if _float(compute.get("diverged_train_s")):
            text += f" ({fmt_num(_float(compute['diverged_train_s']))} s in diverged trials)"
        bits.append(text)
    if not bits:
        return None
    sentence = "; ".join(bits)
    return sentence[0].upper() + sentence[1:] + "."


# ---------------------------------------------------------------------------------------------- sections


def _plot_rule(name: str) -> int:
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return next((i for i, (prefix, _) in enumerate(PLOT_RULES) if stem.startswith(prefix)), len(PLOT_RULES))


def plot_section(name: str) -> str:
    """The section id of a plot file (name relative to plots/, posix); "other" when no rule knows it."""
    index = _plot_rule(name)
    return PLOT_RULES[index][1] if index < len(PLOT_RULES) else "other"


def plot_caption(name: str) -> str:
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    for prefix, caption in PLOT_CAPTIONS:
        if stem.startswith(prefix):
            if prefix == "analysis_s_curves_" and stem[len(prefix):]:
                return f"Input-output map of each normalization site of {stem[len(prefix):]} (the S-curves)."
            return caption
    return ""


def figure(path: Path, plots_dir: Path) -> str:
    """An embedded PNG with its file name as caption; a file that is not a PNG becomes a warning."""
    name = path.relative_to(plots_dir).as_posix()
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return para(f"plots/{name} could not be read: {exc}", "warning")
    if not raw.startswith(PNG_MAGIC):
        return para(f"plots/{name} is not a PNG image; it is left out", "warning")
    data = base64.b64encode(raw).decode("ascii")
    caption = plot_caption(name)
    text = f"<code>plots/{esc(name)}</code>" + (f" — {esc(caption)}" if caption else "")
    anchor = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
    return (f'<figure id="plot-{anchor}"><img src="data:image/png;base64,{data}" '
            f'alt="{esc(name)}"><figcaption>{text}</figcaption></figure>')


def _trial_key(trial: dict[str, Any]) -> list[str]:
    lr = _float(trial.get("lr"))
    return [str(trial.get("baseline", "?")), str(trial.get("trial", "–")), fmt_lr(lr) if lr else "–",
            fmt_num(trial.get("seed"))]


TRIAL_HEADERS = ("baseline", "trial", "lr", "seed")


def _analysis_trials(analysis: dict[str, Any] | None) -> list[dict[str, Any]]:
    trials = (analysis or {}).get("trials")
    return [t for t in trials if isinstance(t, dict)] if isinstance(trials, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def analysis_scope_sentence(analysis: dict[str, Any]) -> str:
    trials = _analysis_trials(analysis)
    scope = analysis.get("scope")
    which = {"best": "each baseline's best trial", "all": "every finished trial"}.get(str(scope), f"scope {scope}")
    text = f"Scale: {_plural(len(trials), 'trial')} analysed ({which})"
    batch = _dict(analysis.get("batch"))
    seqs, tokens = _int(batch.get("sequences")), _int(batch.get("tokens"))
    if seqs is not None:
        text += f", one batch of {_plural(seqs, 'validation sequence')}"
        text += f" ({tokens:,} tokens)" if tokens is not None else ""
    elif tokens is not None:
        text += f", one batch of {tokens:,} validation tokens"
    if analysis.get("device"):
        text += f", device {analysis['device']}"
    return text + "."


def outlier_tables(analysis: dict[str, Any]) -> list[str]:
    trials = [t for t in _analysis_trials(analysis) if isinstance(t.get("outliers"), dict)]
    if not trials:
        return []
    rows, sites = [], []
    for t in trials:
        o = t["outliers"]
        dims = o.get("outlier_dims") if isinstance(o.get("outlier_dims"), list) else []
        shown = ", ".join(str(d) for d in dims[:8]) + (f", … ({len(dims)})" if len(dims) > 8 else "")
        rows.append([*_trial_key(t), fmt_num(t.get("val_loss")), fmt_num(o.get("n_outlier_dims")), shown or "–",
                     fmt_num(o.get("max_kurtosis")), fmt_num(o.get("max_max_over_rms"))])
        for s in o.get("per_site") or []:
            if isinstance(s, dict):
                sites.append([str(t.get("baseline", "?")), str(t.get("trial", "–")), fmt_num(s.get("layer")),
                              str(s.get("site", "?")), fmt_num(s.get("kurtosis")), fmt_num(s.get("max_over_rms"))])
    out = ["<h3>Activation outliers</h3>",
           para("Outlier dimensions are channels of the residual stream with outsized activations; kurtosis is the "
                "excess kurtosis of a site's input and max/RMS its largest magnitude over its RMS (a Gaussian "
                "gives kurtosis 0 and max/RMS of about 4-5)."),
           html_table([*TRIAL_HEADERS, "val_loss", "outlier dims", "which", "max kurtosis", "max max/RMS"], rows)]
    if sites:
        out.append("<details><summary>Per site</summary>"
                   + html_table(["baseline", "trial", "layer", "site", "kurtosis", "max/RMS"], sites)
                   + "</details>")
    return out


def ptq_tables(analysis: dict[str, Any]) -> list[str]:
    trials = [t for t in _analysis_trials(analysis) if isinstance(t.get("ptq"), dict)]
    if not trials:
        return []
    schemes: list[str] = []
    for t in trials:
        schemes += [k for k in t["ptq"] if k != "fp32" and k not in schemes]
    rows = []
    for t in trials:
        ptq = t["ptq"]
        base = _float(ptq.get("fp32"))
        cells = []
        for scheme in schemes:
            value = _float(ptq.get(scheme))
            cells.append("n/a" if value is None or base is None else fmt_num(value - base, signed=True))
        rows.append([*_trial_key(t), fmt_num(base), *cells])
    return ["<h3>Post-training quantization</h3>",
            para("Validation loss in fp32, then the increase of the validation loss over fp32 (in nats) after "
                 f"quantizing with each scheme ({', '.join(schemes) or 'none'}); n/a where a scheme was not "
                 "available."),
            html_table([*TRIAL_HEADERS, "fp32 loss", *[f"Δ {s}" for s in schemes]], rows)]


def low_precision_tables(analysis: dict[str, Any]) -> list[str]:
    trials = [t for t in _analysis_trials(analysis) if isinstance(t.get("low_precision"), dict)]
    rows = []
    for t in trials:
        for mode, result in t["low_precision"].items():
            result = _dict(result)
            if "skipped" in result:
                rows.append([*_trial_key(t), str(mode), "–", "–", f"skipped: {result['skipped']}"])
                continue
            status = "diverged" if result.get("diverged") else "ok"
            rows.append([*_trial_key(t), str(mode), fmt_num(result.get("val_loss")),
                         fmt_num(result.get("delta"), signed=True), status])
    if not rows:
        return []
    modes = sorted({r[4] for r in rows})
    modes_text = ", ".join(modes[:-1]) + " and " + modes[-1] if len(modes) > 1 else modes[0]
    return [para(f"Each trial trained again in {modes_text} at the same learning rate and seed: the final "
                 "validation loss, its change from the fp32 trial (delta, nats), and whether it diverged; a mode "
                 "that could not run on this device says why."),
            html_table([*TRIAL_HEADERS, "precision", "val_loss", "delta", "status"], rows)]


def alpha_tables(analysis: dict[str, Any]) -> list[str]:
    rows = []
    for t in _analysis_trials(analysis):
        for site, result in _dict(t.get("alpha_vs_inv_std")).items():
            result = _dict(result)
            rows.append([*_trial_key(t), str(site), fmt_num(result.get("r")), fmt_num(result.get("points"))])
    if not rows:
        return []
    return [para("Pearson correlation r between a point-wise site's learned alpha and 1/std of the site's input "
                 "(Zhu et al. 2025 report that alpha tracks 1/std); points: how many pairs were correlated."),
            html_table([*TRIAL_HEADERS, "site", "r", "points"], rows)]


def invariance_tables(analysis: dict[str, Any]) -> list[str]:
    """One row per analyzed trial, model (init or trained) and rescaling: the output's relative change per c."""
    rows, retrained, scales = [], [], []
    for t in _analysis_trials(analysis):
        for when, kinds in _dict(t.get("invariance")).items():
            if when == "retrained":
                by_c = _dict(kinds)
                retrained.append([*_trial_key(t), *(_retrained_cell(_dict(by_c.get(c))) for c in by_c)])
                continue
            for kind, by_c in _dict(kinds).items():
                by_c = _dict(by_c)
                scales = scales or list(by_c)
                rows.append([*_trial_key(t), str(when), str(kind),
                             *(fmt_num(_dict(by_c.get(c)).get("rel_change"), 3) for c in scales)])
    if not rows:
        return []
    out = [para("Relative change of the logits, ||f_c - f|| / ||f||, when every weight that writes into the residual "
                "stream (weights) or the input embedding alone (input) is multiplied by c. A model with a norm at "
                "every site is invariant to the first up to the norms' eps; DyT is not."),
           html_table([*TRIAL_HEADERS, "model", "rescaled", *(f"c = {c}" for c in scales)], rows)]
    if retrained:
        out += [para("Dataset rescaling, trained: each best trial trained again from scratch with its data rescaled "
                     "by c (the pixels for the ViT, the token embedding's output for the LM); the final validation "
                     "loss minus the trial's own (nats), or the step where it diverged."),
                html_table([*TRIAL_HEADERS, *(f"c = {c}" for c in scales)], retrained)]
    return out


def _retrained_cell(run: dict[str, Any]) -> str:
    if run.get("diverged"):
        return f"diverged at step {run.get('diverged_step')}"
    delta = run.get("delta")
    return f"{delta:+.4f}" if isinstance(delta, (int, float)) else "-"


def leaderboard_section(files: RunFiles) -> list[str]:

    rows = files.leaderboard
    if rows is None:
        return []
    axes = list(_dict(_cfg(files.config, "sweep").get("axes")))
    text = f"One row per baseline ({_plural(len(rows), 'row')})"
    if files.trials:
        text += f", summarising {_plural(len(files.trials), 'trial')} of trials.csv"
    text += "; losses are validation cross-entropy in nats (lower is better)."
    outcome = outcome_sentence(files)
    out = [para(text + (" " + outcome if outcome else ""))]
    out.append('<div class="table-wrap">' + render(rows, "html", axes) + "</div>")
    out += [para(line, "note") for line in notes(rows, axes)]
    grid = study_grid(rows, axes)
    if grid:
        out += [para(STUDY_TITLE), html_table(*grid, cls="study")]
    present = {k for r in rows for k, v in r.items() if v is not None}
    legend = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in COLUMN_DOCS.items() if k in present)
    if legend:
        out.append(f'<dl class="legend">{legend}</dl>')
    return out


def sweep_text(files: RunFiles) -> str:
    trials = files.trials
    lrs = _distinct(trials, "lr", float)
    if not trials or not lrs:
        return "The learning-rate sweep of every baseline."
    final = [_float(r.get("final_val_loss")) for r in trials if r.get("diverged") != "True"]
    final = [x for x in final if x is not None and math.isfinite(x)]
    diverged = sum(1 for r in trials if r.get("diverged") == "True")
    text = (f"Final validation loss of {_plural(len(trials), 'trial')} over {_plural(len(lrs), 'learning rate')} "
            f"from {fmt_lr(lrs[0])} to {fmt_lr(lrs[-1])} (log scale); {diverged:,} diverged")
    if final:
        text += f", the others ended between {fmt_num(min(final))} and {fmt_num(max(final))} nats"
    model = _cfg(files.config, "model")
    classes = _int(model.get("num_classes") if model.get("task") == "vit" else model.get("vocab_size"))
    if classes and classes > 1:
        text += f"; the initial loss l0 = ln({classes}) = {fmt_num(math.log(classes))} nats"
    return text + "."


def curves_text(files: RunFiles) -> str:
    train, model, data = (_cfg(files.config, k) for k in ("train", "model", "data"))
    text = "Loss vs optimizer step"
    if train.get("steps") is not None:
        text += f" over {fmt_num(_int(train['steps']))} steps"
    if train.get("log_interval") is not None:
        text += f", train loss logged every {fmt_num(_int(train['log_interval']))} steps"
    if train.get("eval_interval") is not None:
        text += f", validation loss every {fmt_num(_int(train['eval_interval']))} steps"
    if data.get("val_windows") is not None and model.get("task") != "vit":
        text += f" on {fmt_num(_int(data['val_windows']))} validation windows"
    return text + "."


def diagnostics_text(files: RunFiles) -> str:
    text = "Numerical health of the models during training (site RMS, kurtosis, max/RMS, attention logits, "
    text += "saturation, learnable scalars), measured on one batch at eval steps"
    if files.diagnostics_rows:
        text += f"; diagnostics.csv holds {files.diagnostics_rows:,} measurements"
    return text + "."


def provenance_section(files: RunFiles) -> list[str]:
    out = []
    prov = files.provenance
    if prov:
        bits = [f"created {prov['created']}" if prov.get("created") else "",
                f"on host {prov['host']}" if prov.get("host") else "",
                f"git SHA {prov['git_sha']}" if prov.get("git_sha") else "",
                f"Python {prov['python']}" if prov.get("python") else "",
                f"{prov['torch_threads']} torch threads" if prov.get("torch_threads") else ""]
        text = ", ".join(b for b in bits if b)
        out.append(para(f"Run {text}; the full provenance.json:" if text else "The full provenance.json:"))
        out.append(html_table(["key", "value"], _flatten(prov), cls="kv"))
    analysis = files.analysis
    if analysis:
        out.append("<h3>Analysis</h3>")
        out.append(para(analysis_scope_sentence(analysis)))
        name = analysis.get("run_name")
        if name is not None and name != files.config.get("run_name"):
            out.append(para(f"analysis.json belongs to run {name}, not to {files.config.get('run_name')}",
                            "warning"))
        notes = analysis.get("notes")
        if isinstance(notes, list) and notes:
            out.append("<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    out.append("<h3>config.yaml</h3>")
    out.append(f"<pre>{esc(files.config_text)}</pre>")
    return out


def _flatten(data: dict[str, Any], prefix: str = "") -> list[list[str]]:
    rows: list[list[str]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows += _flatten(value, name + ".")
        elif isinstance(value, float):
            rows.append([name, fmt_num(value, digits=6)])
        else:
            rows.append([name, json.dumps(value) if isinstance(value, (list, dict, type(None))) else str(value)])
    return rows


# ------------------------------------------------------------------------------------------------ page


def build_sections(files: RunFiles) -> list[tuple[str, str, list[str]]]:
    """(id, title, html parts) of every section that has something to show, in page order."""
    plots_dir = files.run_dir / "plots"
    figures: dict[str, list[str]] = {sid: [] for sid, _ in SECTIONS}
    for path in sorted(files.plots, key=lambda p: (_plot_rule(p.relative_to(plots_dir).as_posix()),
                                                   p.relative_to(plots_dir).as_posix())):
        figures[plot_section(path.relative_to(plots_dir).as_posix())].append(figure(path, plots_dir))
    analysis = files.analysis or {}
    scope = [para(analysis_scope_sentence(analysis))] if analysis else []
    tables = {
        "outliers": outlier_tables(analysis) + ptq_tables(analysis),
        "low-precision": low_precision_tables(analysis),
        "alpha": alpha_tables(analysis),
        "invariance": invariance_tables(analysis),
    }
    texts = {
        "sweep": [para(sweep_text(files))],
        "curves": [para(curves_text(files))],
        "diagnostics": [para(diagnostics_text(files))],
        "s-curves": [para("Output of each normalization site against its input, per baseline: a point-wise "
                          "site (DyT) draws a tanh-shaped S-curve, LayerNorm a cloud of per-token lines.")],
        "other": [para("Plots in plots/ that this report does not know; shown as they are.")],
    }
    sections = []
    for sid, title in SECTIONS:
        if sid == "leaderboard":
            parts = leaderboard_section(files)
        elif sid == "provenance":
            parts = provenance_section(files)
        else:
            content = tables.get(sid, []) + figures[sid]
            if not content:
                continue
            parts = texts.get(sid, []) + content
            if tables.get(sid):  # the analysis scale after the section's first paragraph
                at = next((i + 1 for i, part in enumerate(parts) if part.startswith("<p")), 0)
                parts = parts[:at] + scope + parts[at:]
        if parts:
            sections.append((sid, title, parts))
    return sections


def render_report(files: RunFiles) -> str:
    """The report page as one HTML string."""
    run_name = str(files.config.get("run_name", files.run_dir.name))
    description = files.config.get("description")
    sections = build_sections(files)
    toc = "".join(f'<li><a href="#{esc(sid)}">{esc(title)}</a></li>' for sid, title, _ in sections)
    body = [f"<h1>normfree-bench run {esc(run_name)}</h1>"]
    if description:
        body.append(f'<p class="description">{esc(description)}</p>')
    body.append(para(scale_sentence(files)))
    for problem in files.problems:
        body.append(para(problem, "warning"))
    body.append(f'<nav class="toc"><strong>Contents</strong><ol>{toc}</ol></nav>')
    for sid, title, parts in sections:
        body.append(f'<section id="{esc(sid)}">\n<h2>{esc(title)}</h2>\n' + "\n".join(parts) + "\n</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>normfree-bench report: {esc(run_name)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) and return its path; `UserError` if not a run directory."""
    run_dir = Path(run_dir)
    files = read_run_files(run_dir)
    path = run_dir / REPORT_NAME
    atomic_write_text(path, render_report(files))
    return path
