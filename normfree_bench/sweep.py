"""The benchmark sweep: every baseline over the same LR x seed (x extra axes) grid, driven by Optuna.

Usage: ``rows = run_sweep(load_run_config("configs/smoke.yaml"), Path("runs/smoke"))``

One Optuna study per baseline, named ``<run>:<baseline>`` (the run name carries the config hash),
sampled by ``GridSampler`` over ``lr``, ``seed`` and the axes that apply to the baseline. The default
storage is ``sqlite:///<run_dir>/study.db``; ``storage`` accepts any Optuna storage URL.

Trial outcomes:
- finished: COMPLETE with value = final validation loss;
- diverged (see normfree_bench.guard): COMPLETE with value = l0 and user attributes
  ``diverged=True``, ``diverged_step``, ``diverged_reason``;
- crashed: FAIL, with the message in the user attribute ``error``; the sweep goes on.
Re-running the same command resumes: grid points with a finished trial are not run again.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from tqdm import tqdm

from normfree_bench.config import ModelConfig, RunConfig, build_dataclass, config_hash
from normfree_bench.data import check_split_size, load_corpus
from normfree_bench.errors import UserError
from normfree_bench.io import write_json, write_yaml
from normfree_bench.provenance import collect_provenance
from normfree_bench.registry import get_baseline, list_baselines
from normfree_bench.train import RunResult, resolve_device, train_one

CONFIG_FILE = "config.yaml"
DB_FILE = "study.db"


# ---- the grid ----------------------------------------------------------------------------------
def sweep_baselines(cfg: RunConfig) -> list[str]:
    """The baselines a sweep runs: the config's list (validated) or every registered one."""
    names = list(cfg.sweep.baselines) or list_baselines()
    for name in names:
        get_baseline(name)
    return names


def validate_axes(cfg: RunConfig, baselines: list[str]) -> None:
    """Each axis is ``model.<field>`` or ``<baseline>.<hparam>`` of a registered baseline."""
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for axis in cfg.sweep.axes:
        owner, _, key = axis.partition(".")
        if owner == "model":
            if key not in model_fields:
                raise UserError(f"unknown sweep axis '{axis}'; valid model axes: "
                                + ", ".join(f"model.{f}" for f in sorted(model_fields)))
            continue
        cls = get_baseline(owner)
        if key not in cls.hparams:
            valid = ", ".join(f"{owner}.{h}" for h in cls.hparams) or "(none)"
            raise UserError(f"unknown sweep axis '{axis}'; baseline '{owner}' has: {valid}")


def axes_for(cfg: RunConfig, baseline: str) -> dict[str, list[Any]]:
    """The extra axes that apply to ``baseline``: every ``model.*`` axis and its own hparams."""
    return {a: list(v) for a, v in cfg.sweep.axes.items() if a.split(".", 1)[0] in ("model", baseline)}


def search_space(cfg: RunConfig, baseline: str) -> dict[str, list[Any]]:
    return {"lr": cfg.sweep.lr_grid(), "seed": list(range(cfg.sweep.seeds)), **axes_for(cfg, baseline)}


def trial_config(cfg: RunConfig, baseline: str, params: dict[str, Any]) -> RunConfig:
    """The `RunConfig` of one grid point: the shared config with this trial's LR, seed and axes."""
    model = cfg.model.__dict__ | {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("model.")}
    hparams = {**cfg.hparams, baseline: {**cfg.baseline_hparams(baseline),
                                         **{k.split(".", 1)[1]: v for k, v in params.items()
                                            if k.startswith(f"{baseline}.")}}}
    return dataclasses.replace(
        cfg, baseline=baseline, hparams=hparams, model=build_dataclass(ModelConfig, model, "model"),
        train=dataclasses.replace(cfg.train, lr=float(params["lr"]), seed=int(params["seed"])))


# ---- storage and run directory -----------------------------------------------------------------
def sweep_hash(cfg: RunConfig) -> str:
    """The config hash that names a run: everything but the baseline subset and the description."""
    data = cfg.to_dict()
    data.pop("description")
    data.pop("baseline")
    data["sweep"] = {k: v for k, v in data["sweep"].items() if k != "baselines"}
    return config_hash(data)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """An Optuna RDB storage; a malformed URL or an unreachable database is a `UserError`."""
    import sqlalchemy.exc

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except sqlalchemy.exc.ArgumentError as exc:
        raise UserError(f"malformed storage URL {url!r}; valid: an SQLAlchemy URL such as "
                        "sqlite:///study.db or postgresql://user:pass@host/db") from exc
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.DBAPIError) as exc:
        reason = str(exc.orig).strip().splitlines()[0] if getattr(exc, "orig", None) else type(exc).__name__
        raise UserError(f"cannot reach the database at {url!r}: {reason}") from exc
    except (ImportError, ModuleNotFoundError) as exc:
        raise UserError(f"storage URL {url!r} needs a database driver that is not installed: {exc}") from exc


def default_storage(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / DB_FILE).resolve()}"


def storage_of(record: dict[str, Any], run_dir: Path) -> str:
    """The run's storage URL; ``null`` in config.yaml means the run directory's own study.db, so a
    moved or copied run directory keeps reading its own database."""
    return record.get("storage") or default_storage(run_dir)


def prepare_run_dir(cfg: RunConfig, run_dir: Path, storage_url: str | None, force_new: bool) -> dict[str, Any]:
    """Create or re-open a run directory; refuse a changed config unless ``force_new``.

    Returns the run's record as written to ``config.yaml`` (run name, storage URL, hash, config).
    """
    run_hash = sweep_hash(cfg)
    existing = None
    config_path = run_dir / CONFIG_FILE
    if config_path.is_file():
        from normfree_bench.config import read_yaml

        existing = read_yaml(config_path)
        if existing.get("config_hash") != run_hash and not force_new:
            raise UserError(
                f"run directory {run_dir} holds a different config (hash {existing.get('config_hash')} != "
                f"{run_hash}); use another --out, or --force-new to start a new study there")
    elif run_dir.exists() and any(run_dir.iterdir()) and not (run_dir / DB_FILE).exists():
        raise UserError(f"{run_dir} exists and is not a normfree-bench run directory; choose another --out")
    storage_url = storage_url or (existing or {}).get("storage")  # None: the run directory's study.db
    baselines = sorted(set(sweep_baselines(cfg)) | set((existing or {}).get("baselines", [])),
                       key=lambda n: (n != "layernorm", n))
    record = {"config_hash": run_hash, "run_name": f"nfb-{run_hash}", "storage": storage_url,
              "baselines": baselines, **cfg.to_dict()}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(config_path, record)
    except OSError as exc:
        raise UserError(f"run directory {run_dir} is not writable ({exc.strerror}); choose another --out") from exc
    return record


def study_name(run_name: str, baseline: str) -> str:
    return f"{run_name}:{baseline}"


def load_study(storage: optuna.storages.BaseStorage, run_name: str, baseline: str,
               space: dict[str, list[Any]]) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=study_name(run_name, baseline), storage=storage, direction="minimize",
                               sampler=optuna.samplers.GridSampler(space, seed=0), load_if_exists=True)


def grid_size(space: dict[str, list[Any]]) -> int:
    return math.prod(len(v) for v in space.values())


def finished_points(study: optuna.Study) -> int:
    """Grid points with a COMPLETE trial, or a FAIL that was not an interruption (a real crash)."""
    done = {
        tuple(sorted(t.params.items()))
        for t in study.get_trials(deepcopy=False)
        if t.state == optuna.trial.TrialState.COMPLETE
        or (t.state == optuna.trial.TrialState.FAIL and not t.user_attrs.get("interrupted"))
    }
    return len(done)


# ---- trials -------------------------------------------------------------------------------------
def store_result(trial: optuna.Trial, result: RunResult) -> float:
    """Put a run's metrics and curve on its trial; return the objective (l0 when diverged)."""
    for key, value in result.metrics().items():
        trial.set_user_attr(key, value)
    trial.set_user_attr("curve", [[p["step"], p["train_loss"], p["val_loss"], p["grad_norm"]]
                                  for p in result.curve])
    return result.l0 if result.diverged else result.final_val_loss


class Objective:
    """One grid point: suggest its parameters, train, store the result on the trial."""

    def __init__(self, cfg: RunConfig, baseline: str, space: dict[str, list[Any]], bar: tqdm | None) -> None:
        self.cfg, self.baseline, self.space, self.bar = cfg, baseline, space, bar
        self.corpus = load_corpus(cfg.data)

    def __call__(self, trial: optuna.Trial) -> float:
        params = {name: trial.suggest_categorical(name, values) for name, values in self.space.items()}
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.baseline} lr={params['lr']:.2g} seed={params['seed']}")
        try:
            result = train_one(trial_config(self.cfg, self.baseline, params), corpus=self.corpus)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            trial.set_user_attr("error", "interrupted")
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if self.bar is not None:
                self.bar.update(1)
        return store_result(trial, result)


def run_sweep(cfg: RunConfig, run_dir: Path, *, storage_url: str | None = None, force_new: bool = False,
              progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every baseline's grid; return the run record. Tables are written by the caller."""
    baselines = sweep_baselines(cfg)
    validate_axes(cfg, baselines)
    device = resolve_device(cfg.train.device)
    corpus = load_corpus(cfg.data)  # fail on a bad or too small corpus before anything is written
    longest = max([cfg.model.context_length, *cfg.sweep.axes.get("model.context_length", [])])
    for split in ("train", "val"):
        check_split_size(len(getattr(corpus, split)), longest, split)
    storage = open_storage(storage_url) if storage_url else None
    record = prepare_run_dir(cfg, run_dir, storage_url, force_new)
    storage = storage or open_storage(storage_of(record, run_dir))
    provenance = collect_provenance(device, corpus.sha256, corpus.meta.get("source", {}).get("description", ""))
    write_json(run_dir / "provenance.json", provenance)
    spaces = {b: search_space(cfg, b) for b in baselines}
    studies = {b: load_study(storage, record["run_name"], b, spaces[b]) for b in baselines}
    total = sum(grid_size(s) for s in spaces.values())
    done = sum(min(finished_points(studies[b]), grid_size(spaces[b])) for b in baselines)
    bar = tqdm(total=total, initial=done, desc="trials", unit="trial", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        for baseline in baselines:
            remaining = grid_size(spaces[baseline]) - finished_points(studies[baseline])
            if remaining <= 0:
                continue
            objective = Objective(cfg, baseline, spaces[baseline], bar)
            studies[baseline].optimize(objective, n_trials=remaining, catch=(Exception,), gc_after_trial=False)
    finally:
        bar.close()
    provenance["sweep_wall_s_this_invocation"] = time.perf_counter() - t0
    write_json(run_dir / "provenance.json", provenance)
    return record
