"""Work on a run's studies until every grid point is done: recovery, de-duplication, one trial at a time.

Usage: ``work_on_run(storage, "nfb-1a2b3c4d5e6f")``  (what ``normfree-bench worker`` and ``run`` call)

Several workers may share a study (``run --workers N`` on one host, ``worker`` on many). The rules
that keep every grid point done exactly once:

- A trial records its worker (``host:pid``) when it starts. On start, and after every trial, a
  worker fails the RUNNING trials whose worker was on this host and no longer exists (a ``kill -9``),
  marks them ``interrupted``, and enqueues their grid point again. RDB storages add Optuna's heartbeat
  for workers on other machines (failed after the grace period, then re-enqueued the same way).
- Ctrl-C marks the running trial FAIL with ``interrupted=True``; it is re-run on resume.
- A grid point is *done* once it has a COMPLETE trial, or a FAIL that recorded an ``error`` (a real
  crash, not re-run). A trial that finds its point already done or running elsewhere ends PRUNED with
  ``duplicate=True`` before training; tables ignore PRUNED trials.
- Workers that ``run --workers N`` starts together wait for each other once their data is loaded (a
  start gate: a folder named by ``NORMFREE_BENCH_START_GATE`` and a count in
  ``NORMFREE_BENCH_START_COUNT``), so one that imports faster does not take the whole grid alone.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from collections.abc import Callable, Sequence
from itertools import product
from pathlib import Path

import lightning.pytorch as pl
import optuna
import torch
from optuna.trial import TrialState

from normfree_bench.config import RunConfig
from normfree_bench.core.registry import get_baseline
from normfree_bench.data.task import data_identity, load_data
from normfree_bench.errors import UserError
from normfree_bench.store.rundir import run_studies, study_spec
from normfree_bench.store.trials import save_result
from normfree_bench.sweep.grid import ResumableGridSampler, Space, params_of, point_of, trial_config
from normfree_bench.training.tracking import Tracking
from normfree_bench.training.train import train_one

WORKER = f"{socket.gethostname()}:{os.getpid()}"


def worker_alive(worker: str | None) -> bool:
    """False only for a worker on this host whose process is gone; others are the heartbeat's job."""
    if not worker:
        return True
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_done(trial: optuna.trial.FrozenTrial) -> bool:
    if trial.state == TrialState.COMPLETE:
        return True
    return trial.state == TrialState.FAIL and "error" in trial.user_attrs and not trial.user_attrs.get("interrupted")


def mark_interrupted(study: optuna.Study, trial: optuna.trial.FrozenTrial, why: str) -> None:
    """Fail a RUNNING trial as interrupted, so that a resume runs its grid point again."""
    storage = study._storage
    storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
    storage.set_trial_user_attr(trial._trial_id, "error", why)
    try:
        storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    except RuntimeError:  # finished meanwhile
        pass


def recover(study: optuna.Study) -> None:
    """Fail the dead workers' RUNNING trials and enqueue every interrupted point not yet done or queued."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not worker_alive(t.user_attrs.get("worker")):
            mark_interrupted(study, t, "interrupted: its worker process is gone")
    trials = study.get_trials(deepcopy=False)
    taken = {point_of(params_of(t)) for t in trials
             if is_done(t) or t.state in (TrialState.RUNNING, TrialState.WAITING)}
    for t in trials:
        params = params_of(t)
        if t.state == TrialState.FAIL and not is_done(t) and params and point_of(params) not in taken:
            study.enqueue_trial(params, user_attrs={"retry_of": t.number})
            taken.add(point_of(params))


def open_points(study: optuna.Study, space: Space) -> int:
    """Grid points neither done nor running (queued retries count as open)."""
    trials = study.get_trials(deepcopy=False)
    busy = {point_of(params_of(t)) for t in trials if is_done(t) or t.state == TrialState.RUNNING}
    names = list(space)
    return sum(1 for values in product(*space.values()) if point_of(dict(zip(names, values))) not in busy)


class Objective:
    """One grid point: suggest its parameters, skip a duplicate, train, store the result."""

    def __init__(self, cfg: RunConfig, baseline: str, space: Space, on_start: Callable[[str], None] | None = None,
                 callbacks: Sequence[pl.Callback] = (), tracking: Tracking | None = None) -> None:
        self.cfg, self.baseline, self.space, self.on_start = cfg, baseline, space, on_start
        self.callbacks, self.tracking = list(callbacks), tracking
        self.data = load_data(cfg)

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", WORKER)
        try:
            return self._run(trial)
        except KeyboardInterrupt:  # wherever Ctrl-C lands: suggesting, training or storing the result
            trial.set_user_attr("interrupted", True)
            raise

    def _run(self, trial: optuna.Trial) -> float:
        params = {name: trial.suggest_categorical(name, values) for name, values in self.space.items()}
        key = point_of(params)
        for other in trial.study.get_trials(deepcopy=False):
            running_before = (other.state == TrialState.RUNNING and other.number < trial.number
                              and worker_alive(other.user_attrs.get("worker")))
            same_point = other.number != trial.number and point_of(params_of(other)) == key
            if same_point and (is_done(other) or running_before):
                trial.set_user_attr("duplicate", True)
                raise optuna.TrialPruned(f"grid point {params} is already done or running")
        if self.on_start is not None:
            self.on_start(f"{self.baseline} lr={params['lr']:.2g} seed={params['seed']}")
        cfg = trial_config(self.cfg, self.baseline, params)
        tracker = self.tracking.tracker(cfg, trial.study.user_attrs["trivial_loss"], params) if self.tracking else None
        try:
            result = train_one(cfg, corpus=self.data, callbacks=self.callbacks, tracker=tracker)
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        return save_result(trial, result)


def optimize_study(study: optuna.Study, cfg: RunConfig, baseline: str, space: Space,
                   on_start: Callable[[str], None] | None = None, callbacks: Sequence[pl.Callback] = (),
                   on_trial: Callable[[], None] | None = None, tracking: Tracking | None = None) -> None:
    """Run this study's open grid points until none is left (other workers may share the study)."""
    recover(study)
    if open_points(study, space) == 0:
        return

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if on_trial is not None and not trial.user_attrs.get("duplicate"):
            on_trial()
        recover(study)
        if open_points(study, space) == 0:
            study.stop()

    try:
        objective = Objective(cfg, baseline, space, on_start, callbacks, tracking)
        study.optimize(objective, catch=(Exception,), callbacks=[after_trial],
                       gc_after_trial=False)
    except KeyboardInterrupt:  # Ctrl-C between Optuna's bookkeeping steps may leave our trial RUNNING
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("worker") == WORKER:
                mark_interrupted(study, t, "interrupted: Ctrl-C")
        raise


def wait_at_start_gate(timeout: float = 120.0) -> None:
    """Once per process: mark this worker ready in the start gate and wait (at most ``timeout`` s) until
    every worker started with it is ready. Without the gate variables, return at once."""
    folder, count = os.environ.pop("NORMFREE_BENCH_START_GATE", None), os.environ.pop("NORMFREE_BENCH_START_COUNT", "1")
    if not folder:
        return
    gate = Path(folder)
    (gate / str(os.getpid())).touch()
    deadline = time.monotonic() + timeout
    while sum(1 for _ in gate.iterdir()) < int(count) and time.monotonic() < deadline:
        time.sleep(0.05)


def work_on_run(storage: optuna.storages.BaseStorage, run_name: str, threads: int = 0,
                on_start: Callable[[str], None] | None = None, on_trial: Callable[[], None] | None = None,
                tracking: Tracking | None = None) -> None:
    """What a worker does: every study of the run in turn, until all grid points are done."""
    for study in run_studies(storage, run_name, ResumableGridSampler):
        cfg, baseline, space = study_spec(study)
        get_baseline(baseline)
        fingerprint, source = data_identity(load_data(cfg))
        expected = study.user_attrs.get("corpus_sha256")
        if expected and fingerprint != expected:
            raise UserError(f"this machine's data ({source}, sha256 {fingerprint[:12]}) differs from "
                            f"the run's ({expected[:12]}); every worker must train on the same data")
        if threads:
            torch.set_num_threads(threads)
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=threads))
        wait_at_start_gate()
        optimize_study(study, cfg, baseline, space, on_start=on_start, on_trial=on_trial, tracking=tracking)
