"""The ``normfree-bench`` command line.

Usage::

    normfree-bench run --suite smoke               # the LR sweep of every baseline, then the leaderboard
    normfree-bench ladder --suite ladder-smoke     # the same sweep at growing widths, with cross-rung tables
    normfree-bench leaderboard runs/smoke --format latex
    normfree-bench train --baseline dyt --steps 300 --lr 3e-3 --out runs/dyt
    normfree-bench baselines list
    normfree-bench baselines check dyt            # or a plugin file: baselines check my_norm.py

Bad input ends with exit code 2 and one line on stderr naming the problem and what is valid.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
from tabulate import tabulate
from tqdm import tqdm

from normfree_bench.analysis.analyze import analyze_run, csv_row
from normfree_bench.config import NORM_IMPLS, RunConfig, load_run_config, merge, parse_set
from normfree_bench.config.suites import suite_path
from normfree_bench.core.registry import check_hparams_section, discover, get_baseline, list_baselines, load_plugin
from normfree_bench.data.task import check_fits, load_data, trivial_loss
from normfree_bench.errors import UserError
from normfree_bench.io import write_json
from normfree_bench.models.contract import check_baseline, init_state, tiny_config
from normfree_bench.models.factory import build_model
from normfree_bench.report import write_report
from normfree_bench.report.ladder_html import is_ladder_dir, write_ladder_report
from normfree_bench.store.rundir import check_train_dir, run_axes, run_studies, write_train_output
from normfree_bench.store.storage import open_storage
from normfree_bench.sweep.driver import run_sweep
from normfree_bench.sweep.grid import grid_configs, sweep_baselines
from normfree_bench.sweep.ladder import check_rungs, load_ladder, run_ladder
from normfree_bench.sweep.worker import work_on_run
from normfree_bench.tables.export import read_tables, write_plots, write_results
from normfree_bench.tables.ladder import ladder_summary, render_ladder, write_ladder
from normfree_bench.tables.render import render, sort_rows
from normfree_bench.tools.overhead import measure_overhead
from normfree_bench.tools.speed import SpeedSettings, render_tables, run_speed
from normfree_bench.training.tracking import LOGGERS, Tracking, check_loggers, check_tracked_config
from normfree_bench.training.train import quiet_lightning, resolve_device, resolved_settings, train_one


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message}\n")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="load a baseline plugin file (repeatable)")


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key, e.g. --set hparams.dyt.alpha_init=0.5 (repeatable)")


def _add_logger(p: argparse.ArgumentParser) -> None:
    p.add_argument("--logger", action="append", default=[], metavar="NAME",
                   help=f"track every trial in {', '.join(LOGGERS)} (repeatable; tensorboard and mlflow need "
                   "the tracking extra); written under the output directory's logs/")


def _load_plugins(paths: list[str]) -> None:
    discover()
    for path in paths:
        load_plugin(path)


def overrides_of(args: argparse.Namespace) -> dict[str, Any]:
    """Every config override of a command line, composed: the ``--set`` pairs, then the dedicated
    flags (``--lr``, ``--steps``, ``--seed``, ``--device``, ``--baseline``, ``--baselines``), each of
    which overrides only its own key, so a flag and ``--set`` on the same section merge."""
    flags: dict[str, Any] = {"train": {k: getattr(args, k) for k in ("lr", "steps", "seed", "device")
                                       if getattr(args, k, None) is not None}}
    if getattr(args, "baseline", None):
        flags["baseline"] = args.baseline
    if getattr(args, "baselines", None) is not None:
        flags["sweep"] = {"baselines": baseline_list(args.baselines)}
    return merge(parse_set(getattr(args, "set", [])), {k: v for k, v in flags.items() if v != {}})


def baseline_list(text: str) -> list[str]:
    """``--baselines a,b``; a list that names no baseline (``--baselines ,``) is bad input."""
    names = [b.strip() for b in text.split(",") if b.strip()]
    if not names:
        raise UserError(f"--baselines {text!r} names no baseline; valid: a comma-separated list such as "
                        "layernorm,dyt (leave the option out to run every main baseline)")
    return names


def cmd_train(args: argparse.Namespace) -> int:
    _load_plugins(args.plugin)
    loggers = check_loggers(args.logger)
    cfg = load_run_config(args.config, overrides_of(args))
    check_tracked_config(loggers, cfg)
    get_baseline(cfg.baseline).check_placement(cfg.model.placement)
    check_hparams_section(cfg.hparams)
    resolved = resolved_settings(cfg)
    data = load_data(cfg)
    check_fits(data, cfg.model)
    out = Path(args.out or f"runs/train-{cfg.baseline}-{cfg.config_hash()}")
    _check_writable(out)
    check_train_dir(out, cfg)
    tracker = Tracking(loggers, out, out.name).tracker(cfg, trivial_loss(data)) if loggers else None
    result = train_one(cfg, corpus=data, progress_bar=not args.no_progress, tracker=tracker)
    write_train_output(out, cfg, result, resolved)
    status = f"DIVERGED at step {result.diverged_step} ({result.diverged_reason})" if result.diverged else "ok"
    print(f"{cfg.baseline}: final val loss {result.final_val_loss:.4f} (l0 {result.l0:.3f}), {status}; "
          f"{result.steps} steps, {result.tokens_per_s:,.0f} tokens/s, {result.params:,} params -> {out}")
    return 0


def _check_writable(out: Path) -> None:
    """Refuse an output directory that cannot be written, before any work is done and without creating
    it: the directory appears only when there is something to write into it."""
    if out.exists():
        if not out.is_dir() or not os.access(out, os.W_OK):
            raise UserError(f"output directory {out} is not writable; choose another with --out")
        return
    probe = out.parent
    while not probe.exists():
        probe = probe.parent
    try:  # a real write, not os.access: root passes access checks on pseudo file systems such as /proc
        tempfile.TemporaryDirectory(dir=probe).cleanup()
    except OSError as exc:
        raise UserError(f"output directory {out} is not writable ({exc.strerror}); choose another with --out") from exc


def cmd_baselines_list(args: argparse.Namespace) -> int:
    _load_plugins(args.plugin)
    rows = []
    for name in list_baselines():
        cls = get_baseline(name)
        hp = ", ".join(f"{k}={v}" for k, v in cls.hparams.items()) or "-"
        rows.append([name, cls.group, cls.description.replace("|", "\\|"), cls.paper, hp])  # keep the table intact
    print(tabulate(rows, headers=["baseline", "group", "description", "paper", "hyperparameters"],
                   tablefmt="github"))
    return 0


def cmd_baselines_check(args: argparse.Namespace) -> int:
    _load_plugins(args.plugin)
    target = args.target
    names = load_plugin(target) if target.endswith(".py") or Path(target).is_file() else [target]
    failed = 0
    for name in names:
        get_baseline(name)
        checks = check_baseline(name)
        failed += sum(not c.ok for c in checks)
        rows = [[c.name, "ok" if c.ok else "FAIL", c.detail] for c in checks]
        print(f"{name}:")
        print(tabulate(rows, headers=["check", "result", "detail"], tablefmt="github"))
        try:
            states = [init_state(name, tiny_config(), init) for init in ("paper", "shared")]
        except Exception as exc:  # a plugin's bug is reported by the checks above, not a crash here
            print(f"\n{name} at init: not measured ({type(exc).__name__}: {exc})")
            continue
        print(f"\n{name} at init (the tiny GPT-2-flavoured model, seed 0; stds over one batch):")
        print(tabulate([[s.init, s.rule, _stds(s.stream_std), _stds(s.branch_std), f"{s.logit_std:.3g}",
                         f"{s.initial_loss:.4f}"] for s in states],
                       headers=["init", "rule", "stream std entering each block, then the final site",
                                "branch output std (attn, mlp per block)", "logit std", "initial loss"],
                       tablefmt="github"))
        print()
    if failed:
        print(f"{failed} check(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _stds(values: list[float]) -> str:
    return ", ".join(f"{v:.3g}" for v in values)


def workers_of(args: argparse.Namespace, cfg: RunConfig) -> int:
    """``--workers N``, or ``--workers-per-device N`` times the CUDA devices (a CUDA-only option)."""
    per_device = getattr(args, "workers_per_device", None)
    if per_device is None:
        return args.workers
    if per_device < 1:
        raise UserError(f"--workers-per-device must be >= 1, got {per_device}")
    if args.workers != 1:
        raise UserError("--workers and --workers-per-device both given; valid: one of them")
    if resolve_device(cfg.train.device) != "cuda":
        raise UserError("--workers-per-device needs a CUDA device, and this run is on the CPU; valid on a CPU: "
                        "--workers N")
    return per_device * torch.cuda.device_count()


def _suite_and_out(args: argparse.Namespace, default_suite: str) -> tuple[Path, Path]:
    """The plugins loaded, then (the suite or config file, the writable output directory, default runs/<stem>)."""
    _load_plugins(args.plugin)
    path = Path(args.config or suite_path(args.suite or default_suite))
    out = Path(args.out or f"runs/{path.stem}")
    _check_writable(out)
    return path, out


def cmd_run(args: argparse.Namespace) -> int:
    loggers = check_loggers(args.logger)
    path, out = _suite_and_out(args, "default")
    cfg = load_run_config(path, overrides_of(args))
    check_tracked_config(loggers, cfg)
    workers = workers_of(args, cfg)

    try:
        record = run_sweep(cfg, out, storage_url=args.storage, force_new=args.force_new,
                           progress=not args.no_progress, workers=workers, loggers=loggers)
    except KeyboardInterrupt:
        if (out / "config.yaml").is_file():
            write_results(out, storage_url=args.storage)
        print(f"interrupted; tables so far are in {out}; run the same command to resume", file=sys.stderr)
        return 130
    rows = write_results(out, storage_url=args.storage)
    print(render(rows, "github", run_axes(record)))
    print(f"\nresults in {out}/ (leaderboard.md, trials.csv, curves.csv, plots/)")
    return 0


_PARAMS: dict[str, int] = {}  # model and hyperparameters -> parameter count, so each rung's model is built once


def reference_params(cfg: RunConfig) -> int:
    """Parameters of the reference scheme's model under ``cfg`` (the ladder's token rule); the ladder asks for
    the same sizes while checking its rungs and again while running them."""
    name = cfg.sweep.reference
    hparams = cfg.baseline_hparams(name)
    key = repr((name, cfg.model, sorted(hparams.items())))
    if key not in _PARAMS:
        model = build_model(name, cfg.model, **hparams)
        _PARAMS[key] = sum(p.numel() for p in model.parameters())
    return _PARAMS[key]


def cmd_ladder(args: argparse.Namespace) -> int:
    loggers = check_loggers(args.logger)
    path, out = _suite_and_out(args, "ladder-smoke")
    ladder = load_ladder(path, overrides_of(args))
    check_tracked_config(loggers, ladder.base)
    baselines = sweep_baselines(ladder.base)
    for cfg in check_rungs(ladder, reference_params):  # every rung's sizes and its grid, before any training
        grid_configs(cfg, baselines)
    workers_of(args, ladder.base)

    def run_rung(cfg: RunConfig, rung_dir: Path) -> list[dict[str, Any]]:
        print(f"== {cfg.description} -> {rung_dir}", file=sys.stderr)
        run_sweep(cfg, rung_dir, storage_url=args.storage, progress=not args.no_progress,
                  workers=workers_of(args, cfg), loggers=loggers)
        return write_results(rung_dir, storage_url=args.storage)

    try:
        rungs = run_ladder(ladder, out, run_rung, reference_params, baselines)
    except KeyboardInterrupt:
        print(f"interrupted; finished rungs are in {out}; run the same command to resume", file=sys.stderr)
        return 130
    summary = ladder_summary(rungs, ladder.base.sweep.reference, ladder.ladder.gap_tol)
    summary["rungs"] = [{"width": r["width"], "dirs": r["dirs"], "widened": r["widened"],
                         "steps": r["config"].train.steps, "n_heads": r["config"].model.n_heads,
                         "lr_grids": r["config"].sweep.lrs_by_baseline} for r in rungs]
    write_ladder(out, summary)
    print(render_ladder(summary))
    print(f"ladder results in {out}/ (ladder.md, ladder.csv, ladder.json, plots/); each rung is a run directory")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    _load_plugins(args.plugin)
    if args.threads < 0:
        raise UserError(f"--threads must be >= 0 (0 keeps torch's default), got {args.threads}")
    loggers = check_loggers(args.logger)
    if args.log_dir and not loggers:
        raise UserError("--log-dir applies only with --logger; valid loggers: csv, tensorboard, mlflow")
    log_dir = Path(args.log_dir or f"runs/{args.study}")
    if loggers:
        _check_writable(log_dir)
    quiet_lightning()
    storage = open_storage(args.storage, create=False)
    run_studies(storage, args.study)  # an unknown run name is bad input, before any output
    tracking = Tracking(loggers, log_dir, args.study) if loggers else None
    with tqdm(desc=f"worker {args.study}", unit="trial", file=sys.stderr, disable=args.no_progress) as bar:
        work_on_run(storage, args.study, threads=args.threads, on_start=bar.set_postfix_str,
                    on_trial=lambda: bar.update(1), tracking=tracking)
    return 0


def run_labels(run_dirs: list[str]) -> list[str]:
    """A short label per run directory, unique among them: the fewest trailing path parts that tell
    them apart (``a/run`` and ``b/run``, not ``run`` twice). The same directory twice is bad input."""
    paths = [Path(d).resolve() for d in run_dirs]
    for i, path in enumerate(paths):
        if path in paths[:i]:
            raise UserError(f"run directory {run_dirs[i]} is given twice; valid: distinct run directories")
    depth = 1
    while True:
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels) or depth >= max(len(p.parts) for p in paths):
            return labels
        depth += 1


def cmd_leaderboard(args: argparse.Namespace) -> int:
    all_rows: list[dict[str, Any]] = []
    axes: list[str] = []
    labels = run_labels(args.run_dirs)
    for run_dir, label in zip(args.run_dirs, labels):
        tables = read_tables(Path(run_dir), args.storage)
        axes += [a for a in tables.axes if a not in axes]
        all_rows += [{"run": label, **r} for r in tables.rows] if len(args.run_dirs) > 1 else tables.rows
    print(render(sort_rows(all_rows, args.sort), args.format, axes))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    paths = write_plots(read_tables(run_dir, args.storage), run_dir)
    print(f"{len(paths)} plot(s) written to {run_dir / 'plots'}; the tables are unchanged")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    analysis = analyze_run(run_dir, scope=args.trials, low_precision=not args.no_low_precision,
                           storage_url=args.storage, progress=not args.no_progress, invariance=args.invariance,
                           scales=args.scales)
    rows = [csv_row(e) for e in analysis["trials"]]
    keys = ["baseline", "lr", "val_loss", "reproduced", "n_outlier_dims", "max_kurtosis",
            "ptq_int8_w_act_tensor_delta", "ptq_int8_w_act_token_delta", "ptq_fp8_e4m3_delta",
            "bf16-mixed_delta", "bf16-true_delta", "alpha_inv_std_r"]
    if args.invariance:
        keys += ["invariance_weights_rel_change_c10", "invariance_input_rel_change_c10",
                 "invariance_retrained_delta_c10"]
    print(tabulate([[r.get(k) for k in keys] for r in rows], headers=keys, tablefmt="github", floatfmt=".4g"))
    print(f"\nanalysis.json, analysis.csv and plots/analysis_*.png in {run_dir}/")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    path = write_ladder_report(run_dir) if is_ladder_dir(run_dir) else write_report(run_dir)
    print(f"report written to {path}")
    return 0


OVERHEAD_ONLY = ("suite", "steps", "repeats", "set", "logger")  # speed options that apply with --overhead only
LAYERS_ONLY = ("baselines", "widths", "tokens", "bf16", "no_compile", "impls", "min_run_time")  # and without it


def positive_ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise UserError(f"{option} must be comma-separated positive integers such as 256,1024, got {text!r}")
    return values


def cmd_speed(args: argparse.Namespace) -> int:
    given = {k for k in (*OVERHEAD_ONLY, *LAYERS_ONLY) if getattr(args, k) not in (None, False, [])}
    stray = sorted(given & set(LAYERS_ONLY if args.overhead else OVERHEAD_ONLY))
    if stray:
        flag = "--" + stray[0].replace("_", "-")
        raise UserError(f"{flag} does not apply {'with' if args.overhead else 'without'} --overhead; valid with "
                        "--overhead: --suite, --steps, --repeats, --set, --logger; without: --baselines, --widths, "
                        "--tokens, --bf16, --no-compile, --impls, --min-run-time")
    _load_plugins(args.plugin)
    device = resolve_device(args.device or "auto")
    out = Path(args.out)
    _check_writable(out)
    if args.overhead:
        for option, value in (("--steps", args.steps), ("--repeats", args.repeats)):
            if value is not None and value < 1:
                raise UserError(f"{option} must be >= 1, got {value}")
        loggers = check_loggers(args.logger)
        quiet_lightning()
        suite = args.suite or "default"
        flags = {"baseline": "layernorm", "train": {"device": device, **({"steps": args.steps} if args.steps else {})}}
        cfg = load_run_config(suite_path(suite), merge(parse_set(args.set or []), flags))
        result = measure_overhead(cfg, repeats=args.repeats or 3, loggers=loggers)
        write_json(out / "overhead.json", result)
        tracked = f", logging to {'+'.join(loggers)}" if loggers else ""
        print(f"harness {result['harness_s']:.2f} s / bare loop {result['bare_s']:.2f} s = {result['ratio']:.3f} "
              f"(min {result['ratio_min']:.3f}, max {result['ratio_max']:.3f}; {result['repeats']} pairs, "
              f"{result['steps']} steps of the '{suite}' model{tracked}, target <= 1.05) -> {out / 'overhead.json'}")
        return 0
    names = baseline_list(args.baselines) if args.baselines is not None else list_baselines()
    for name in names:
        get_baseline(name)
    widths = positive_ints(args.widths or "256,1024", "--widths")
    tokens = args.tokens if args.tokens is not None else 4096
    min_run_time = args.min_run_time if args.min_run_time is not None else 0.3
    if tokens < 1:
        raise UserError(f"--tokens must be >= 1, got {tokens}")
    if not (min_run_time > 0 and math.isfinite(min_run_time)):
        raise UserError(f"--min-run-time must be a finite number of seconds > 0, got {min_run_time}")
    dtypes = ["fp32", "bf16"] if device == "cuda" or args.bf16 else ["fp32"]
    impls = (args.impls or ",".join(NORM_IMPLS)).split(",")
    for impl in impls:
        if impl not in NORM_IMPLS:
            raise UserError(f"--impls must be comma-separated implementations from {', '.join(NORM_IMPLS)}, "
                            f"got {args.impls!r}")
    settings = SpeedSettings(baselines=names, widths=widths, tokens=tokens, dtypes=dtypes, impls=impls,
                             compile=not args.no_compile, device=device, min_run_time=min_run_time)
    rows = run_speed(settings, out)
    print(render_tables(rows))
    print(f"\nspeed.json, speed.csv, speed.md and speed.png in {out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="normfree-bench", description="One Transformer, many normalization schemes.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train one baseline once")
    p.add_argument("--baseline", help="registered baseline name (default: the config's, else layernorm)")
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--lr", type=float)
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--out", help="output directory (default runs/train-<baseline>)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_logger(p)
    _add_common(p)
    _add_set(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("run", help="run or resume the benchmark sweep, then print the leaderboard")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--suite", help="a suite in configs/ (smoke, default, gpu, depth); default: default")
    src.add_argument("--config", help="a YAML config file")
    p.add_argument("--baselines", help="comma-separated subset of baselines")
    p.add_argument("--out", help="run directory (default runs/<suite>)")
    p.add_argument("--storage", help="Optuna storage URL (default: sqlite study.db in the run directory)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--force-new", action="store_true", help="start a new study even if the config changed")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes on this machine (spread over the GPUs on CUDA; CPU threads are split)")
    p.add_argument("--workers-per-device", type=int, metavar="N",
                   help="CUDA only: N worker processes per GPU, each training its own trial")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_logger(p)
    _add_common(p)
    _add_set(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("ladder", help="the benchmark at growing widths, each rung's LR grid zoomed on the last's")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--suite", help="a ladder suite in configs/ (ladder-smoke, ladder-cpu, ladder-gpu); "
                     "default: ladder-smoke")
    src.add_argument("--config", help="a YAML ladder config file")
    p.add_argument("--baselines", help="comma-separated subset of baselines")
    p.add_argument("--out", help="ladder directory (default runs/<suite>); each rung is a run directory in it")
    p.add_argument("--storage", help="Optuna storage URL for every rung (default: sqlite study.db per rung)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--workers", type=int, default=1, help="worker processes per rung (as run --workers)")
    p.add_argument("--workers-per-device", type=int, metavar="N", help="CUDA only: N workers per GPU (as run)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    _add_logger(p)
    _add_common(p)
    _add_set(p)
    p.set_defaults(func=cmd_ladder)

    p = sub.add_parser("worker", help="join a run's studies in a shared database and work until the grid is done")
    p.add_argument("--storage", required=True, help="the shared Optuna storage URL (e.g. postgresql+psycopg://...)")
    p.add_argument("--study", required=True, help="the run name (run_name in the run's config.yaml, nfb-<hash>)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads for this worker (0: torch default)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_logger(p)
    p.add_argument("--log-dir", help="with --logger: the folder whose logs/ receives this worker's trials "
                   "(default runs/<study>; run --workers passes its run directory)")
    _add_common(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("speed", help="time each scheme's norm layer and whole model, per norm implementation")
    p.add_argument("--out", default="runs/speed", help="output directory (default runs/speed)")
    p.add_argument("--baselines", help="comma-separated subset of baselines")
    p.add_argument("--widths", help="layer widths, comma-separated (default 256,1024)")
    p.add_argument("--tokens", type=int, help="tokens per layer-benchmark tensor (default 4096)")
    p.add_argument("--bf16", action="store_true", help="also bf16 on CPU (always on CUDA)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (the compiled implementation "
                   "and the whole-model compile)")
    p.add_argument("--impls", help="norm implementations to time, comma-separated (default eager,compiled,fused)")
    p.add_argument("--min-run-time", type=float,
                   help="seconds of calls per timed variant, taken in 15 blocks (default 0.3)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--overhead", action="store_true", help="harness trial vs bare PyTorch loop, same model and steps")
    p.add_argument("--suite", help="with --overhead: the suite whose model and steps to time (default: default)")
    p.add_argument("--steps", type=int, help="with --overhead: steps per trial (default: the suite's)")
    p.add_argument("--repeats", type=int, help="with --overhead: harness/bare pairs (default 3)")
    p.add_argument("--logger", action="append", default=[], metavar="NAME",
                   help="with --overhead: the harness trials also log to this tracker (csv, tensorboard, mlflow)")
    _add_common(p)
    _add_set(p)
    p.set_defaults(func=cmd_speed)

    p = sub.add_parser("leaderboard", help="print the leaderboard of one or more run directories")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--storage", help="the storage URL, when the run's has a password (not stored)")
    p.add_argument("--format", default="github", help="github, psql, latex, html, csv or json")
    p.add_argument("--sort", help="sort by this column")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("plot", help="redraw a run directory's plots")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--storage", help="the storage URL, when the run's has a password (not stored)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("analyze", help="numerical-stability analysis of a run: outliers, quantization, bf16, alpha")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--trials", choices=("best", "all"), default="best",
                   help="each baseline's best trial (default) or every completed trial")
    p.add_argument("--no-low-precision", action="store_true", help="skip the bf16 retraining of the best trials")
    p.add_argument("--invariance", action="store_true", help="also the output's change when the weights feeding "
                   "the norm sites, or the input, are multiplied by c (at init and trained), and the best trials "
                   "retrained with their data rescaled by c")
    p.add_argument("--scales", metavar="C,C,...", help="the factors c of --invariance, each > 0 (default 0.1,0.5,2,10)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--storage", help="the storage URL, when the run's has a password (not stored)")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("report", help="write RUN_DIR/report.html: leaderboard, plots, analysis and provenance "
                       "(a ladder directory: the cross-rung page and every rung's report)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(func=cmd_report)

    b = sub.add_parser("baselines", help="list or check baselines")
    bsub = b.add_subparsers(dest="action", required=True, parser_class=_Parser)
    p = bsub.add_parser("list", help="every baseline with its description and paper")
    _add_common(p)
    p.set_defaults(func=cmd_baselines_list)
    p = bsub.add_parser("check", help="run the contract checks on a tiny CPU model")
    p.add_argument("target", help="a baseline name or a plugin file")
    _add_common(p)
    p.set_defaults(func=cmd_baselines_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" on CPU hosts
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
