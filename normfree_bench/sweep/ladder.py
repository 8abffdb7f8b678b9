"""The ladder: one benchmark at a sequence of widths ("rungs"), each rung an ordinary run directory.

Usage: ``ladder = load_ladder(suite_path("ladder-smoke")); run_ladder(ladder, Path("runs/ladder-smoke"))``

A ladder suite is an ordinary suite (the first rung's model, data, training, guard and sweep) plus a
``ladder`` section (`LadderConfig`). Rung ``i`` is the suite's config with these rules:

- **Width**: ``model.d_model`` = ``ladder.widths[i]``, ``model.n_heads`` = d_model / ``ladder.head_dim``
  (the head width stays fixed); depth, context, batch and everything else as the suite (a width ladder).
- **Length**: the rung trains on ``ladder.tokens_per_param`` x N0 x (N / N0) ^ ``ladder.token_exponent``
  tokens, N the parameter count of the reference scheme's model at that width and N0 at the first rung. With
  the default exponent 1 that is a fixed ``tokens_per_param`` x N; an exponent below 1 gives the wider rungs
  fewer tokens per parameter (a budget that fits a CPU, and a ladder at a sub-proportional budget).
  ``train.steps`` = floor(tokens / (batch_size x context_length)); warm-up, evaluation and logging
  intervals and the guard's patience keep the fraction of the run they have in the suite (rounded, at least
  1 step).
- **LR grid**: the first rung sweeps the suite's grid. Each later rung gives every scheme its own grid
  (``sweep.lrs_by_baseline``): ``ladder.zoom_points`` log-spaced LRs over +- ``ladder.zoom_half_width``
  decades around the scheme's best LR at the previous rung; a scheme that did not train there (no best LR
  worth centring on) gets the suite's grid again.
- **Widening**: from the second rung on, when a trained scheme's best LR lies at an edge of its grid (zoomed,
  or the suite's for a scheme that did not train at the previous rung), the grid is widened once, by
  ``zoom_half_width`` decades (at least one step) on that side at the same spacing, and the scheme is swept again on
  the widened grid in a second ordinary run directory, ``<rung>-widened``; the rung's figures for that scheme
  are that run's. A best LR still at the edge stays censored (the leaderboard flags it).

Rung directories are ``<ladder dir>/d<width>`` (and ``d<width>-widened``); each is an ordinary run directory,
so ``leaderboard``, ``analyze``, ``report``, ``--workers`` and ``--storage`` work on it, and re-running the
ladder command resumes: a finished rung is read back, not trained again (its grid is re-derived from the
previous rung's results, so the rung's config, and its run, are the same).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from normfree_bench.config import RunConfig, build_dataclass, merge, read_yaml
from normfree_bench.errors import UserError

Rows = list[dict[str, Any]]


@dataclass(frozen=True)
class LadderConfig:
    """The rungs and the rules that size them (see the module docstring)."""

    widths: list[int] = field(default_factory=list)  # d_model per rung, strictly increasing
    head_dim: int = 16  # n_heads = d_model / head_dim at every rung
    tokens_per_param: float = 1.0  # training tokens per parameter of the reference scheme's model (first rung)
    token_exponent: float = 1.0  # tokens grow as (N / N0) ^ token_exponent; 1: a fixed tokens_per_param
    zoom_half_width: float = 0.5  # decades either side of the previous rung's best LR
    zoom_points: int = 5  # LRs per zoomed grid
    gap_tol: float = 0.02  # nats: a smaller change of the gap to the reference counts as stable

    def __post_init__(self) -> None:
        w = self.widths
        if len(w) < 2:
            raise UserError(f"ladder.widths must list at least two widths, got {w}")
        if any(not isinstance(x, int) or x < 1 for x in w):
            raise UserError(f"ladder.widths must be positive integers, got {w}")
        if any(b <= a for a, b in zip(w, w[1:])):
            raise UserError(f"ladder.widths must grow from rung to rung, got {w}")
        if self.head_dim < 1 or any(x % self.head_dim for x in w):
            raise UserError(f"every ladder width must be a multiple of ladder.head_dim={self.head_dim}, got {w}")
        if not (math.isfinite(self.tokens_per_param) and self.tokens_per_param > 0):
            raise UserError(f"ladder.tokens_per_param must be a finite number > 0, got {self.tokens_per_param}")
        if not (math.isfinite(self.token_exponent) and 0 < self.token_exponent <= 1):
            raise UserError(f"ladder.token_exponent must be in (0, 1] (tokens grow with parameters, at most in "
                            f"proportion), got {self.token_exponent}")
        if not (math.isfinite(self.zoom_half_width) and self.zoom_half_width > 0):
            raise UserError(f"ladder.zoom_half_width must be > 0 decades, got {self.zoom_half_width}")
        if not (math.isfinite(self.gap_tol) and self.gap_tol >= 0):
            raise UserError(f"ladder.gap_tol must be >= 0 nats, got {self.gap_tol}")
        if self.zoom_points < 2:
            raise UserError(f"ladder.zoom_points must be >= 2, got {self.zoom_points}")


@dataclass(frozen=True)
class Ladder:
    base: RunConfig  # the first rung's config, as the suite gives it
    ladder: LadderConfig
    name: str


def load_ladder(path: str | Path, overrides: dict[str, Any] | None = None) -> Ladder:
    """A ladder suite (its ``ladder`` section and the run config beside it), with ``--set`` overrides."""
    data = merge(read_yaml(path), overrides or {})
    section = data.pop("ladder", None)
    if section is None:
        raise UserError(f"{path} has no 'ladder' section; a ladder suite names its widths there "
                        "(see configs/ladder-smoke.yaml)")
    return Ladder(build_dataclass(RunConfig, data, "config"), build_dataclass(LadderConfig, section, "ladder"),
                  Path(path).stem)


def log_grid(lo: float, hi: float, points: int) -> list[float]:
    """``points`` log-spaced LRs from ``lo`` to ``hi`` inclusive, to 6 significant digits."""
    a, b = math.log10(lo), math.log10(hi)
    return [float(f"{10 ** (a + i * (b - a) / (points - 1)):.6g}") for i in range(points)]


def zoomed_grid(centre: float, half_width: float, points: int) -> list[float]:
    """``points`` LRs over ``centre`` x 10^(+-half_width)."""
    return log_grid(centre * 10 ** -half_width, centre * 10 ** half_width, points)


def widened_grid(grid: list[float], edge: str, half_width: float) -> list[float]:
    """``grid`` extended by ``half_width`` decades beyond its ``edge`` (``low`` or ``high``) at its own spacing."""
    step = (math.log10(grid[-1]) - math.log10(grid[0])) / (len(grid) - 1)
    extra = max(1, round(half_width / step))
    if edge == "low":
        return [float(f"{grid[0] * 10 ** (-k * step):.6g}") for k in range(extra, 0, -1)] + grid
    return grid + [float(f"{grid[-1] * 10 ** (k * step):.6g}") for k in range(1, extra + 1)]


def rung_name(width: int, widened: bool = False) -> str:
    return f"d{width}" + ("-widened" if widened else "")


def scaled(value: int, fraction: float) -> int:
    return max(1, round(value * fraction))


def sized_config(ladder: Ladder, i: int) -> RunConfig:
    """The suite's config at rung ``i``'s width (the width rule alone)."""
    width = ladder.ladder.widths[i]
    return replace(ladder.base, model=replace(ladder.base.model, d_model=width,
                                              n_heads=width // ladder.ladder.head_dim))


def rung_tokens(ladder: Ladder, n: int, n0: int) -> float:
    """Training tokens of a rung whose reference model has ``n`` parameters (``n0`` at the first rung)."""
    lad = ladder.ladder
    return lad.tokens_per_param * n0 * (n / n0) ** lad.token_exponent


def rung_config(ladder: Ladder, i: int, grids: dict[str, list[float]], count_params: Callable[[RunConfig], int],
                ) -> RunConfig:
    """Rung ``i``'s run config: the width and length rules, and ``grids`` as the per-scheme LR grids."""
    base, lad = ladder.base, ladder.ladder
    width = lad.widths[i]
    sized = sized_config(ladder, i)
    model = sized.model
    n, n0 = count_params(sized), count_params(sized_config(ladder, 0))
    per_step = base.data.batch_size * base.model.context_length
    steps = math.floor(rung_tokens(ladder, n, n0) / per_step)
    if steps < 1:
        raise UserError(f"ladder.tokens_per_param={lad.tokens_per_param:g} gives 0 training steps at width {width} "
                        f"({n} parameters, {per_step} tokens per step); valid: at least "
                        f"{per_step / n0:.3g} tokens per parameter")
    frac = steps / base.train.steps
    train = replace(base.train, steps=steps, warmup_steps=min(steps, round(base.train.warmup_steps * frac)),
                    eval_interval=scaled(base.train.eval_interval, frac),
                    log_interval=scaled(base.train.log_interval, frac))
    guard = replace(base.guard, patience=scaled(base.guard.patience, frac))
    sweep = replace(base.sweep, lrs_by_baseline={k: list(v) for k, v in sorted(grids.items())})
    description = (f"{ladder.name} rung {i + 1}/{len(lad.widths)}: d_model={width}, n_heads={model.n_heads}, "
                   f"{n} parameters ({base.sweep.reference}), {steps} steps")
    return replace(sized, train=train, guard=guard, sweep=sweep, description=description)


def next_grids(ladder: Ladder, rows: Rows, baselines: list[str]) -> dict[str, list[float]]:
    """Each scheme's grid for the next rung, from this rung's final leaderboard rows (one per scheme): zoomed on
    its best LR, or the suite's grid for a scheme that did not train."""
    lad = ladder.ladder
    by_name = {r["baseline"]: r for r in rows}
    grids = {}
    for name in baselines:
        row = by_name.get(name)
        if row is not None and row.get("verdict") == "trained" and row.get("best_lr"):
            grids[name] = zoomed_grid(float(row["best_lr"]), lad.zoom_half_width, lad.zoom_points)
        else:
            grids[name] = ladder.base.sweep.lr_grid()
    return grids


def to_widen(rows: Rows, grids: dict[str, list[float]]) -> dict[str, str]:
    """Scheme -> edge (``low``/``high``) for every trained scheme whose best LR sits at an edge of its grid."""
    out = {}
    for r in rows:
        grid = grids.get(r["baseline"])
        if grid is None or r.get("verdict") != "trained" or not r.get("best_lr"):
            continue
        lr = float(r["best_lr"])
        if math.isclose(lr, grid[0], rel_tol=1e-6):
            out[r["baseline"]] = "low"
        elif math.isclose(lr, grid[-1], rel_tol=1e-6):
            out[r["baseline"]] = "high"
    return out


def check_rungs(ladder: Ladder, count_params: Callable[[RunConfig], int]) -> list[RunConfig]:
    """Every rung's config on the suite's grid: the width and length rules checked before any training."""
    return [rung_config(ladder, i, {}, count_params) for i in range(len(ladder.ladder.widths))]


def run_ladder(ladder: Ladder, out: Path, run_rung: Callable[[RunConfig, Path], Rows],
               count_params: Callable[[RunConfig], int], baselines: list[str]) -> list[dict[str, Any]]:
    """Every rung in order (``run_rung`` trains or resumes one run directory and returns its leaderboard rows),
    widening a later rung's grid once where a scheme's best LR sits at its edge. Returns one dict per rung:
    ``width``, ``config``, ``rows`` (one per scheme, after widening), ``dirs`` and ``widened`` (scheme -> edge)."""
    check_rungs(ladder, count_params)
    lad = ladder.ladder
    rungs: list[dict[str, Any]] = []
    grids: dict[str, list[float]] = {}  # each scheme's grid from the second rung on (the first sweeps the suite's)
    for i, width in enumerate(lad.widths):
        cfg = rung_config(ladder, i, grids, count_params)
        rows = run_rung(cfg, out / rung_name(width))
        dirs = [rung_name(width)]
        edges = to_widen(rows, grids)
        if edges:
            wide = {name: widened_grid(grids[name], edge, lad.zoom_half_width) for name, edge in edges.items()}
            wide_cfg = replace(cfg, description=cfg.description + f" (widened: {', '.join(sorted(edges))})",
                               sweep=replace(cfg.sweep, baselines=sorted(edges), lrs_by_baseline=wide))
            wide_rows = run_rung(wide_cfg, out / rung_name(width, widened=True))
            rows = [r for r in rows if r["baseline"] not in edges] + wide_rows
            dirs.append(rung_name(width, widened=True))
        rungs.append({"width": width, "config": cfg, "rows": rows, "dirs": dirs, "widened": edges})
        if i + 1 < len(lad.widths):
            grids = next_grids(ladder, rows, baselines)
    return rungs
