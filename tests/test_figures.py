"""Every leaderboard figure, in every output format, against an independent recomputation.

Usage: ``pytest -q tests/test_figures.py`` (``-m "not slow"``: the committed runs only, no training)

The expected value of each column is recomputed here from a run directory's ``trials.csv`` and
``curves.csv`` (plus ``config.yaml`` and ``provenance.json`` for the settings, l0 and the trivial loss)
with this file's own code, following the column definitions of the README ("Leaderboard columns"); no
leaderboard function of the package is called for it. Each output is then parsed back into values: the
github and psql tables (``leaderboard.md``, ``leaderboard --format github|psql``, what ``run`` prints),
the LaTeX tabular, the HTML table (``--format html`` and the leaderboard section of ``report.html``),
``leaderboard.csv`` / ``--format csv`` and ``leaderboard.json`` / ``--format json``. A text table must show a
float to its printed precision, ``-`` for an empty figure, ``∞`` for a missed target and the ``≤`` / ``≥``
censoring marks exactly where the recomputation puts them; CSV and JSON must hold the raw values.

Runs checked: the committed ``results/default`` (LM, held-out seeds) and ``results/vision`` (ViT,
accuracies), regenerated in a copy; a copy of ``results/default`` in which some trials are marked FAIL in
its study (so that every mark and empty figure occurs: best LR at both edges, a censored basin, a grid
that misses the sensitivity window, a cell that only diverged, one or no held-out seed); and, in the slow
tier, the session's smoke run and a small two-seed run made here (std and ci95 filled).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import re
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from scipy import stats

from normfree_bench.cli import main
from normfree_bench.tables.export import write_results
from tests.conftest import private_cache, write_word_corpus

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"

# The README's table of leaderboard columns, in order: the CSV header and the JSON keys.
COLUMNS = (
    "baseline", "verdict", "init", "best_val_loss", "best_val_loss_std", "best_val_loss_ci95", "tuning_seeds",
    "best_lr", "best_lr_censored", "best_lr_edge", "heldout_loss", "heldout_loss_std", "heldout_loss_ci95",
    "heldout_seeds", "p_vs_reference", "lr_sensitivity", "lr_basin_decades", "lr_basin_censored", "max_stable_lr",
    "max_stable_lr_censored", "diverged", "diverged_count", "stalled", "stalled_count", "spiked", "spiked_count",
    "n_trials", "steps_to_target", "target_reached", "target_reached_count", "tokens_per_s", "params",
    "best_val_accuracy", "heldout_accuracy", "note",
)
# The columns of a text table, in order; the optional ones appear only when some row has a value.
TEXT_COLUMNS = (
    "baseline", "verdict", "init", "best_val_loss", "tuning_seeds", "best_lr", "heldout_loss", "heldout_seeds",
    "p_vs_reference", "best_val_accuracy", "heldout_accuracy", "lr_sensitivity", "lr_basin_decades",
    "max_stable_lr", "diverged", "stalled", "spiked", "steps_to_target", "target_reached", "tokens_per_s", "params",
)
OPTIONAL = ("heldout_loss", "heldout_seeds", "p_vs_reference", "best_val_accuracy", "heldout_accuracy")
TRAINED, NO_LEARNING, DIVERGED = "trained", "failed: no learning", "failed: diverged"
# README "Init": the rule each baseline's paper init resolves to (LM / ViT).
INIT_RULES = {"layernorm": "gpt2", "rmsnorm": "gpt2", "dyt": "gpt2", "fixup": "gpt2", "rezero": "xavier",
              "nf": "lecun", "skipinit": "lecun", "deepnorm": "fairseq", "admin": "fairseq"}
CLI_FORMATS = ("github", "psql", "latex", "html", "csv", "json")


# ============================================================================ the independent recomputation


@dataclass
class Trial:
    trial: str
    baseline: str
    phase: str
    lr: float
    seed: int
    final: float
    diverged: bool
    spiked: bool
    tokens_per_s: float
    params: int | None
    accuracy: float
    curve: list[tuple[float, float]] = field(default_factory=list)  # (step, val_loss), val_loss measured


@dataclass
class Expected:
    """What every figure of a run must be, one dict per leaderboard row in row order."""

    rows: list[dict[str, Any]]
    notes: dict[str, str | None]  # baseline -> None, "failed" or "window": which note its row must carry


def _num(text: str | None) -> float:
    return math.nan if text in (None, "") else float(text)


def read_trials(run_dir: Path) -> list[Trial]:
    """The COMPLETE trials of trials.csv, each with its measured validation curve from curves.csv."""
    with (run_dir / "curves.csv").open(newline="") as fh:
        curves: dict[str, list[tuple[float, float]]] = {}
        for row in csv.DictReader(fh):
            loss = _num(row["val_loss"])
            if not math.isnan(loss):
                curves.setdefault(row["trial"], []).append((float(row["step"]), loss))
    trials = []
    with (run_dir / "trials.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["status"] != "COMPLETE":
                continue
            trials.append(Trial(
                trial=row["trial"], baseline=row["baseline"], phase=row.get("phase") or "tune", lr=float(row["lr"]),
                seed=int(row["seed"]), final=_num(row["final_val_loss"]), diverged=row["diverged"] == "True",
                spiked=row["spiked"] == "True", tokens_per_s=_num(row["tokens_per_s"]),
                params=int(row["params"]) if row["params"] else None, accuracy=_num(row.get("final_val_accuracy")),
                curve=sorted(curves.get(row["trial"], []))))
    return trials


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def variance(xs: list[float]) -> float:
    m = mean(xs)
    return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)


def sample_std(xs: list[float]) -> float | None:
    return math.sqrt(variance(xs)) if len(xs) > 1 else None


def ci95(xs: list[float]) -> float | None:
    sd = sample_std(xs)
    return None if sd is None else float(stats.t.ppf(0.975, len(xs) - 1)) * sd / math.sqrt(len(xs))


def seeds_text(seeds: list[int]) -> str | None:
    s = sorted(set(seeds))
    if not s:
        return None
    if len(s) > 1 and s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}-{s[-1]}"
    return ", ".join(str(x) for x in s)


def at_log_lr(lrs: list[float], ys: list[float], lr: float) -> float:
    """The LR curve at ``lr``, linear in log10(LR) between grid points."""
    x = math.log10(lr)
    xs = [math.log10(v) for v in lrs]
    for i in range(len(xs) - 1):
        if xs[i] - 1e-12 <= x <= xs[i + 1] + 1e-12:
            t = (x - xs[i]) / (xs[i + 1] - xs[i])
            return ys[i] + min(1.0, max(0.0, t)) * (ys[i + 1] - ys[i])
    raise AssertionError(f"{lr} outside the grid {lrs}")


def ones_and_threes(lo: float, hi: float) -> list[float]:
    """1·10^k and 3·10^k in [lo, hi]."""
    out = []
    for k in range(-20, 21):
        for m in (1, 3):
            p = float(f"{m}e{k}")
            if lo * (1 - 1e-9) <= p <= hi * (1 + 1e-9):
                out.append(p)
    return out


def first_reach(curve: list[tuple[float, float]], target: float, l0: float) -> float:
    """First step where the validation curve (starting at (0, l0)) reaches target, linear between points."""
    prev_step, prev_loss = 0.0, l0
    for step, loss in curve:
        if math.isfinite(loss) and loss <= target:
            if math.isfinite(prev_loss) and prev_loss > target:
                return prev_step + (step - prev_step) * (prev_loss - target) / (prev_loss - loss)
            return step
        prev_step, prev_loss = step, loss if math.isfinite(loss) else math.inf
    return math.inf


def welch_p(a: list[float], b: list[float]) -> float | None:
    """One-sided Welch test, H1: mean(a) < mean(b), from the t distribution directly."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = variance(a), variance(b)
    if va == 0.0 and vb == 0.0:
        return None
    sa, sb = va / len(a), vb / len(b)
    t = (mean(a) - mean(b)) / math.sqrt(sa + sb)
    df = (sa + sb) ** 2 / (sa ** 2 / (len(a) - 1) + sb ** 2 / (len(b) - 1))
    return float(stats.t.cdf(t, df))


def holm_adjust(ps: list[float]) -> list[float]:
    m = len(ps)
    ranked = sorted(range(m), key=lambda i: ps[i])
    out = [0.0] * m
    best = 0.0
    for k, i in enumerate(ranked):
        best = max(best, min(1.0, (m - k) * ps[i]))
        out[i] = best
    return out


def recompute(run_dir: Path) -> Expected:
    """Every leaderboard figure of ``run_dir`` from its trials.csv and curves.csv (README definitions)."""
    record = yaml.safe_load((run_dir / "config.yaml").read_text())
    model, sweep = record["model"], record["sweep"]
    assert not sweep.get("axes"), "this recomputation covers runs without swept axes"
    l0 = math.log(model["num_classes"] if model["task"] == "vit" else model["vocab_size"])
    trivial = float(json.loads((run_dir / "provenance.json").read_text())["trivial_loss"])
    stall_at = trivial * (1 - sweep["trained_margin"])
    lo, hi = (float(v) for v in sweep["sensitivity_window"])
    trials = read_trials(run_dir)

    def capped(t: Trial) -> float:
        return l0 if t.diverged or not math.isfinite(t.final) else min(t.final, l0)

    names = list(dict.fromkeys(t.baseline for t in trials))
    reference = sweep["reference"]
    if reference in names:
        names = [reference] + [n for n in names if n != reference]
    rows, notes, chosen_of, held_of = [], {}, {}, {}
    for name in names:
        tune = [t for t in trials if t.baseline == name and t.phase == "tune"]
        held = [t for t in trials if t.baseline == name and t.phase == "eval"]
        lrs = sorted({t.lr for t in tune})
        loss_at = {lr: mean([capped(t) for t in tune if t.lr == lr]) for lr in lrs}
        lowest = min(loss_at.values())
        best = min(lr for lr in lrs if loss_at[lr] <= lowest + 1e-12 * max(1.0, abs(lowest)))
        at_best = [t for t in tune if t.lr == best]
        losses = [capped(t) for t in at_best]
        best_loss = mean(losses)
        n_div = sum(t.diverged for t in tune)
        n_stall = sum(not t.diverged and capped(t) >= stall_at for t in tune)
        verdict = DIVERGED if n_div == len(tune) else NO_LEARNING if best_loss >= stall_at else TRAINED
        edge = None if len(lrs) < 2 else "low" if best == lrs[0] else "high" if best == lrs[-1] else None
        init = record["model"].get("init", "paper")
        rule = INIT_RULES[name]
        rule = "timm" if model["task"] == "vit" and rule == "gpt2" else rule
        held_losses = [capped(t) for t in held]
        row: dict[str, Any] = {
            "baseline": name, "verdict": verdict, "init": "shared: gpt2" if init == "shared" else f"paper: {rule}",
            "best_val_loss": best_loss, "best_val_loss_std": sample_std(losses), "best_val_loss_ci95": ci95(losses),
            "tuning_seeds": seeds_text([t.seed for t in at_best]), "best_lr": best,
            "best_lr_censored": edge is not None, "best_lr_edge": edge,
            "heldout_loss": mean(held_losses) if held else None, "heldout_loss_std": sample_std(held_losses),
            "heldout_loss_ci95": ci95(held_losses), "heldout_seeds": seeds_text([t.seed for t in held]),
            "p_vs_reference": None, "diverged": f"{n_div}/{len(tune)}", "diverged_count": n_div,
            "stalled": f"{n_stall}/{len(tune)}", "stalled_count": n_stall, "n_trials": len(tune)}
        notes[name] = None
        row.update(lr_sensitivity=None, lr_basin_decades=None, lr_basin_censored=None, max_stable_lr=None,
                   max_stable_lr_censored=None, spiked=None, spiked_count=None)
        if verdict == TRAINED:
            ys = [loss_at[lr] for lr in lrs]
            if lrs[0] <= lo * (1 + 1e-9) and lrs[-1] >= hi * (1 - 1e-9):
                samples = [at_log_lr(lrs, ys, p) for p in ones_and_threes(lo, hi)]
                row["lr_sensitivity"] = mean(samples) - min(samples)
            else:
                notes[name] = "window"
            limit = best_loss + sweep["basin_tol"] * (trivial - best_loss)
            ends, censored = [], False
            for step in (-1, 1):
                j = lrs.index(best)
                while 0 <= j + step < len(lrs) and loss_at[lrs[j + step]] <= limit:
                    j += step
                if not 0 <= j + step < len(lrs):
                    ends.append(math.log10(lrs[j]))
                    censored = True
                else:
                    y_in, y_out = loss_at[lrs[j]], loss_at[lrs[j + step]]
                    x_in, x_out = math.log10(lrs[j]), math.log10(lrs[j + step])
                    ends.append(x_in + (limit - y_in) / (y_out - y_in) * (x_out - x_in))
            stable = None
            for lr in lrs[lrs.index(best):]:
                if any(t.diverged for t in tune if t.lr == lr):
                    break
                stable = lr
            n_spiked = sum(t.spiked and not t.diverged for t in tune)
            row.update(lr_basin_decades=ends[1] - ends[0], lr_basin_censored=censored, max_stable_lr=stable,
                       max_stable_lr_censored=stable is not None and stable == lrs[-1],
                       spiked=f"{n_spiked}/{len(tune)}", spiked_count=n_spiked)
            if held and mean(held_losses) >= stall_at:  # the chosen LR learned on the tuning seed alone
                notes[name] = "+".join(k for k in (notes[name], "heldout") if k)
        else:
            notes[name] = "failed"
        tps = sorted(t.tokens_per_s for t in tune if not t.diverged and math.isfinite(t.tokens_per_s))
        params = [t.params for t in tune if t.params is not None]

        def accuracy(ts: list[Trial]) -> float | None:
            values = [t.accuracy for t in ts if math.isfinite(t.accuracy)]
            return mean(values) if values else None

        row.update(tokens_per_s=middle(tps) if tps else None, params=max(params) if params else None,
                   best_val_accuracy=accuracy(at_best), heldout_accuracy=accuracy(held))
        rows.append(row)
        chosen_of[name] = held or at_best
        held_of[name] = held_losses

    ref_row = next((r for r in rows if r["baseline"] == reference), None)
    target = None
    if sweep.get("target_loss") is not None:
        target = float(sweep["target_loss"])
    elif ref_row is not None and ref_row["verdict"] == TRAINED:
        ref_loss = ref_row["heldout_loss"] if ref_row["heldout_loss"] is not None else ref_row["best_val_loss"]
        if ref_loss < stall_at:  # a reference that stalled on its held-out seeds sets no target
            target = ref_loss + sweep["target_tol"] * (trivial - ref_loss)
    tested = []
    for row in rows:
        name = row["baseline"]
        if target is None:
            row.update(steps_to_target=None, target_reached=None, target_reached_count=None)
        else:
            steps = sorted(first_reach(t.curve, target, l0) for t in chosen_of[name])
            reached = sum(math.isfinite(s) for s in steps)
            row.update(steps_to_target=middle(steps) if 2 * reached > len(steps) else math.inf,
                       target_reached=f"{reached}/{len(steps)}", target_reached_count=reached)
        if ref_row is not None and name != reference:
            p = welch_p(held_of[name], held_of[reference])
            if p is not None:
                tested.append((row, p))
    for (row, _), p in zip(tested, holm_adjust([p for _, p in tested])):
        row["p_vs_reference"] = p
    for row in rows:
        row["note"] = notes[row["baseline"]]  # the kind; the text is checked by check_note
    return Expected([{c: row.get(c) for c in COLUMNS} for row in rows], notes)


def middle(xs: list[float]) -> float:
    """The median of a sorted list."""
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# ============================================================================================= parsers


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)  # the lines below a github/psql table, or report notes


def parse_pipe_table(text: str) -> Table:
    """A github (markdown) or psql table, and the block of note lines right below it."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = start
    while end < len(lines) and lines[end].startswith(("|", "+")):
        end += 1
    cells = [[c.strip() for c in line.strip()[1:-1].split("|")] for line in lines[start:end]
             if line.startswith("|") and not re.fullmatch(r"\|[-+:| ]+\|", line.strip())]
    notes = []
    i = end
    while i < len(lines) and not lines[i].strip():
        i += 1
    while i < len(lines) and lines[i].strip():
        notes.append(lines[i])
        i += 1
    return Table(cells[0], cells[1:], notes)


LATEX_UNESCAPE = {r"\textbackslash{}": "\\", r"\textasciitilde{}": "~", r"\^{}": "^", r"\ensuremath{<}": "<",
                  r"\ensuremath{>}": ">", r"\&": "&", r"\%": "%", r"\$": "$", r"\#": "#", r"\_": "_", r"\{": "{",
                  r"\}": "}"}


def parse_latex(text: str) -> Table:
    """A tabulate LaTeX tabular: rows between \\hline lines, cells split on unescaped &."""
    body = text[text.index(r"\begin{tabular}"):text.index(r"\end{tabular}")]
    rows = []
    for line in body.splitlines()[1:]:
        line = line.strip()
        if not line or line == r"\hline":
            continue
        assert line.endswith("\\\\"), line
        cells = re.split(r"(?<!\\)&", line[:-2])
        pattern = "|".join(re.escape(k) for k in LATEX_UNESCAPE)
        rows.append([re.sub(pattern, lambda m: LATEX_UNESCAPE[m.group(0)], c).strip() for c in cells])
    return Table(rows[0], rows[1:])


class HtmlTables(HTMLParser):
    """Every <table> of a page (with the id of its <section>) and every <p class="note">."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[tuple[str | None, list[list[str]]]] = []
        self.notes: list[tuple[str | None, str]] = []
        self.section: str | None = None
        self.cell: list[str] | None = None
        self.para: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.section = a.get("id")
        elif tag == "table":
            self.tables.append((self.section, []))
        elif tag == "tr":
            self.tables[-1][1].append([])
        elif tag in ("td", "th"):
            self.cell = []
        elif tag == "p" and "note" in (a.get("class") or "").split():
            self.para = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][1][-1].append("".join(self.cell).strip())
            self.cell = None
        elif tag == "p" and self.para is not None:
            self.notes.append((self.section, "".join(self.para).strip()))
            self.para = None
        elif tag == "section":
            self.section = None

    def handle_data(self, data: str) -> None:
        for part in (self.cell, self.para):
            if part is not None:
                part.append(data)


def parse_html(text: str, section: str | None = None) -> Table:
    """The first table of a page (of its ``section``, if given) and that section's notes."""
    parser = HtmlTables()
    parser.feed(text)
    parser.close()
    tables = [rows for sid, rows in parser.tables if section is None or sid == section]
    assert tables, f"no table{f' in section {section}' if section else ''}"
    rows = tables[0]
    return Table(rows[0], rows[1:], [n for sid, n in parser.notes if sid == section])


# ============================================================================================ checks


def close(a: float, b: float, rel: float = 1e-9, abs_: float = 1e-12) -> bool:
    return a == b or abs(a - b) <= max(rel * max(abs(a), abs(b)), abs_)


def within(printed: float, value: float, decimals: int) -> bool:
    """``printed`` is ``value`` rounded to ``decimals`` decimals."""
    return abs(printed - value) <= 0.5 * 10.0 ** -decimals * (1 + 1e-9) + 1e-12


LR_TEXT = re.compile(r"([≤≥]?)([1-9](?:\.\d*[1-9])?e-?\d+)")


def check_lr(text: str, value: float | None, mark: str) -> str | None:
    """An LR cell: short scientific notation to 4 significant digits, with the censoring mark."""
    if value is None:
        return None if text == "-" else f"'{text}' for no value"
    m = LR_TEXT.fullmatch(text)
    if not m:
        return f"'{text}' is not a marked LR like ≥3e-1 (expected {mark}{value})"
    if m.group(1) != mark:
        return f"'{text}' has mark '{m.group(1)}', expected '{mark}'"
    if not close(float(m.group(2)), value, rel=5.01e-4):
        return f"'{text}' is not {value}"
    return None


def check_fixed(text: str, value: float | None, decimals: int, mark: str = "") -> str | None:
    if missing(value):
        return None if text == "-" else f"'{text}' for no value"
    number = rf"-?\d+\.\d{{{decimals}}}" if decimals else r"-?\d+"
    m = re.fullmatch(rf"([≤≥]?)({number})", text)
    if not m:
        return f"'{text}' is not a {decimals}-decimal number (expected {mark}{value})"
    if m.group(1) != mark:
        return f"'{text}' has mark '{m.group(1)}', expected '{mark}'"
    return None if within(float(m.group(2)), float(value), decimals) else f"'{text}' is not {value}"


def check_text_cell(column: str, text: str, exp: dict[str, Any]) -> str | None:
    """None if one text-table cell shows ``exp[column]`` as the README says, else what is wrong."""
    value = exp[column]
    if column in ("best_val_loss", "heldout_loss"):
        if value is None:
            return None if text == "-" else f"'{text}' for no value"
        m = re.fullmatch(r"(\d+\.\d{4})(?: ± (\d+\.\d{4}))?", text)
        if not m:
            return f"'{text}' is not 'loss[ ± ci]' with 4 decimals"
        ci = exp[f"{column}_ci95"]
        if not within(float(m.group(1)), value, 4):
            return f"'{text}': the loss is not {value}"
        if (m.group(2) is None) != (ci is None):
            return f"'{text}': the ± ci95 should be {'absent' if ci is None else ci}"
        return None if ci is None or within(float(m.group(2)), ci, 4) else f"'{text}': the ci95 is not {ci}"
    if column == "best_lr":
        return check_lr(text, value, {"low": "≤", "high": "≥"}.get(exp["best_lr_edge"] or "", ""))
    if column == "max_stable_lr":
        return check_lr(text, value, "≥" if exp["max_stable_lr_censored"] else "")
    if column == "lr_basin_decades":
        return check_fixed(text, value, 2, "≥" if exp["lr_basin_censored"] else "")
    if column == "lr_sensitivity":
        return check_fixed(text, value, 3)
    if column == "steps_to_target":
        if value is not None and math.isinf(value):
            return None if text == "∞" else f"'{text}' for a missed target (∞)"
        return check_fixed(text, value, 0)
    if column in ("best_val_accuracy", "heldout_accuracy"):
        if value is None:
            return None if text == "-" else f"'{text}' for no value"
        m = re.fullmatch(r"(\d+\.\d)%", text)
        return None if m and within(float(m.group(1)), 100 * value, 1) else f"'{text}' is not {100 * value:.3f}%"
    if column == "p_vs_reference":
        if value is None:
            return None if text == "-" else f"'{text}' for no p-value"
        m = re.fullmatch(r"\d(?:\.\d+)?(?:e-\d+)?", text)
        if not m or len(re.sub(r"e.*|\D", "", text).lstrip("0")) > 3:
            return f"'{text}' is not a p-value to 3 significant digits"
        tol = 0.5 * 10.0 ** (math.floor(math.log10(value)) - 2) * (1 + 1e-9) if value > 0 else 0.0
        return None if abs(float(text) - value) <= tol else f"'{text}' is not {value}"
    if column == "tokens_per_s":
        if value is None:
            return None if text == "-" else f"'{text}' for no value"
        ok = re.fullmatch(r"\d{1,3}(?:,\d{3})*", text) and within(float(text.replace(",", "")), value, 0)
        return None if ok else f"'{text}' is not {value:,.1f}"
    if column == "params":
        if value is None:
            return None if text == "-" else f"'{text}' for no value"
        return None if re.fullmatch(r"\d{1,3}(?:,\d{3})*", text) and int(text.replace(",", "")) == value \
            else f"'{text}' is not {value:,}"
    expected = "-" if value is None else str(value)  # verdict, init, seeds, k/N counts, baseline
    return None if text == expected else f"'{text}', expected '{expected}'"


def check_text_table(table: Table, expected: Expected) -> list[str]:
    rows = expected.rows
    columns = [c for c in TEXT_COLUMNS if c not in OPTIONAL or any(not missing(r[c]) for r in rows)]
    if table.header != columns:
        return [f"header {table.header}, expected {columns}"]
    if [r[0] for r in table.rows] != [r["baseline"] for r in rows]:
        return [f"rows {[r[0] for r in table.rows]}, expected {[r['baseline'] for r in rows]}"]
    errors = []
    for cells, exp in zip(table.rows, rows, strict=True):
        for column, text in zip(columns, cells, strict=True):
            problem = check_text_cell(column, text, exp)
            if problem:
                errors.append(f"{exp['baseline']}.{column}: {problem}")
    return errors


def check_note(baseline: str, kind: str | None, note: str | None) -> str | None:
    """A row's note: none for a complete row, the verdict for a failed cell, the window for a short grid, the
    stalled held-out seeds of a trained cell (kinds joined by +)."""
    if kind is None:
        return None if note is None else f"{baseline}: unexpected note '{note}'"
    if note is None:
        return f"{baseline}: no note, expected one ({kind})"
    kinds = kind.split("+")
    if "window" in kinds and not (note.startswith("the grid (") and "does not cover the sensitivity window" in note):
        return f"{baseline}: note '{note}' should say the grid misses the sensitivity window"
    if "heldout" in kinds and "held-out seeds stalled at best_lr" not in note:
        return f"{baseline}: note '{note}' should say the held-out seeds stalled"
    if kind == "failed" and not note.startswith("failed: "):
        return f"{baseline}: note '{note}' should start with the verdict"
    return None


def check_note_lines(lines: list[str], expected: Expected) -> list[str]:
    """The notes below a text table: the legend of the marks, then one line per row that has a note."""
    errors = [] if lines and lines[0].startswith("≤ / ≥") else [f"no legend of the marks first in {lines}"]
    rows = {r["baseline"]: r for r in expected.rows}
    for name, kind in expected.notes.items():
        mine = [line[len(name) + 2:] for line in lines[1:] if line.startswith(f"{name}: ")]
        if len(mine) > 1:
            errors.append(f"{name}: {len(mine)} note lines")
        problem = check_note(name, kind, mine[0] if mine else None)
        if problem:
            errors.append(problem)
        if kind == "failed" and mine and not mine[0].startswith(rows[name]["verdict"] + ":"):
            errors.append(f"{name}: note '{mine[0]}' does not start with its verdict {rows[name]['verdict']}")
    return errors


def check_raw_value(column: str, value: Any, exp_value: Any, csv_text: bool) -> str | None:
    """A CSV cell (text) or a JSON value against the recomputed raw value."""
    if csv_text:
        if exp_value is None or (isinstance(exp_value, float) and math.isnan(exp_value)):
            ok = value == ""  # documented as empty
            return None if ok else f"'{value}' for no value"
        if isinstance(exp_value, bool):
            return None if value == str(exp_value) else f"'{value}', expected {exp_value}"
        if isinstance(exp_value, (int, float)):
            try:
                number = float(value)
            except ValueError:
                return f"'{value}' is not a number ({exp_value})"
            return None if close(number, float(exp_value), rel=1e-7) else f"{value}, expected {exp_value}"
        return None if value == str(exp_value) else f"'{value}', expected '{exp_value}'"
    if exp_value is None or (isinstance(exp_value, float) and not math.isfinite(exp_value)):
        return None if value is None else f"{value!r}, expected null"
    if isinstance(exp_value, bool) or isinstance(exp_value, str):
        return None if value == exp_value else f"{value!r}, expected {exp_value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{value!r} is not a number ({exp_value})"
    return None if close(float(value), float(exp_value), rel=1e-7) else f"{value!r}, expected {exp_value!r}"


def check_raw_rows(rows: list[dict[str, Any]], header: list[str], expected: Expected, csv_text: bool) -> list[str]:
    if header != list(COLUMNS):
        return [f"columns {header}, expected the README's {list(COLUMNS)}"]
    if [r["baseline"] for r in rows] != [r["baseline"] for r in expected.rows]:
        return [f"rows {[r['baseline'] for r in rows]}, expected {[r['baseline'] for r in expected.rows]}"]
    errors = []
    for row, exp in zip(rows, expected.rows, strict=True):
        for column in COLUMNS:
            if column == "note":
                note = row[column] or None
                problem = check_note(exp["baseline"], expected.notes[exp["baseline"]], note)
            else:
                problem = check_raw_value(column, row[column], exp[column], csv_text)
            if problem:
                errors.append(f"{exp['baseline']}.{column}: {problem}")
    if not csv_text:  # a missed target is null in JSON, told by target_reached
        for row, exp in zip(rows, expected.rows, strict=True):
            if exp["steps_to_target"] is not None and math.isinf(exp["steps_to_target"]) \
                    and row["target_reached"] != exp["target_reached"]:
                errors.append(f"{exp['baseline']}: a missed target without its target_reached")
    return errors


def check_output(source: str, text: str, expected: Expected) -> list[str]:
    """Parse one output (named by where it came from) and compare every figure in it."""
    kind = source.split(":")[-1]
    if kind in ("github", "psql", "leaderboard.md", "stdout"):
        table = parse_pipe_table(text)
        return check_text_table(table, expected) + check_note_lines(table.notes, expected)
    if kind == "latex":
        return check_text_table(parse_latex(text), expected)
    if kind == "html":
        return check_text_table(parse_html(text), expected)
    if kind == "report.html":
        table = parse_html(text, section="leaderboard")
        return check_text_table(table, expected) + check_note_lines(table.notes, expected)
    if kind in ("csv", "leaderboard.csv"):
        reader = csv.DictReader(io.StringIO(text))
        rows = list(reader)
        return check_raw_rows(rows, list(reader.fieldnames or []), expected, csv_text=True)
    if kind in ("json", "leaderboard.json"):
        rows = json.loads(text)
        return check_raw_rows(rows, list(rows[0]) if rows else [], expected, csv_text=False)
    raise AssertionError(f"unknown output {source}")


# ======================================================================================== the outputs


def run_cli(*argv: str) -> str:
    """``normfree-bench ARGV`` in this process; its stdout (it must succeed)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(list(argv))
    assert rc == 0, f"normfree-bench {' '.join(argv)} exited {rc}"
    return buf.getvalue()


def outputs(run_dir: Path, formats: tuple[str, ...] = CLI_FORMATS) -> dict[str, str]:
    """The leaderboard files of ``run_dir``, ``leaderboard --format F`` for each format, and report.html
    (written by ``report``)."""
    out = {f"file:{name}": (run_dir / name).read_text() for name in
           ("leaderboard.md", "leaderboard.csv", "leaderboard.json")}
    for fmt in formats:
        out[f"cli:{fmt}"] = run_cli("leaderboard", str(run_dir), "--format", fmt)
    run_cli("report", str(run_dir))
    out["report.html"] = (run_dir / "report.html").read_text()
    return out


def fail_trials(run_dir: Path, chosen: Callable[[dict[str, str]], bool]) -> int:
    """Mark the trials of trials.csv that ``chosen`` picks as FAIL in the run's study.db (a crashed trial:
    the leaderboard ignores it); return how many."""
    run_name = yaml.safe_load((run_dir / "config.yaml").read_text())["run_name"]
    with (run_dir / "trials.csv").open(newline="") as fh:
        picked = [row["trial"].rsplit("-", 1) for row in csv.DictReader(fh) if chosen(row)]
    with contextlib.closing(sqlite3.connect(run_dir / "study.db")) as db, db:
        for label, number in picked:
            db.execute("UPDATE trials SET state = 'FAIL' WHERE number = ? AND study_id = "
                       "(SELECT study_id FROM studies WHERE study_name = ?)", (int(number), f"{run_name}:{label}"))
    return len(picked)


def strip_diagnostics(run_dir: Path) -> None:
    """Drop the per-trial diagnostics from a copied study.db: no leaderboard figure reads them, and they
    are most of what every read of the study parses (the fast tier reads it several times)."""
    with contextlib.closing(sqlite3.connect(run_dir / "study.db")) as db, db:
        db.execute("DELETE FROM trial_user_attributes WHERE key = 'diagnostics'")


def holes(row: dict[str, str]) -> bool:
    """The trials removed from results/default for the `holes` run: each leaves a mark or an empty figure."""
    b, phase, lr, seed = row["baseline"], row["phase"], float(row["lr"]), int(row["seed"])
    if phase == "tune":
        return ((b == "layernorm" and lr < 3e-3)  # best LR at the low edge; the grid misses the window
                or (b in ("nf", "rezero") and lr > 0.1)  # nf: best LR at the high edge; rezero: stable to the top
                or (b == "fixup" and row["diverged"] != "True"))  # fixup: only its diverged trials remain
    return (b == "rezero" and seed < 3) or b == "fixup"  # one held-out seed; none


@dataclass
class Generated:
    outputs: dict[str, str]
    expected: Expected


# name: (committed run, leaderboard --format formats). Each format costs a read of the study, so the
# formats that leaderboard.md/.csv/.json already show are asked of the CLI once, not for every run.
FAST_RUNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "default": ("default", ("psql", "latex", "html", "json")),
    "vision": ("vision", ("latex",)),
    "holes": ("default", ("psql", "html")),
    "post-ln": ("post-ln", ("psql",)),  # a reference whose held-out seeds stalled: a note, no target
}
FAST_CASES = [(run, src) for run, (_, fmts) in FAST_RUNS.items() for src in
              ("file:leaderboard.md", "file:leaderboard.csv", "file:leaderboard.json",
               *(f"cli:{f}" for f in fmts), "report.html")]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Generated]]:
    """A committed run copied and regenerated (tables written as a sweep writes them, plots kept), by name."""
    cache: dict[str, Generated] = {}

    def get(name: str) -> Generated:
        if name not in cache:
            committed, formats = FAST_RUNS[name]
            run_dir = tmp_path_factory.mktemp("figures") / name
            shutil.copytree(RESULTS / committed, run_dir, ignore=shutil.ignore_patterns("report.html", "analysis.*"))
            strip_diagnostics(run_dir)
            if name == "holes":
                assert fail_trials(run_dir, holes) > 0
            write_results(run_dir, plots=False)
            cache[name] = Generated(outputs(run_dir, formats), recompute(run_dir))
        return cache[name]

    yield get


# ============================================================================================== tests


@pytest.mark.parametrize(("run", "source"), FAST_CASES)
def test_every_figure_of_a_committed_run_matches_the_recomputation(
        generated: Callable[[str], Generated], run: str, source: str) -> None:
    g = generated(run)
    errors = check_output(source, g.outputs[source], g.expected)
    assert not errors, f"{run} {source}:\n" + "\n".join(errors)


def test_the_fast_runs_show_every_mark_and_empty_figure(generated: Callable[[str], Generated]) -> None:
    """The committed runs and their holed copy hold every case the checks above must see, so that a
    dropped mark or a wrong empty figure cannot pass unseen."""
    rows = [r for name in FAST_RUNS for r in generated(name).expected.rows]
    notes = [k for name in FAST_RUNS for k in generated(name).expected.notes.values()]
    cases = {
        "best LR at the low edge": any(r["best_lr_edge"] == "low" for r in rows),
        "best LR at the high edge": any(r["best_lr_edge"] == "high" for r in rows),
        "best LR inside the grid": any(r["best_lr_edge"] is None for r in rows),
        "censored basin": any(r["lr_basin_censored"] for r in rows),
        "uncensored basin": any(r["lr_basin_censored"] is False for r in rows),
        "max stable LR at the top": any(r["max_stable_lr_censored"] for r in rows),
        "max stable LR below the top": any(r["max_stable_lr_censored"] is False for r in rows),
        "failed: no learning": any(r["verdict"] == NO_LEARNING for r in rows),
        "failed: diverged": any(r["verdict"] == DIVERGED for r in rows),
        "grid missing the window": "window" in notes,
        "missed target": any(r["steps_to_target"] == math.inf for r in rows),
        "target reached by some seeds only": any(0 < (r["target_reached_count"] or 0) < int(r["target_reached"][2:])
                                                 for r in rows if r["target_reached"]),
        "held-out ci95": any(r["heldout_loss_ci95"] is not None for r in rows),
        "one held-out seed": any(r["heldout_seeds"] is not None and r["heldout_loss_ci95"] is None for r in rows),
        "no held-out seed": any(r["heldout_seeds"] is None for r in rows),
        "Holm-corrected p-values": sum(r["p_vs_reference"] is not None for r in rows) >= 3,
        "accuracies": any(r["best_val_accuracy"] is not None for r in rows),
    }
    assert all(cases.values()), [k for k, v in cases.items() if not v]


def test_the_columns_are_the_readmes() -> None:
    """COLUMNS above is the README's table of leaderboard columns, in its order."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Leaderboard columns"):]
    section = section[:section.index("\n## ")]
    assert tuple(re.findall(r"^\| `(\w+)` \|", section, re.M)) == COLUMNS


def test_the_recomputation_by_hand() -> None:
    """The independent recomputation itself, on figures worked out by hand from results/default."""
    g = recompute(RESULTS / "default")
    layernorm = g.rows[0]
    assert layernorm["baseline"] == "layernorm" and layernorm["best_lr"] == 0.003
    assert layernorm["best_val_loss"] == pytest.approx(2.551084041595459)  # trials.csv, layernorm-1
    held = [2.6078147888183594, 2.6083879470825195, 2.572065830230713]  # layernorm:eval-0..2
    sd = math.sqrt(sum((x - sum(held) / 3) ** 2 for x in held) / 2)
    assert layernorm["heldout_loss_ci95"] == pytest.approx(4.302652729911275 * sd / math.sqrt(3))  # t(0.975, 2)
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert ones_and_threes(3e-4, 3e-1) == [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
    assert first_reach([(50, 3.0), (100, 2.0), (150, 1.0)], 1.5, 5.5) == 125.0
    assert first_reach([(50, math.inf), (100, 1.0)], 1.5, 5.5) == 100.0
    assert seeds_text([0, 1, 2]) == "0-2" and seeds_text([0, 2, 5]) == "0, 2, 5"


# ------------------------------------------------------------------------------------------ slow tier


def test_every_figure_of_the_smoke_run(smoke_dir: Path, tmp_path: Path) -> None:
    """The session's smoke run (written by ``run``), every format and the report."""
    run_dir = tmp_path / "smoke"
    shutil.copytree(smoke_dir, run_dir, ignore=shutil.ignore_patterns("report.html"))
    expected = recompute(run_dir)
    errors = [f"{src}: {e}" for src, text in outputs(run_dir).items() for e in check_output(src, text, expected)]
    assert not errors, "\n".join(errors)


@pytest.mark.slow
def test_every_figure_of_a_two_seed_run(tmp_path: Path) -> None:
    """A small run with two tuning and two held-out seeds, so that every std, ci95 and p-value is filled."""
    with private_cache(tmp_path) as root:
        corpus = write_word_corpus(root / "corpus.txt", n_words=20000)
        cfg = {"model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "context_length": 16},
               "data": {"corpus": str(corpus), "batch_size": 4, "val_windows": 8},
               "train": {"steps": 30, "warmup_steps": 2, "eval_interval": 10, "log_interval": 5, "threads": 1},
               "guard": {"margin": 1.0, "patience": 3},
               "sweep": {"lrs": [3e-4, 3e-3, 3e-2, 3e-1], "seeds": 2, "eval_seeds": 2,
                         "baselines": ["layernorm", "dyt", "rezero"]}}
        (root / "two.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        run_dir = root / "two"
        printed = run_cli("run", "--config", str(root / "two.yaml"), "--out", str(run_dir), "--no-progress")
        expected = recompute(run_dir)
        found = {"run:stdout": printed, **outputs(run_dir)}
    assert all(r["best_val_loss_ci95"] is not None and r["tuning_seeds"] == "0-1" for r in expected.rows)
    assert all(r["heldout_loss_ci95"] is not None and r["heldout_seeds"] == "2-3" for r in expected.rows)
    assert sum(r["p_vs_reference"] is not None for r in expected.rows) == 2
    errors = [f"{src}: {e}" for src, text in found.items() for e in check_output(src, text, expected)]
    assert not errors, "\n".join(errors)
