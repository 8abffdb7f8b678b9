"""The benchmark sweep: every baseline over the same LR x seed (x extra axes) grid, driven by Optuna.

Usage: ``record = run_sweep(load_run_config("configs/smoke.yaml"), Path("runs/smoke"), workers=2)``

One Optuna study per baseline, named ``<run>:<baseline>`` (the run name carries the config hash),
sampled by ``GridSampler`` over ``lr``, ``seed`` and the axes that apply to the baseline. Each study
carries its config, grid and corpus fingerprint as user attributes, so a ``worker`` on another
machine needs only the storage URL and the run name (normfree_bench.store.rundir).

Trial outcomes:
- finished: COMPLETE with value = final validation loss;
- diverged (see normfree_bench.training.guard): COMPLETE with value = l0 and user attributes
  ``diverged=True``, ``diverged_step``, ``diverged_reason``;
- crashed: FAIL, with the message in the user attribute ``error``; the sweep goes on.
Re-running the same command resumes: grid points with a finished trial are not run again, and
interrupted trials are re-run from their start (normfree_bench.sweep.worker).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import optuna
import torch
from optuna.trial import TrialState
from tqdm import tqdm

from normfree_bench.config import RunConfig
from normfree_bench.core.registry import check_hparams_section
from normfree_bench.data.task import check_fits, data_identity, load_data, trivial_loss
from normfree_bench.errors import UserError
from normfree_bench.io import write_json
from normfree_bench.models.factory import build_model
from normfree_bench.store.provenance import collect_provenance
from normfree_bench.store.rundir import create_run_dir, create_study, plan_run_dir, record_resolved, study_name
from normfree_bench.store.storage import JOURNAL, check_url, open_storage, redact, resolve_storage
from normfree_bench.sweep.grid import (
    ResumableGridSampler,
    Space,
    axes_for,
    grid_configs,
    grid_size,
    point_of,
    search_space,
    sweep_baselines,
)
from normfree_bench.sweep.selection import chosen_cells
from normfree_bench.sweep.worker import is_done, optimize_study
from normfree_bench.training.tracking import Tracking
from normfree_bench.training.train import resolved_settings


def done_points(study: optuna.Study) -> int:
    return len({point_of(t.params) for t in study.get_trials(deepcopy=False) if is_done(t)})


def preflight(points: list[tuple[str, RunConfig]]) -> None:
    """Build each baseline at every model size of the grid and run one forward pass: a plugin whose
    model cannot be built or whose forward raises is bad input, reported before any trial runs."""
    seen = set()
    for name, cfg in points:
        key = (name, repr(cfg.model), repr(sorted(cfg.baseline_hparams(name).items())))
        if key in seen:
            continue
        seen.add(key)
        if cfg.model.task == "vit":
            ids = torch.zeros(1, cfg.model.in_chans, cfg.model.image_size, cfg.model.image_size)
        else:
            ids = torch.zeros(1, min(8, cfg.model.context_length), dtype=torch.long)
        try:
            with torch.no_grad():
                build_model(name, cfg.model, **cfg.baseline_hparams(name))(ids)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"baseline '{name}' fails before training ({type(exc).__name__}: {exc}); "
                            f"check it with `normfree-bench baselines check {name}`") from exc


def worker_count(requested: int, open_points: int, device: str) -> int:
    """``--workers``, capped at the grid points left and, on a CPU, at its cores (with a note)."""
    if requested < 1:
        raise UserError(f"--workers must be >= 1, got {requested}")
    limit, why = max(1, open_points), f"the {open_points} grid point(s) left to run"
    if device == "cpu" and (os.cpu_count() or 1) < limit:
        limit, why = os.cpu_count() or 1, f"the {os.cpu_count() or 1} CPU core(s) of this machine"
    if requested > limit:
        print(f"note: --workers {requested} capped at {limit}: {why}", file=sys.stderr)
        return limit
    return requested


def run_sweep(cfg: RunConfig, run_dir: Path, *, storage_url: str | None = None, force_new: bool = False,
              progress: bool = True, workers: int = 1, callbacks: Sequence[pl.Callback] = (),
              loggers: Sequence[str] = ()) -> dict[str, Any]:
    """Run (or resume) every baseline's grid; return the run record. Tables are written by the caller.
    ``callbacks`` are Lightning callbacks for every trial of this process (the tests' fault injection);
    ``loggers`` the trackers every trial writes to (normfree_bench.training.tracking, already checked).

    Every input is checked before the run directory is touched: the baselines and their
    hyperparameters, every grid point's config, the data against every model of the grid, a forward
    pass of every model, the device and precision, and the run directory and its storage (`plan_run_dir`)."""
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if storage_url:
        check_url(storage_url)
    baselines = sweep_baselines(cfg)
    check_hparams_section(cfg.hparams)
    points = grid_configs(cfg, baselines)
    resolved = resolved_settings(cfg)
    device = resolved["device"]
    data = load_data(cfg)  # fail on bad or too little data before anything is written
    for _, point_cfg in points:
        check_fits(data, point_cfg.model)
    fingerprint, source = data_identity(data)
    preflight(points)
    record, archive = plan_run_dir(cfg, run_dir, baselines, storage_url, force_new, workers)
    url = resolve_storage(record, run_dir, storage_url)
    storage = open_storage(url) if storage_url else None  # an unreachable or in-memory URL is refused here
    create_run_dir(run_dir, record, archive)
    storage = storage or open_storage(url)
    trivial = trivial_loss(data)
    tune = [Phase(create_study(storage, record["run_name"], cfg, b, space, fingerprint, ResumableGridSampler(space),
                               trivial), b, space) for b in baselines for space in [search_space(cfg, b)]]
    n_eval = cfg.sweep.eval_seeds * sum(grid_size(axes_for(cfg, b)) for b in baselines)
    total = sum(grid_size(p.space) for p in tune) + n_eval
    done = sum(p.done() for p in tune) + sum(p.done() for p in existing_eval_phases(storage, record, cfg, baselines))
    workers = worker_count(workers, total - done, device) if workers > 1 else 1
    if workers > 1:
        resolved["threads"] = max(1, (cfg.train.threads or os.cpu_count() or 1) // workers)
    record = record_resolved(run_dir, record, {**resolved, "workers": workers})
    provenance = collect_provenance(device, fingerprint, source)
    provenance["run_name"] = record["run_name"]
    provenance["trivial_loss"] = trivial
    tokenizer = getattr(data, "meta", {}).get("tokenizer")
    if tokenizer:  # data.tokenizer: which one, its file's SHA-256 and the vocabulary it reached
        provenance["tokenizer"] = {k: tokenizer[k] for k in ("tokenizer", "tokenizer_sha256", "vocab_size")}
    if record.get("storage") is None:  # the run directory's own file: no machine path in provenance
        provenance["storage"] = "study.db in the run directory"
    elif record["storage"] == JOURNAL:
        provenance["storage"] = "study.journal in the run directory"
    else:
        provenance["storage"] = redact(url)
    write_json(run_dir / "provenance.json", provenance)
    bar = tqdm(total=total, initial=done, desc="trials", unit="trial", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    t0 = time.perf_counter()

    tracking = Tracking(tuple(loggers), run_dir, record["run_name"]) if loggers else None
    if tracking:
        tracking.prepare()

    def run_phase(phases: list[Phase]) -> None:
        if workers == 1:
            for p in phases:
                optimize_study(p.study, cfg, p.baseline, p.space, on_start=bar.set_postfix_str,
                               callbacks=callbacks, on_trial=lambda: bar.update(1), tracking=tracking)
        else:
            finished = done - sum(p.done() for p in phases)
            run_workers(url, record["run_name"], workers, device, cfg.train.threads, bar,
                        lambda: finished + sum(p.done() for p in phases), tracking)

    try:
        run_phase(tune)
        if cfg.sweep.eval_seeds:  # held-out seeds at each cell's chosen LR, once the grid is done
            done = bar.n
            run_phase(eval_phases(storage, record, cfg, tune, fingerprint, trivial))
    finally:
        bar.close()
    provenance["sweep_wall_s_this_invocation"] = time.perf_counter() - t0
    write_json(run_dir / "provenance.json", provenance)
    return record


@dataclass
class Phase:
    """One study of the sweep: the LR grid of a baseline, or the held-out seeds of one of its cells."""

    study: optuna.Study
    baseline: str
    space: Space

    def done(self) -> int:
        return min(done_points(self.study), grid_size(self.space))


def eval_space(cfg: RunConfig, point: dict[str, Any], lr: float) -> Space:
    """The held-out grid of a cell: its chosen LR, seeds after the tuning ones, its axis values."""
    seeds = list(range(cfg.sweep.seeds, cfg.sweep.seeds + cfg.sweep.eval_seeds))
    return {"lr": [lr], "seed": seeds, **{axis: [value] for axis, value in point.items()}}


def eval_phases(storage: optuna.storages.BaseStorage, record: dict[str, Any], cfg: RunConfig, tune: list[Phase],
                fingerprint: str, trivial: float) -> list[Phase]:
    """One held-out study per cell of every baseline, at the LR its finished grid chose
    (normfree_bench.sweep.selection). A cell whose grid has no finished trial gets none."""
    l0 = cfg.model.initial_loss
    phases = []
    for p in tune:
        axes = [a for a in p.space if a not in ("lr", "seed")]
        records = [{"baseline": p.baseline, **dict(t.params), "final_val_loss": t.user_attrs["final_val_loss"],
                    "diverged": t.user_attrs["diverged"]}
                   for t in p.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        for (_, cell), lr in chosen_cells(records, axes, l0).items():
            point = dict(zip(axes, cell))
            space = eval_space(cfg, point, lr)
            study = create_study(storage, record["run_name"], cfg, p.baseline, space, fingerprint,
                                 ResumableGridSampler(space), trivial, phase="eval", point=point)
            phases.append(Phase(study, p.baseline, space))
    return phases


def existing_eval_phases(storage: optuna.storages.BaseStorage, record: dict[str, Any], cfg: RunConfig,
                         baselines: list[str]) -> list[Phase]:
    """The held-out studies a previous invocation already created (for the progress bar of a resume)."""
    names = {s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)}
    phases = []
    for baseline in baselines:
        axes = axes_for(cfg, baseline)
        for values in product(*axes.values()):
            point = dict(zip(axes, values))
            name = study_name(record["run_name"], baseline, "eval", point)
            if name in names:
                study = optuna.load_study(study_name=name, storage=storage)
                phases.append(Phase(study, baseline, study.user_attrs["space"]))
    return phases


def run_workers(url: str, run_name: str, workers: int, device: str, threads: int, bar: tqdm,
                count_done: Callable[[], int], tracking: Tracking | None = None) -> None:
    """``workers`` worker processes on this machine: one GPU each on CUDA, the CPU threads split on CPU;
    each writes its trials to ``tracking``'s loggers under the run directory."""
    per_worker = max(1, (threads or os.cpu_count() or 1) // workers)
    procs = []
    gate = tempfile.mkdtemp(prefix="nfb-start-")
    for i in range(workers):
        env = {**os.environ, "NORMFREE_BENCH_START_GATE": gate, "NORMFREE_BENCH_START_COUNT": str(workers)}
        if device == "cuda":
            env["CUDA_VISIBLE_DEVICES"] = str(i % max(1, torch.cuda.device_count()))
        cmd = [sys.executable, "-m", "normfree_bench", "worker", "--storage", url, "--study", run_name,
               "--threads", str(per_worker), "--no-progress"]
        if tracking:
            cmd += [*(a for name in tracking.loggers for a in ("--logger", name)), "--log-dir", str(tracking.root)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            bar.n = count_done()
            bar.refresh()
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            p.wait()
        raise
    finally:
        shutil.rmtree(gate, ignore_errors=True)
    bar.n = count_done()
    bar.refresh()
    failed = [p.returncode for p in procs if p.returncode != 0]
    if failed:
        raise UserError(f"{len(failed)} of {workers} workers exited with an error (codes {failed}); "
                        "see their messages above, then run the same command again to resume")
