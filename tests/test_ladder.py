"""The ladder: rung sizing rules, zoomed and widened grids, the cross-rung figures, and a real ladder-smoke run.

Usage: ``.venv/bin/python -m pytest tests/test_ladder.py -q``
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from normfree_bench.cli import reference_params
from normfree_bench.config.suites import suite_path
from normfree_bench.sweep.ladder import (
    check_rungs,
    load_ladder,
    run_ladder,
    widened_grid,
    zoomed_grid,
)
from normfree_bench.tables.ladder import ladder_summary, ranks
from tests.conftest import cli, html_tables, without_later_keys


def smoke_ladder(**ladder_overrides):
    return load_ladder(suite_path("ladder-smoke"), {"ladder": ladder_overrides} if ladder_overrides else None)


# ---- sizing rules --------------------------------------------------------------------------------
def test_each_rung_follows_the_width_and_token_rules() -> None:
    ladder = smoke_ladder()
    cfgs = check_rungs(ladder, reference_params)
    base = ladder.base
    for cfg, width in zip(cfgs, (16, 32)):
        assert cfg.model.d_model == width and cfg.model.n_heads == width // 8
        assert cfg.model.n_layers == base.model.n_layers and cfg.model.context_length == base.model.context_length
        n = reference_params(cfg)
        steps = math.floor(1.0 * n / (base.data.batch_size * base.model.context_length))
        assert cfg.train.steps == steps
        frac = steps / base.train.steps
        assert cfg.train.warmup_steps == round(base.train.warmup_steps * frac)
        assert cfg.train.eval_interval == max(1, round(base.train.eval_interval * frac))
        assert cfg.guard.patience == max(1, round(base.guard.patience * frac))
    assert cfgs[1].train.steps > cfgs[0].train.steps  # more parameters, more tokens


def test_a_token_exponent_below_one_gives_wider_rungs_fewer_tokens_per_parameter() -> None:
    ladder = smoke_ladder(token_exponent=0.5, tokens_per_param=2.0)
    cfgs = check_rungs(ladder, reference_params)
    n0, n1 = (reference_params(c) for c in cfgs)
    per_step = ladder.base.data.batch_size * ladder.base.model.context_length
    assert cfgs[0].train.steps == math.floor(2.0 * n0 / per_step)
    assert cfgs[1].train.steps == math.floor(2.0 * n0 * math.sqrt(n1 / n0) / per_step)
    assert cfgs[1].train.steps * per_step / n1 < cfgs[0].train.steps * per_step / n0


def test_zoomed_grid_is_centred_in_log_space_and_widening_keeps_the_spacing() -> None:
    assert zoomed_grid(1e-2, 0.5, 3) == pytest.approx([10 ** -2.5, 1e-2, 10 ** -1.5], rel=1e-5)
    grid = zoomed_grid(1e-3, 1.0, 5)  # half-decade spacing
    assert widened_grid(grid, "high", 1.0) == pytest.approx(grid + [10 ** -1.5, 1e-1], rel=1e-5)
    assert widened_grid(grid, "low", 0.5) == pytest.approx([10 ** -4.5, *grid], rel=1e-5)


@pytest.mark.parametrize("setting, message", [
    ("ladder.widths=[32,16]", "ladder.widths must grow from rung to rung"),
    ("ladder.widths=[16,16]", "ladder.widths must grow from rung to rung"),
    ("ladder.widths=[16]", "at least two widths"),
    ("ladder.widths=[16,36]", "multiple of ladder.head_dim=8"),
    ("ladder.tokens_per_param=0.00001", "gives 0 training steps at width 16"),
    ("ladder.tokens_per_param=0", "ladder.tokens_per_param must be a finite number > 0"),
    ("ladder.zoom_half_width=0", "ladder.zoom_half_width must be > 0 decades"),
    ("ladder.zoom_half_width=-1", "ladder.zoom_half_width must be > 0 decades"),
    ("ladder.zoom_points=1", "ladder.zoom_points must be >= 2"),
    ("ladder.token_exponent=0", "ladder.token_exponent must be in (0, 1]"),
    ("ladder.token_exponent=1.5", "ladder.token_exponent must be in (0, 1]"),
    ("ladder.gap_tol=-0.1", "ladder.gap_tol must be >= 0"),
])
def test_bad_ladder_configs_exit_2_with_one_line_before_any_work(tmp_path, capsys, setting: str, message: str) -> None:
    out = tmp_path / "lad"
    rc, _, err = cli(["ladder", "--suite", "ladder-smoke", "--out", str(out), "--set", setting, "--no-progress"],
                     capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_plain_suite_is_not_a_ladder_and_a_ladder_suite_is_not_a_run(tmp_path, capsys) -> None:
    rc, _, err = cli(["ladder", "--suite", "smoke", "--out", str(tmp_path / "a")], capsys)
    assert rc == 2 and "has no 'ladder' section" in err
    rc, _, err = cli(["run", "--suite", "ladder-smoke", "--out", str(tmp_path / "b")], capsys)
    assert rc == 2 and "is a ladder suite" in err and "normfree-bench ladder" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---- zooming and widening, with a stand-in for the training ----------------------------------------
def test_zoomed_grids_centre_on_the_previous_best_and_an_edge_widens_once(tmp_path) -> None:
    ladder = smoke_ladder(widths=[16, 32, 64])
    calls = []

    def run_rung(cfg, rung_dir: Path) -> list[dict]:
        """Rows as a sweep would report them: layernorm's best LR at the top of whatever grid it gets,
        dyt trains only at width 64, at the bottom of its grid, rezero's best at its grid's centre."""
        calls.append((rung_dir.name, cfg))
        rows = []
        for name in cfg.sweep.baselines:
            grid = cfg.sweep.lr_grid(name)
            if name == "layernorm":
                rows.append({"baseline": name, "verdict": "trained", "best_lr": grid[-1], "best_val_loss": 2.0})
            elif name == "dyt":
                rows.append({"baseline": name, "verdict": "trained" if cfg.model.d_model == 64 else
                             "failed: no learning", "best_lr": grid[0], "best_val_loss": 5.0})
            else:
                rows.append({"baseline": name, "verdict": "trained", "best_lr": grid[len(grid) // 2],
                             "best_val_loss": 2.5})
        return rows

    rungs = run_ladder(ladder, tmp_path, run_rung, reference_params, ["layernorm", "dyt", "rezero"])
    names = [c[0] for c in calls]
    # rung 1 on the suite's grid: layernorm at its top edge is not widened (the first rung is not zoomed)
    assert names == ["d16", "d32", "d32-widened", "d64", "d64-widened"]
    d32 = calls[1][1].sweep
    assert d32.lr_grid("layernorm") == pytest.approx(zoomed_grid(0.1, 0.5, 3))
    assert d32.lr_grid("rezero") == pytest.approx(zoomed_grid(0.01, 0.5, 3))
    assert d32.lr_grid("dyt") == [0.001, 0.01, 0.1]  # never trained: the suite's grid again
    wide = calls[2][1].sweep
    assert wide.baselines == ["layernorm"]
    assert wide.lr_grid("layernorm") == pytest.approx(widened_grid(zoomed_grid(0.1, 0.5, 3), "high", 0.5))
    assert rungs[1]["widened"] == {"layernorm": "high"} and rungs[1]["dirs"] == ["d32", "d32-widened"]
    # the rung's layernorm row is the widened run's, and the next rung centres on it
    assert [r["best_lr"] for r in rungs[1]["rows"] if r["baseline"] == "layernorm"] == [wide.lr_grid("layernorm")[-1]]
    assert calls[3][1].sweep.lr_grid("layernorm") == pytest.approx(zoomed_grid(wide.lr_grid("layernorm")[-1], 0.5, 3))
    # a scheme that trains for the first time, at an edge of the suite's grid, is widened too
    last = calls[4][1].sweep
    assert last.baselines == ["dyt", "layernorm"] and rungs[2]["widened"] == {"layernorm": "high", "dyt": "low"}
    assert last.lr_grid("dyt") == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])  # one step (a decade) below


# ---- cross-rung figures ----------------------------------------------------------------------------
def row(name: str, loss: float | None, lr: float, trained: bool = True, ci: float | None = None) -> dict:
    return {"baseline": name, "verdict": "trained" if trained else "failed: no learning", "best_val_loss": loss,
            "best_val_loss_ci95": ci, "best_lr": lr}


def test_ranks_put_failed_schemes_last_and_tied() -> None:
    cells = {"a": {"loss": 2.0, "trained": True}, "b": {"loss": 1.0, "trained": True},
             "c": {"loss": 0.5, "trained": False}, "d": {"loss": None, "trained": False}}
    assert ranks(cells) == {"b": 1.0, "a": 2.0, "c": 3.5, "d": 3.5}


def test_ladder_summary_against_hand_computed_figures() -> None:
    rungs = [
        {"width": 64, "rows": [row("layernorm", 2.5, 3e-3, ci=0.02), row("dyt", 3.3, 1e-3, trained=False),
                               row("nf", 2.6, 1e-2, ci=0.02), row("rezero", 2.7, 3e-3)]},
        {"width": 128, "rows": [row("layernorm", 2.3, 1.5e-3, ci=0.02), row("dyt", 2.45, 1e-3),
                                row("nf", 2.55, 5e-3, ci=0.02), row("rezero", 2.4, 1.5e-3)]},
        {"width": 256, "rows": [row("layernorm", 2.1, 7.5e-4, ci=0.02), row("dyt", 2.2, 5e-4),
                                row("nf", 2.41, 2.5e-3, ci=0.02), row("rezero", 2.2, 7.5e-4)]},
    ]
    s = ladder_summary(rungs, "layernorm", gap_tol=0.02)
    cell = {(c["width"], c["baseline"]): c for c in s["cells"]}
    assert cell[(64, "nf")]["gap_to_reference"] == pytest.approx(0.1)
    assert cell[(64, "nf")]["gap_ci95"] == pytest.approx(math.hypot(0.02, 0.02))
    assert cell[(64, "rezero")]["gap_ci95"] is None  # no CI on rezero's loss
    assert cell[(64, "dyt")]["gap_to_reference"] is None and cell[(64, "dyt")]["rank"] == 4.0
    # ranks 64: ln 1, nf 2, rezero 3, dyt 4; 128: ln 1, rezero 2, dyt 3, nf 4; 256: ln 1, dyt/rezero 2.5, nf 4
    assert [cell[(256, n)]["rank"] for n in ("layernorm", "dyt", "rezero", "nf")] == [1.0, 2.5, 2.5, 4.0]
    d = [0 - 0, 4 - 3, 2 - 4, 3 - 2]  # rank differences 64 -> 128 (ln, dyt, nf, rezero)
    rho = 1 - 6 * sum(x * x for x in d) / (4 * (16 - 1))
    assert s["spearman"][0]["spearman_rho"] == pytest.approx(rho)
    assert s["flips"] == [{"baseline": "dyt", "from": 64, "to": 128, "change": "failed -> trained"}]
    by = {x["baseline"]: x for x in s["schemes"]}
    assert by["layernorm"]["lr_width_slope"] == pytest.approx(-1.0, abs=1e-9)  # LR halves per doubling
    assert by["dyt"]["lr_width_slope"] == pytest.approx(-1.0, abs=1e-9)  # trained rungs only: 128 and 256
    assert by["dyt"]["trained_at"] == [128, 256]
    assert by["nf"]["gap_verdict"] == "growing"  # 0.10 -> 0.31, beyond 0.02 and the CI band (0.04)
    assert by["rezero"]["gap_verdict"] == "shrinking"  # 0.20 -> 0.10
    assert by["dyt"]["gap_verdict"] == "shrinking"  # 0.15 -> 0.10 at its two trained rungs, no CI
    assert by["layernorm"]["gap_verdict"] == "reference"


def test_ladder_plots_draw_the_summary_figures() -> None:
    from normfree_bench.tables.ladder_plots import ladder_figures

    rungs = [{"width": 64, "rows": [row("layernorm", 2.5, 3e-3), row("dyt", 3.3, 1e-3, trained=False)]},
             {"width": 128, "rows": [row("layernorm", 2.3, 1.5e-3), row("dyt", 2.45, 1e-3)]}]
    figs = ladder_figures(ladder_summary(rungs, "layernorm", gap_tol=0.02))
    assert set(figs) == {"ladder_loss", "ladder_gap", "ladder_lr", "ladder_ranks"}

    def lines(name: str) -> dict[str, tuple[list, list]]:
        ax = figs[name].axes[0]
        assert ax.get_xscale() == "log" and ax.get_xlabel() == "d_model"
        labelled = [(ln.get_label(), ln) for ln in ax.get_lines() if not ln.get_label().startswith("_")]
        labelled += [(c.get_label(), c.lines[0]) for c in ax.containers]  # errorbar: the label is the container's
        return {label: (list(ln.get_xdata()), list(ln.get_ydata())) for label, ln in labelled}

    loss = lines("ladder_loss")
    assert loss["layernorm"] == ([64, 128], [2.5, 2.3]) and loss["dyt"] == ([128], [2.45])  # trained rungs only
    ax = figs["ladder_loss"].axes[0]
    from matplotlib.collections import PathCollection

    marks = [list(c.get_offsets()[0]) for c in ax.collections if isinstance(c, PathCollection)]  # scatter marks
    top = 2.5 + 0.08 * (2.5 - 2.3)  # above every trained loss of the ladder by 8 % of their span
    assert marks == [[64, pytest.approx(top)]]  # dyt's failed cell at width 64, and no other
    assert [(t.get_text(), t.xy) for t in ax.texts] == [("dyt", (64, pytest.approx(top)))]
    assert lines("ladder_gap")["dyt"][1] == pytest.approx([0.15])
    lr = lines("ladder_lr")
    assert lr["layernorm (slope -1.00)"] == ([64, 128], [3e-3, 1.5e-3])
    assert figs["ladder_lr"].axes[0].get_yscale() == "log"
    ranks_ = lines("ladder_ranks")
    assert ranks_["dyt"] == ([64, 128], [2.0, 2.0]) and ranks_["layernorm"] == ([64, 128], [1.0, 1.0])
    assert figs["ladder_ranks"].axes[0].yaxis_inverted()


def test_a_gap_change_inside_its_confidence_band_is_stable() -> None:
    rungs = [{"width": w, "rows": [row("layernorm", 2.0, 1e-3, ci=0.05), row("nf", 2.0 + g, 1e-3, ci=0.05)]}
             for w, g in ((64, 0.10), (128, 0.15))]
    s = ladder_summary(rungs, "layernorm", gap_tol=0.02)
    assert s["schemes"][1]["gap_verdict"] == "stable"  # moved 0.05 < hypot(0.0707, 0.0707) = 0.1
    s = ladder_summary([{**r, "rows": [{**x, "best_val_loss_ci95": None} for x in r["rows"]]} for r in rungs],
                       "layernorm", gap_tol=0.02)
    assert s["schemes"][1]["gap_verdict"] == "growing"  # no CI: only gap_tol


def test_report_refuses_a_broken_ladder_summary_in_one_line(tmp_path, capsys) -> None:
    (tmp_path / "ladder.json").write_text('{"widths": [16, 32]}')
    rc, _, err = cli(["report", str(tmp_path)], capsys)
    assert rc == 2 and "is not a ladder summary" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "ladder.json").write_text("{not json")
    rc, _, err = cli(["report", str(tmp_path)], capsys)
    assert rc == 2 and "cannot be read as a ladder summary" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "report.html").exists()


# ---- a real ladder-smoke run --------------------------------------------------------------------------
@pytest.mark.slow
def test_ladder_smoke_runs_resumes_and_reports_each_rung(tmp_path, capsys) -> None:
    out = tmp_path / "lad"
    rc, stdout, err = cli(["ladder", "--suite", "ladder-smoke", "--out", str(out), "--no-progress"], capsys)
    assert rc == 0, err
    summary = json.loads((out / "ladder.json").read_text())
    assert summary["widths"] == [16, 32]
    for rung in summary["rungs"]:
        for d in rung["dirs"]:
            assert (out / d / "leaderboard.csv").is_file()
    # the cells are the rung directories' leaderboards (the widened run's rows replacing the zoomed run's)
    for rung in summary["rungs"]:
        rows = {}
        for d in rung["dirs"]:
            with open(out / d / "leaderboard.csv") as fh:
                rows |= {r["baseline"]: r for r in csv.DictReader(fh)}
        for c in (c for c in summary["cells"] if c["width"] == rung["width"]):
            r = rows[c["baseline"]]
            assert c["verdict"] == r["verdict"]
            assert c["loss"] == pytest.approx(float(r["best_val_loss"]))
    # the second rung's grids are centred on the first rung's best LRs of the trained schemes
    first = {c["baseline"]: c for c in summary["cells"] if c["width"] == 16}
    grids = summary["rungs"][1]["lr_grids"]
    for name, c in first.items():
        if c["verdict"] == "trained":
            assert grids[name][1] == pytest.approx(c["best_lr"], rel=1e-5)
        else:
            assert grids[name] == [0.001, 0.01, 0.1]
    for name in ("ladder_loss", "ladder_gap", "ladder_lr", "ladder_ranks"):
        assert (out / "plots" / f"{name}.png").is_file()
    assert "Rank agreement" in stdout
    # the ladder's report: the verdict table as computed, the four plots, and every rung's own report linked
    rc, _, err = cli(["report", str(out)], capsys)
    assert rc == 0, err
    page = (out / "report.html").read_text()
    tables = html_tables(page)
    verdicts = {r[0]: r for r in tables[0][1:]}
    for s in summary["schemes"]:
        assert verdicts[s["baseline"]][3] == s["gap_verdict"]
        assert verdicts[s["baseline"]][1] == (", ".join(map(str, s["trained_at"])) or "–")
    assert len(tables[1]) == 1 + len(summary["cells"])
    assert page.count("data:image/png;base64,") == 4
    for rung in summary["rungs"]:
        for d in rung["dirs"]:
            assert f'href="{d}/report.html"' in page and (out / d / "report.html").is_file()
    # re-running resumes: no rung trains again
    trials_before = {d: (out / d / "trials.csv").read_text() for r in summary["rungs"] for d in r["dirs"]}
    rc, _, err = cli(["ladder", "--suite", "ladder-smoke", "--out", str(out), "--no-progress"], capsys)
    assert rc == 0, err
    assert {d: (out / d / "trials.csv").read_text() for d in trials_before} == trials_before


# ---- per-baseline LR grids (sweep.lrs_by_baseline) ---------------------------------------------------
def test_per_baseline_grids_replace_the_shared_one_and_keep_old_hashes() -> None:
    from normfree_bench.config import RunConfig, config_hash, load_run_config, parse_set
    from normfree_bench.sweep.grid import search_space

    cfg = RunConfig()
    assert cfg.config_hash() == config_hash(without_later_keys(cfg.to_dict()))  # old runs still resume
    own = load_run_config(suite_path("smoke"), parse_set(["sweep.lrs_by_baseline={dyt: [0.3, 0.03]}"]))
    assert search_space(own, "dyt")["lr"] == [0.03, 0.3]
    assert search_space(own, "layernorm")["lr"] == [0.001, 0.01, 0.1]
    assert own.sweep_hash() != load_run_config(suite_path("smoke")).sweep_hash()


@pytest.mark.parametrize("setting, message", [
    ("sweep.lrs_by_baseline={dyt: []}", "sweep.lrs_by_baseline.dyt must be a non-empty list"),
    ("sweep.lrs_by_baseline={dyt: [0.01, -1]}", "sweep.lrs_by_baseline.dyt must be a non-empty list"),
    ("sweep.lrs_by_baseline={dyt: [abc, true]}", "sweep.lrs_by_baseline.dyt must be a non-empty list"),
    ("sweep.lrs_by_baseline={nosuch: [0.01]}", "sweep.lrs_by_baseline names 'nosuch', which this sweep does not"),
])
def test_bad_per_baseline_grids_exit_2_before_any_work(tmp_path, capsys, setting: str, message: str) -> None:
    out = tmp_path / "run"
    rc, _, err = cli(["run", "--suite", "smoke", "--out", str(out), "--set", setting, "--no-progress"], capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("command", ["run", "ladder"])
@pytest.mark.parametrize("flags, message", [
    (["--workers-per-device", "2"], "--workers-per-device needs a CUDA device, and this run is on the CPU"),
    (["--workers-per-device", "0"], "--workers-per-device must be >= 1, got 0"),
    (["--workers", "2", "--workers-per-device", "1"], "--workers and --workers-per-device both given"),
])
def test_workers_per_device_is_a_cuda_option_refused_in_one_line(tmp_path, capsys, command, flags, message) -> None:
    out = tmp_path / "out"
    suite = "smoke" if command == "run" else "ladder-smoke"
    rc, _, err = cli([command, "--suite", suite, "--out", str(out), "--device", "cpu", "--no-progress", *flags],
                     capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
