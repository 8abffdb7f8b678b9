"""The run directory and its studies: create or re-open one, read its record, rebuild its config, list and
load its Optuna studies. Every command that reads or writes a run goes through this module.

Usage: ``record = read_run(Path("runs/smoke")); cfg = run_config(record); trials = load_trials(record, run_dir)``

``config.yaml`` holds the run's record: ``kind`` (``sweep``; ``train`` for the output of
``normfree-bench train``), ``config_hash``, ``run_name`` (``nfb-<hash>``), ``storage`` (``null`` for the
directory's own study.db, ``journal`` for its study.journal, or a database URL with its password
replaced by ``***``), ``baselines``, ``resolved`` (the device, precision and threads the last
invocation actually used), and every section of the `RunConfig`.

The guard in front of every run directory lives here. A command that reads a run (`open_run`)
checks that the directory is a sweep's, that its study database exists where the record says, and
that the database holds this run's studies; it never creates anything. A command that writes one
(`plan_run_dir`, then `create_run_dir`) also refuses a changed config, another storage, a study database gone missing,
and an in-memory database, before it writes a byte; ``--force-new`` moves the old run whole into
``previous/<time>-<run name>/``, where it stays readable.
Each baseline's study is named ``<run_name>:<baseline>`` and carries, as user attributes, its
config, baseline, grid (``space``) and data fingerprint (``corpus_sha256``), so that a worker on
another machine needs only the storage URL and the run name.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from normfree_bench.config import ModelConfig, RunConfig, build_dataclass, read_yaml
from normfree_bench.errors import UserError
from normfree_bench.io import write_csv, write_json, write_yaml
from normfree_bench.store.storage import JOURNAL, open_storage, redact, resolve_storage, storage_file
from normfree_bench.training.diagnostics import DIAG_COLUMNS
from normfree_bench.training.train import CURVE_FIELDS, RunResult

CONFIG_FILE = "config.yaml"
PREVIOUS_DIR = "previous"  # where --force-new moves an older run
RECORD_KEYS = ("kind", "config_hash", "run_name", "storage", "baselines", "resolved")  # beside the config
LEGACY_KEYS = ("fault",)  # sections of older records that are no longer part of a RunConfig
Space = dict[str, list[Any]]


# ---- the record ------------------------------------------------------------------------------------
def record_kind(record: dict[str, Any]) -> str:
    """``sweep`` or ``train`` (records written before ``kind`` existed: by their keys)."""
    return record.get("kind") or ("sweep" if "run_name" in record else "train")


def read_run(run_dir: Path, kind: str = "sweep") -> dict[str, Any]:
    """The record in ``config.yaml`` of a run of this ``kind``; anything else is a `UserError`."""
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir() or not path.is_file():
        raise UserError(f"{run_dir} is not a normfree-bench run directory (no config.yaml); "
                        "valid: a directory made by `normfree-bench run`")
    record = read_yaml(path)
    found = record_kind(record)
    if found != kind:
        raise UserError(f"{run_dir} holds the output of `normfree-bench {found}`, not of `normfree-bench {kind}`; "
                        "valid: a directory made by `normfree-bench run`")
    if kind == "sweep" and ("run_name" not in record or "storage" not in record):
        raise UserError(f"{path} is not a run's config.yaml (no run_name/storage)")
    return record


def open_run(run_dir: Path, storage_url: str | None = None) -> tuple[dict[str, Any], optuna.storages.BaseStorage]:
    """A run to read: its record and its storage, opened without creating anything. The study
    database must exist where the record says and hold this run's studies."""
    record = read_run(run_dir)
    url = resolve_storage(record, run_dir, storage_url)
    storage = open_storage(url, heartbeat=False, create=False)
    try:
        run_studies(storage, record["run_name"])
    except UserError as exc:
        raise UserError(f"the storage of {run_dir} ({redact(url)}) holds no study of run {record['run_name']}: "
                        "its config.yaml and its database belong to different runs") from exc
    return record, storage


def run_config(record: dict[str, Any]) -> RunConfig:
    """The `RunConfig` a record (config.yaml, or a study's ``config`` attribute) was written from."""
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(record) - fields - set(RECORD_KEYS) - set(LEGACY_KEYS))
    if unknown:
        raise UserError(f"unknown config key 'config.{unknown[0]}' in the run's record; "
                        f"valid keys: {', '.join(sorted(fields))}")
    data = {k: v for k, v in record.items() if k in fields}
    if data.get("sweep", {}).get("lrs") == []:  # older records wrote "no explicit grid" as []
        data["sweep"] = {k: v for k, v in data["sweep"].items() if k != "lrs"}
    return build_dataclass(RunConfig, data, "config")


def run_l0(record: dict[str, Any]) -> float:
    """The run's initial loss l0: ln(vocab) for the LM, ln(classes) for the ViT."""
    return build_dataclass(ModelConfig, record["model"], "model").initial_loss


def run_axes(record: dict[str, Any]) -> list[str]:
    return list(record.get("sweep", {}).get("axes", {}))


def plan_run_dir(cfg: RunConfig, run_dir: Path, baselines: list[str], storage_url: str | None,
                 force_new: bool, workers: int = 1) -> tuple[dict[str, Any], bool]:
    """Check a run directory for a sweep of ``baselines``, writing nothing: return the record its
    ``config.yaml`` will hold, and whether the old run there must first move into ``previous/``.
    Refused: a directory that is not a sweep's, a changed config (unless ``force_new``), a
    ``--storage`` other than the one the run was created with, and a study database that the record
    names but is gone. The storage of a new run is ``null`` (the directory's study.db), ``journal``
    (its study.journal, chosen for a new run with several workers) or the given URL with its password
    replaced by ``***``."""
    run_hash = cfg.sweep_hash()
    existing = None
    if (run_dir / CONFIG_FILE).is_file():
        existing = read_run(run_dir)
    elif run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise UserError(f"{run_dir} exists and is not a normfree-bench run directory; choose another --out")
    archive = existing is not None and existing.get("config_hash") != run_hash
    if archive and not force_new:
        raise UserError(
            f"run directory {run_dir} holds a different config (hash {existing.get('config_hash')} != "
            f"{run_hash}); use another --out, or --force-new to move the old run into {PREVIOUS_DIR}/")
    if existing is not None and not archive:
        url = resolve_storage(existing, run_dir, storage_url)  # another --storage is refused here
        path = storage_file(url)
        if path is not None and not path.is_file():
            raise UserError(f"run directory {run_dir} records its study database at {path}, which is missing; "
                            "restore it, or start anew with --force-new")
        stored = existing["storage"]
    else:
        stored = redact(storage_url) if storage_url else (JOURNAL if workers > 1 else None)
    reference = cfg.sweep.reference
    kept = [] if archive or existing is None else existing.get("baselines", [])
    names = sorted(set(baselines) | set(kept), key=lambda n: (n != reference, n))
    record = {"kind": "sweep", "config_hash": run_hash, "run_name": f"nfb-{run_hash}", "storage": stored,
              "baselines": names, **cfg.to_dict()}
    return record, archive


def create_run_dir(run_dir: Path, record: dict[str, Any], archive: bool) -> None:
    """Write a planned run's ``config.yaml`` (after moving the old run into ``previous/`` when asked)."""
    try:
        if archive:
            archive_run(run_dir, read_run(run_dir))
        run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(run_dir / CONFIG_FILE, record)
    except OSError as exc:
        raise UserError(f"run directory {run_dir} is not writable ({exc.strerror}); choose another --out") from exc


def archive_run(run_dir: Path, record: dict[str, Any]) -> Path:
    """Move every file of the run in ``run_dir`` into ``previous/<time>-<run name>/``: a whole run
    directory that `leaderboard` still reads (its own study.db moves with it)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir / PREVIOUS_DIR / f"{stamp}-{record.get('run_name', 'run')}"
    target.mkdir(parents=True)
    for entry in run_dir.iterdir():
        if entry.name != PREVIOUS_DIR:
            entry.rename(target / entry.name)
    return target


def record_resolved(run_dir: Path, record: dict[str, Any], resolved: dict[str, Any]) -> dict[str, Any]:
    """Add what this invocation actually ran with (device, precision, threads) to the record."""
    record = {**record, "resolved": resolved}
    write_yaml(run_dir / CONFIG_FILE, record)
    return record


# ---- the studies -----------------------------------------------------------------------------------
def study_name(run_name: str, baseline: str, phase: str = "tune", point: dict[str, Any] | None = None) -> str:
    """``<run>:<baseline>`` for the LR grid; ``<run>:<baseline>:eval`` (``...:eval[model.n_layers=2]`` for a
    cell of an extra axis) for the held-out seeds of the cell's chosen LR."""
    name = f"{run_name}:{baseline}"
    if phase == "eval":
        label = ",".join(f"{k}={v}" for k, v in sorted((point or {}).items()))
        name += ":eval" + (f"[{label}]" if label else "")
    return name


def create_study(storage: optuna.storages.BaseStorage, run_name: str, cfg: RunConfig, baseline: str, space: Space,
                 corpus_sha256: str, sampler: optuna.samplers.BaseSampler, trivial_loss: float,
                 phase: str = "tune", point: dict[str, Any] | None = None) -> optuna.Study:
    """Create (or load) a study and record what a remote worker needs to join it: the config, baseline,
    grid, data fingerprint, the loss of the best constant predictor on that data, and the phase
    (``tune``: the LR grid; ``eval``: held-out seeds at a cell's chosen LR). The objective is named, so
    that optuna-dashboard shows ``final_val_loss`` (l0 for a diverged trial)."""
    study = optuna.create_study(study_name=study_name(run_name, baseline, phase, point), storage=storage,
                                direction="minimize", sampler=sampler, load_if_exists=True)
    if "config" not in study.user_attrs:
        study.set_metric_names(["final_val_loss"])
        study.set_user_attr("config", cfg.to_dict())
        study.set_user_attr("baseline", baseline)
        study.set_user_attr("space", space)
        study.set_user_attr("corpus_sha256", corpus_sha256)
        study.set_user_attr("trivial_loss", trivial_loss)
        study.set_user_attr("phase", phase)
    return study


def run_studies(storage: optuna.storages.BaseStorage, run_name: str,
                sampler: Callable[[Space], optuna.samplers.BaseSampler] | None = None) -> list[optuna.Study]:
    """The studies of run ``run_name`` (``<run_name>:<baseline>``), in the order they were created;
    ``sampler(space)`` gives each study the sampler a worker optimizes it with."""
    names = [s.study_name for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)
             if s.study_name.startswith(run_name + ":")]
    if not names:
        raise UserError(f"no study named '{run_name}:<baseline>' in this storage; the run name is in the run "
                        "directory's config.yaml (run_name)")
    studies = []
    for name in names:
        study = optuna.load_study(study_name=name, storage=storage)
        if sampler is not None:
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler(study.user_attrs["space"]))
        studies.append(study)
    return studies


def study_spec(study: optuna.Study) -> tuple[RunConfig, str, Space]:
    """The config, baseline and grid a study was created with (stored in its user attributes)."""
    attrs = study.user_attrs
    return run_config(attrs["config"]), attrs["baseline"], attrs["space"]


def load_trials(record: dict[str, Any], storage: optuna.storages.BaseStorage) -> list[tuple[optuna.Study,
                                                                                           optuna.trial.FrozenTrial]]:
    """Every trial of the run's studies with its study: in the record's baseline order, the LR grid of a
    baseline before its held-out seeds, then trial order."""
    order = {b: i for i, b in enumerate(record.get("baselines", []))}
    studies = run_studies(storage, record["run_name"])
    studies.sort(key=lambda s: (order.get(s.user_attrs.get("baseline"), len(order)),
                                s.user_attrs.get("phase", "tune") != "tune", s.study_name))
    return [(s, t) for s in studies for t in s.get_trials(deepcopy=False)]


def study_label(study: optuna.Study, run_name: str) -> str:
    """A study's name without the run's: ``dyt``, ``dyt:eval``."""
    return study.study_name.removeprefix(run_name + ":")


# ---- the output of `normfree-bench train` -----------------------------------------------------------
def check_train_dir(out: Path, cfg: RunConfig) -> None:
    """Refuse an ``--out`` for ``train`` that holds anything but a previous ``train`` output of the same
    config (which the new run reproduces): a sweep's run directory, another config's output, or any
    other file. Nothing is created here; the output directory appears only when the results are written."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"output {out} is a file, not a directory; choose another --out")
    if not any(out.iterdir()):
        return
    if not (out / CONFIG_FILE).is_file():
        raise UserError(f"{out} exists and is not the output of `normfree-bench train`; choose another --out")
    record = read_yaml(out / CONFIG_FILE)
    if record_kind(record) != "train":
        raise UserError(f"{out} holds the run directory of a sweep; `train` would overwrite its files; "
                        "choose another --out")
    if record.get("config_hash") != cfg.config_hash():
        raise UserError(f"{out} holds the train output of another config (hash {record.get('config_hash')} != "
                        f"{cfg.config_hash()}); choose another --out")


def write_train_output(out: Path, cfg: RunConfig, result: RunResult, resolved: dict[str, Any]) -> None:
    """``config.yaml`` (kind ``train``, the config with its hash and what it resolved to),
    ``metrics.json``, ``curve.csv`` and ``diagnostics.csv``."""
    write_yaml(out / CONFIG_FILE, {"kind": "train", "config_hash": cfg.config_hash(), "resolved": resolved,
                                   **cfg.to_dict()})
    write_json(out / "metrics.json", result.metrics())
    write_csv(out / "curve.csv", result.curve, CURVE_FIELDS)
    write_csv(out / "diagnostics.csv", [dict(zip(DIAG_COLUMNS, row)) for row in result.diagnostics], DIAG_COLUMNS)
