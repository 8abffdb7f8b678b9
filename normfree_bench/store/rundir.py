"""The run directory and its studies: create or re-open one, read its record, rebuild its config, list and
load its Optuna studies. Every command that reads or writes a run goes through this module.

Usage: ``record = read_run(Path("runs/smoke")); cfg = run_config(record); trials = load_trials(record, run_dir)``

``config.yaml`` holds the run's record: ``config_hash``, ``run_name`` (``nfb-<hash>``), ``storage``
(``null`` for the directory's own study.db, ``journal`` for its study.journal, or a database URL with
its password replaced by ``***``), ``baselines``, and every section of the resolved `RunConfig`.
Each baseline's study is named ``<run_name>:<baseline>`` and carries, as user attributes, its
config, baseline, grid (``space``) and data fingerprint (``corpus_sha256``), so that a worker on
another machine needs only the storage URL and the run name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from normfree_bench.config import ModelConfig, RunConfig, build_dataclass, read_yaml
from normfree_bench.errors import UserError
from normfree_bench.io import write_yaml
from normfree_bench.store.storage import JOURNAL, open_storage, redact, resolve_storage

CONFIG_FILE = "config.yaml"
RECORD_KEYS = ("config_hash", "run_name", "storage", "baselines")  # config.yaml's keys beside the config
LEGACY_KEYS = ("fault",)  # sections of older records that are no longer part of a RunConfig
Space = dict[str, list[Any]]


# ---- the record ------------------------------------------------------------------------------------
def read_run(run_dir: Path) -> dict[str, Any]:
    """The record in ``config.yaml``; a directory that is not a run is a `UserError`."""
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir() or not path.is_file():
        raise UserError(f"{run_dir} is not a normfree-bench run directory (no config.yaml); "
                        "valid: a directory made by `normfree-bench run`")
    record = read_yaml(path)
    if "run_name" not in record or "storage" not in record:
        raise UserError(f"{path} is not a run's config.yaml (no run_name/storage); it may be a `train` output")
    return record


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


def prepare_run_dir(cfg: RunConfig, run_dir: Path, baselines: list[str], storage_url: str | None,
                    force_new: bool, workers: int = 1) -> dict[str, Any]:
    """Create or re-open a run directory for a sweep of ``baselines``; refuse a changed config unless
    ``force_new``. Returns the record as written to ``config.yaml``. The storage is kept as ``null``
    (the directory's study.db), ``journal`` (its study.journal, chosen for a new run with several
    workers) or the given URL with its password replaced by ``***``."""
    run_hash = cfg.sweep_hash()
    existing = None
    config_path = run_dir / CONFIG_FILE
    if config_path.is_file():
        existing = read_yaml(config_path)
        if existing.get("config_hash") != run_hash and not force_new:
            raise UserError(
                f"run directory {run_dir} holds a different config (hash {existing.get('config_hash')} != "
                f"{run_hash}); use another --out, or --force-new to start a new study there")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir} exists and is not a normfree-bench run directory; choose another --out")
    if storage_url:
        stored = redact(storage_url)
    elif existing is not None:
        stored = existing.get("storage")
    else:
        stored = JOURNAL if workers > 1 else None
    reference = cfg.sweep.reference
    names = sorted(set(baselines) | set((existing or {}).get("baselines", [])), key=lambda n: (n != reference, n))
    record = {"config_hash": run_hash, "run_name": f"nfb-{run_hash}", "storage": stored, "baselines": names,
              **cfg.to_dict()}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(config_path, record)
    except OSError as exc:
        raise UserError(f"run directory {run_dir} is not writable ({exc.strerror}); choose another --out") from exc
    return record


# ---- the studies -----------------------------------------------------------------------------------
def study_name(run_name: str, baseline: str) -> str:
    return f"{run_name}:{baseline}"


def create_study(storage: optuna.storages.BaseStorage, run_name: str, cfg: RunConfig, baseline: str, space: Space,
                 corpus_sha256: str, sampler: optuna.samplers.BaseSampler) -> optuna.Study:
    """Create (or load) a baseline's study and record what a remote worker needs to join it."""
    study = optuna.create_study(study_name=study_name(run_name, baseline), storage=storage, direction="minimize",
                                sampler=sampler, load_if_exists=True)
    if "config" not in study.user_attrs:
        study.set_user_attr("config", cfg.to_dict())
        study.set_user_attr("baseline", baseline)
        study.set_user_attr("space", space)
        study.set_user_attr("corpus_sha256", corpus_sha256)
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


def load_trials(record: dict[str, Any], run_dir: Path,
                storage_url: str | None = None) -> list[tuple[str, optuna.trial.FrozenTrial]]:
    """Every trial of the run's studies, as (baseline, trial), in the record's baseline order then trial order."""
    storage = open_storage(resolve_storage(record, run_dir, storage_url), heartbeat=False)
    prefix = record["run_name"] + ":"
    order = {b: i for i, b in enumerate(record.get("baselines", []))}
    try:
        studies = run_studies(storage, record["run_name"])
    except UserError:
        return []  # no trial has started yet
    studies.sort(key=lambda s: (order.get(s.study_name[len(prefix):], len(order)), s.study_name))
    return [(s.study_name[len(prefix):], t) for s in studies for t in s.get_trials(deepcopy=False)]
