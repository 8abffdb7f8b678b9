"""Experiment tracking: each trial's curves, diagnostics, settings and verdict in CSV, TensorBoard or MLflow.

Usage: ``normfree-bench run --suite smoke --logger tensorboard --logger mlflow``
(in code: ``tracker = Tracking(("tensorboard",), run_dir, "nfb-1a2b").tracker(cfg, trivial, params)``)

Lightning's own loggers (`CSVLogger`, `TensorBoardLogger`, `MLFlowLogger`) do the writing; a callback feeds
them the points the trial records anyway (`LitModel.train_points`, ``val_points``, ``diagnostics``), so a
logged value is the value in ``curves.csv`` and ``diagnostics.csv``, and a trial without a logger runs no
extra code at all. Where each writes, under the run directory (``out`` for ``train``):

- ``csv``: ``logs/csv/<trial>/metrics.csv`` and ``hparams.yaml``;
- ``tensorboard``: ``logs/tensorboard/<trial>/events.out.tfevents.*``
  (``tensorboard --logdir RUN_DIR/logs/tensorboard``);
- ``mlflow``: the experiment named by the sweep's run name in ``MLFLOW_TRACKING_URI`` when set, else in the
  SQLite store ``logs/mlflow.db`` (MLflow 3 keeps its ``./mlruns`` file store in maintenance mode and refuses
  it unless ``MLFLOW_ALLOW_FILE_STORE`` is set, so the local default is its recommended database backend).

A trial's name is ``<baseline>/lr=<lr>/seed=<seed>[/<axis>=<value>...]``; its logged items are ``train_loss``,
``lr`` and ``grad_norm`` at every kept training point, ``val_loss`` and ``val_perplexity`` (LM) or
``val_accuracy`` (ViT) at every evaluation, ``diagnostics/<site>/<layer>/<metric>`` (``<site>/<metric>`` for
the model-wide ones) at every evaluation with diagnostics on, then ``final/val_loss``, ``final/diverged`` and
``final/stalled`` (0 or 1) and the hyperparameter ``verdict`` (``trained``, ``diverged`` or ``stalled``, as the
leaderboard counts trials). The hyperparameters are the trial's name, baseline, LR and seed and its whole config.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import Logger

from normfree_bench.config import RunConfig
from normfree_bench.errors import UserError

LOGGERS = ("none", "csv", "tensorboard", "mlflow")
EXTRA_MODULE = {"tensorboard": "tensorboard", "mlflow": "mlflow"}  # logger -> module the tracking extra installs
LOG_DIR = "logs"  # under the run directory


def check_loggers(names: Sequence[str]) -> tuple[str, ...]:
    """The ``--logger`` values as the loggers to build (``none`` alone or nothing: none). Unknown names,
    ``none`` beside a logger, and a logger whose library is not installed are one-line errors."""
    for name in names:
        if name not in LOGGERS:
            raise UserError(f"unknown --logger {name!r}; valid: {', '.join(LOGGERS)} (repeat the option for several)")
    chosen = tuple(dict.fromkeys(n for n in names if n != "none"))
    if chosen and "none" in names:
        raise UserError(f"--logger none cannot be combined with --logger {chosen[0]}; give one or the other")
    for name in chosen:
        module = EXTRA_MODULE.get(name)
        if module and importlib.util.find_spec(module) is None:
            raise UserError(f"--logger {name} needs the tracking extra, which is not installed ({module} is "
                            "missing); install it with: pip install -e '.[tracking]'")
    return chosen


def check_tracked_config(loggers: Sequence[str], cfg: RunConfig) -> None:
    """Loggers follow a trial in its own process; a data-parallel trial's ranks are other processes."""
    if loggers and cfg.train.devices > 1:
        raise UserError("--logger is not available with train.devices > 1 yet; log a single-device run, or leave "
                        "out --logger")


def trial_name(baseline: str, params: dict[str, Any]) -> str:
    """``<baseline>/lr=<lr>/seed=<seed>[/<axis>=<value>...]`` for a trial's grid point (axes sorted)."""
    axes = sorted((k, v) for k, v in params.items() if k not in ("lr", "seed"))
    parts = [baseline, f"lr={float(params['lr']):g}", f"seed={int(params['seed'])}",
             *(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in axes)]
    return "/".join(parts)


def trial_verdict(diverged: bool, final_val_loss: float, l0: float, stall_at: float) -> str:
    """``diverged``, ``stalled`` (did not diverge but its capped loss is at or above ``stall_at``, the
    leaderboard's ``trivial * (1 - trained_margin)``) or ``trained``."""
    if diverged:
        return "diverged"
    capped = min(final_val_loss, l0) if math.isfinite(final_val_loss) else l0
    return "stalled" if capped >= stall_at else "trained"


def quiet_mlflow() -> None:
    """After MLflow's import (which sets its loggers to INFO): its SQLite store announces each schema check,
    and Lightning warns that it creates the run's experiment; once per trial, neither is news."""
    import mlflow  # noqa: F401  (configures its loggers on import; the levels below must come after)

    for name in ("alembic", "mlflow"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.loggers.mlflow").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Tracking:
    """The loggers of a sweep (or of one ``train``): which, under which directory, grouped under which name."""

    loggers: tuple[str, ...]
    root: Path  # the run directory
    group: str  # the sweep's run name (MLflow experiment)

    def mlflow_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(self.root / LOG_DIR / 'mlflow.db').resolve()}"

    def prepare(self) -> None:
        """Once, before any trial (and before ``run --workers`` starts its workers): create MLflow's store and
        the run's experiment, so that workers sharing the SQLite file never race to create its tables."""
        if "mlflow" not in self.loggers:
            return
        quiet_mlflow()
        from mlflow.tracking import MlflowClient

        (self.root / LOG_DIR).mkdir(parents=True, exist_ok=True)
        client = MlflowClient(self.mlflow_uri())
        if client.get_experiment_by_name(self.group) is None:
            client.create_experiment(self.group, artifact_location=self.artifacts())

    def artifacts(self) -> str:
        return (self.root / LOG_DIR / "mlartifacts").resolve().as_uri()

    def build(self, name: str) -> list[Logger]:
        """One Lightning logger of each kind for the trial ``name``."""
        logs = self.root / LOG_DIR
        built: list[Logger] = []
        for kind in self.loggers:
            if kind == "csv":
                from lightning.pytorch.loggers import CSVLogger
                built.append(CSVLogger(logs / "csv", name="", version=name))
            elif kind == "tensorboard":
                from lightning.pytorch.loggers import TensorBoardLogger
                built.append(TensorBoardLogger(logs / "tensorboard", name="", version=name, default_hp_metric=False))
            elif kind == "mlflow":
                from lightning.pytorch.loggers import MLFlowLogger
                self.prepare()
                logger = MLFlowLogger(experiment_name=self.group, run_name=name, tracking_uri=self.mlflow_uri(),
                                      artifact_location=self.artifacts())
                # Starting the run calls mlflow.set_tracking_uri, which exports MLFLOW_TRACKING_URI: the next
                # run directory of this process (a ladder's next rung, a test) would log into this one's store.
                before = os.environ.get("MLFLOW_TRACKING_URI")
                logger.experiment  # noqa: B018  (starts the MLflow run now)
                if before is None:
                    os.environ.pop("MLFLOW_TRACKING_URI", None)
                else:
                    os.environ["MLFLOW_TRACKING_URI"] = before
                built.append(logger)
        return built

    def tracker(self, cfg: RunConfig, trivial: float, params: dict[str, Any] | None = None) -> TrialTracker:
        """The tracker of one trial: ``params`` its grid point (default: ``cfg``'s LR and seed); ``trivial`` the
        data's trivial loss, whose ``1 - sweep.trained_margin`` share is the leaderboard's stall threshold."""
        name = trial_name(cfg.baseline, params or {"lr": cfg.train.lr, "seed": cfg.train.seed})
        return TrialTracker(self.build(name), name, cfg, trivial * (1 - cfg.sweep.trained_margin))


class TrialTracker(pl.Callback):
    """Feeds one trial's recorded points to its loggers as they appear; `finish` logs the verdict and closes
    them. Reads what the LightningModule keeps anyway, so it adds no work to a training step beyond
    reading the LR at the steps whose loss is kept."""

    def __init__(self, loggers: list[Logger], name: str, cfg: RunConfig, stall_at: float) -> None:
        self.loggers, self.name, self.stall_at = loggers, name, stall_at
        self.log_interval = cfg.train.log_interval
        self._lrs: dict[int, float] = {}  # step -> the LR its update used, for the kept steps
        self._seen = {"train": 0, "val": 0, "diagnostics": 0}
        hparams = {"trial": name, "baseline": cfg.baseline, "lr": cfg.train.lr, "seed": cfg.train.seed,
                   "config": cfg.to_dict()}
        for logger in self.loggers:
            logger.log_hyperparams(hparams)

    def _log(self, metrics: dict[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        step = trainer.global_step + 1  # the step this batch makes (LitModel numbers steps from 1)
        if step % self.log_interval == 0 or step == 1:
            self._lrs[step] = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.flush(module)

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.flush(module)

    def flush(self, module: pl.LightningModule) -> None:
        """Log every point recorded since the last call (a CUDA step's loss arrives one step late)."""
        points = module.train_points[self._seen["train"]:]
        for step, loss, grad_norm in points:
            lr = self._lrs.pop(step, math.nan)
            self._log({"train_loss": loss, "grad_norm": grad_norm, **({"lr": lr} if math.isfinite(lr) else {})},
                      step)
        metric = "val_accuracy" if module.classify else "val_perplexity"
        vals = module.val_points[self._seen["val"]:]
        for step, loss, value in vals:
            self._log({"val_loss": loss, metric: value}, step)
        rows = module.diagnostics[self._seen["diagnostics"]:]
        by_step: dict[int, dict[str, float]] = {}
        for step, layer, site, name, value in rows:
            key = f"diagnostics/{site}/{name}" if layer is None else f"diagnostics/{site}/{layer}/{name}"
            by_step.setdefault(step, {})[key] = value
        for step, metrics in by_step.items():
            self._log(metrics, step)
        self._seen = {"train": len(module.train_points), "val": len(module.val_points),
                      "diagnostics": len(module.diagnostics)}

    def finish(self, module: pl.LightningModule, *, diverged: bool, final_val_loss: float, l0: float,
               steps: int) -> str:
        """Log what is left, the final figures and the verdict; close the loggers. Returns the verdict."""
        self.flush(module)
        verdict = trial_verdict(diverged, final_val_loss, l0, self.stall_at)
        self._log({"final/val_loss": final_val_loss, "final/diverged": float(diverged),
                   "final/stalled": float(verdict == "stalled")}, steps)
        for logger in self.loggers:
            logger.log_hyperparams({"verdict": verdict})
        self.close("success")
        return verdict

    def close(self, status: str) -> None:
        """Close every logger (``success`` or ``failed``: MLflow's run status); a second call does nothing."""
        for logger in self.loggers:
            logger.finalize(status)
        self.loggers = []
