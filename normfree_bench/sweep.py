"""The benchmark sweep: every baseline over the same LR x seed (x extra axes) grid, driven by Optuna.

Usage: ``record = run_sweep(load_run_config("configs/smoke.yaml"), Path("runs/smoke"), workers=2)``

One Optuna study per baseline, named ``<run>:<baseline>`` (the run name carries the config hash),
sampled by ``GridSampler`` over ``lr``, ``seed`` and the axes that apply to the baseline. Each study
carries its config, grid and corpus fingerprint as user attributes, so a ``worker`` on another
machine needs only the storage URL and the run name. Storage: see normfree_bench.storage.

Trial outcomes:
- finished: COMPLETE with value = final validation loss;
- diverged (see normfree_bench.guard): COMPLETE with value = l0 and user attributes
  ``diverged=True``, ``diverged_step``, ``diverged_reason``;
- crashed: FAIL, with the message in the user attribute ``error``; the sweep goes on.
Re-running the same command resumes: grid points with a finished trial are not run again, and
interrupted trials are re-run from their start (normfree_bench.worker).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from tqdm import tqdm

from normfree_bench.config import ModelConfig, RunConfig, TrainConfig, build_dataclass, config_hash, read_yaml
from normfree_bench.data import check_split_size
from normfree_bench.errors import UserError
from normfree_bench.io import write_json, write_yaml
from normfree_bench.provenance import collect_provenance
from normfree_bench.registry import get_baseline, list_baselines
from normfree_bench.storage import JOURNAL, open_storage, redact, resolve_storage
from normfree_bench.train import data_identity, load_data, resolve_device
from normfree_bench.worker import GRID_SEED, ResumableGridSampler, is_done, optimize_study, point_of

CONFIG_FILE = "config.yaml"


# ---- the grid ----------------------------------------------------------------------------------
def sweep_baselines(cfg: RunConfig) -> list[str]:
    """The baselines a sweep runs: the config's list (validated), or every registered baseline of
    group ``main`` (a user's plugin included; the ablation plugins run only when named)."""
    names = list(cfg.sweep.baselines) or [n for n in list_baselines() if get_baseline(n).group == "main"]
    for name in names:
        get_baseline(name)
    return names


SHARED_AXES = {  # section -> the fields a sweep axis may vary (lr and seed are the grid itself)
    "model": {f.name for f in dataclasses.fields(ModelConfig)},
    "train": {f.name for f in dataclasses.fields(TrainConfig)} - {"lr", "seed"},
}


def validate_axes(cfg: RunConfig, baselines: list[str]) -> None:
    """Each axis is ``model.<field>``, ``train.<field>`` or ``<baseline>.<hparam>`` of a registered
    baseline; ``model.qk_norm`` x ``train.z_loss`` is the 2x2 ablation of Wortsman et al. 2023."""
    for axis in cfg.sweep.axes:
        owner, _, key = axis.partition(".")
        if owner in SHARED_AXES:
            if key not in SHARED_AXES[owner]:
                raise UserError(f"unknown sweep axis '{axis}'; valid {owner} axes: "
                                + ", ".join(f"{owner}.{f}" for f in sorted(SHARED_AXES[owner])))
            continue
        cls = get_baseline(owner)
        if key not in cls.hparams:
            valid = ", ".join(f"{owner}.{h}" for h in cls.hparams) or "(none)"
            raise UserError(f"unknown sweep axis '{axis}'; baseline '{owner}' has: {valid}")


def axes_for(cfg: RunConfig, baseline: str) -> dict[str, list[Any]]:
    """The extra axes that apply to ``baseline``: every ``model.*``/``train.*`` axis and its own hparams."""
    return {a: list(v) for a, v in cfg.sweep.axes.items() if a.split(".", 1)[0] in (*SHARED_AXES, baseline)}


def search_space(cfg: RunConfig, baseline: str) -> dict[str, list[Any]]:
    return {"lr": cfg.sweep.lr_grid(), "seed": list(range(cfg.sweep.seeds)), **axes_for(cfg, baseline)}


def trial_config(cfg: RunConfig, baseline: str, params: dict[str, Any]) -> RunConfig:
    """The `RunConfig` of one grid point: the shared config with this trial's LR, seed and axes."""
    model = cfg.model.__dict__ | {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("model.")}
    train = cfg.train.__dict__ | {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("train.")}
    train |= {"lr": float(params["lr"]), "seed": int(params["seed"])}
    hparams = {**cfg.hparams, baseline: {**cfg.baseline_hparams(baseline),
                                         **{k.split(".", 1)[1]: v for k, v in params.items()
                                            if k.startswith(f"{baseline}.")}}}
    return dataclasses.replace(
        cfg, baseline=baseline, hparams=hparams, model=build_dataclass(ModelConfig, model, "model"),
        train=build_dataclass(TrainConfig, train, "train"))


# ---- run directory ------------------------------------------------------------------------------
def sweep_hash(cfg: RunConfig) -> str:
    """The config hash that names a run: everything but the baseline subset and the description."""
    data = cfg.to_dict()
    data.pop("description")
    data.pop("baseline")
    data["sweep"] = {k: v for k, v in data["sweep"].items() if k != "baselines"}
    return config_hash(data)


def prepare_run_dir(cfg: RunConfig, run_dir: Path, storage_url: str | None, force_new: bool,
                    workers: int = 1) -> dict[str, Any]:
    """Create or re-open a run directory; refuse a changed config unless ``force_new``.

    Returns the run's record as written to ``config.yaml`` (run name, storage, hash, config). The
    storage is kept as ``null`` (the directory's study.db), ``journal`` (its study.journal, chosen for
    a new run with several workers) or the given URL with its password replaced by ``***``.
    """
    run_hash = sweep_hash(cfg)
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
    baselines = sorted(set(sweep_baselines(cfg)) | set((existing or {}).get("baselines", [])),
                       key=lambda n: (n != "layernorm", n))
    record = {"config_hash": run_hash, "run_name": f"nfb-{run_hash}", "storage": stored,
              "baselines": baselines, **cfg.to_dict()}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(config_path, record)
    except OSError as exc:
        raise UserError(f"run directory {run_dir} is not writable ({exc.strerror}); choose another --out") from exc
    return record


def study_name(run_name: str, baseline: str) -> str:
    return f"{run_name}:{baseline}"


def create_study(storage: optuna.storages.BaseStorage, run_name: str, cfg: RunConfig, baseline: str,
                 corpus_sha256: str) -> optuna.Study:
    """Create (or load) a baseline's study and record what a remote worker needs to join it."""
    space = search_space(cfg, baseline)
    study = optuna.create_study(study_name=study_name(run_name, baseline), storage=storage, direction="minimize",
                                sampler=ResumableGridSampler(space, seed=GRID_SEED), load_if_exists=True)
    if "config" not in study.user_attrs:
        study.set_user_attr("config", cfg.to_dict())
        study.set_user_attr("baseline", baseline)
        study.set_user_attr("space", space)
        study.set_user_attr("corpus_sha256", corpus_sha256)
    return study


def grid_size(space: dict[str, list[Any]]) -> int:
    return math.prod(len(v) for v in space.values())


def done_points(study: optuna.Study) -> int:
    return len({point_of(t.params) for t in study.get_trials(deepcopy=False) if is_done(t)})


def preflight(cfg: RunConfig, baselines: list[str]) -> None:
    """Build each baseline at the sweep's model size and run one forward pass: a plugin whose model
    cannot be built or whose forward raises is bad input, reported before any trial runs."""
    import torch

    from normfree_bench.model import build_model

    if cfg.model.task == "vit":
        ids = torch.zeros(1, cfg.model.in_chans, cfg.model.image_size, cfg.model.image_size)
    else:
        ids = torch.zeros(1, min(8, cfg.model.context_length), dtype=torch.long)
    for name in baselines:
        try:
            with torch.no_grad():
                build_model(name, cfg.model, **cfg.baseline_hparams(name))(ids)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"baseline '{name}' fails before training ({type(exc).__name__}: {exc}); "
                            f"check it with `normfree-bench baselines check {name}`") from exc


def run_sweep(cfg: RunConfig, run_dir: Path, *, storage_url: str | None = None, force_new: bool = False,
              progress: bool = True, workers: int = 1) -> dict[str, Any]:
    """Run (or resume) every baseline's grid; return the run record. Tables are written by the caller."""
    baselines = sweep_baselines(cfg)
    validate_axes(cfg, baselines)
    device = resolve_device(cfg.train.device)
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    data = load_data(cfg)  # fail on bad or too little data before anything is written
    longest = max([cfg.model.context_length, *cfg.sweep.axes.get("model.context_length", [])])
    if cfg.model.task == "lm":
        for split in ("train", "val"):
            check_split_size(len(getattr(data, split)), longest, split)
    fingerprint, source = data_identity(data)
    preflight(cfg, baselines)
    storage = open_storage(storage_url) if storage_url else None
    record = prepare_run_dir(cfg, run_dir, storage_url, force_new, workers)
    url = resolve_storage(record, run_dir, storage_url)
    storage = storage or open_storage(url)
    provenance = collect_provenance(device, fingerprint, source)
    if record.get("storage") is None:  # the run directory's own file: no machine path in provenance
        provenance["storage"] = "study.db in the run directory"
    elif record["storage"] == JOURNAL:
        provenance["storage"] = "study.journal in the run directory"
    else:
        provenance["storage"] = redact(url)
    write_json(run_dir / "provenance.json", provenance)
    studies = {b: create_study(storage, record["run_name"], cfg, b, fingerprint) for b in baselines}
    spaces = {b: search_space(cfg, b) for b in baselines}
    total = sum(grid_size(s) for s in spaces.values())
    done = sum(min(done_points(studies[b]), grid_size(spaces[b])) for b in baselines)
    bar = tqdm(total=total, initial=done, desc="trials", unit="trial", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    t0 = time.perf_counter()
    try:
        if workers == 1:
            for baseline in baselines:
                optimize_study(studies[baseline], cfg, baseline, spaces[baseline],
                               on_start=bar.set_postfix_str, on_trial=lambda: bar.update(1))
        else:
            run_workers(url, record["run_name"], workers, device, cfg.train.threads, bar,
                        lambda: sum(done_points(studies[b]) for b in baselines))
    finally:
        bar.close()
    provenance["sweep_wall_s_this_invocation"] = time.perf_counter() - t0
    write_json(run_dir / "provenance.json", provenance)
    return record


def run_workers(url: str, run_name: str, workers: int, device: str, threads: int, bar: tqdm,
                count_done: Callable[[], int]) -> None:
    """``workers`` worker processes on this machine: one GPU each on CUDA, the CPU threads split on CPU."""
    import os
    import subprocess

    import torch

    per_worker = max(1, (threads or os.cpu_count() or 1) // workers)
    procs = []
    for i in range(workers):
        env = dict(os.environ)
        if device == "cuda":
            env["CUDA_VISIBLE_DEVICES"] = str(i % max(1, torch.cuda.device_count()))
        cmd = [sys.executable, "-m", "normfree_bench", "worker", "--storage", url, "--study", run_name,
               "--threads", str(per_worker), "--no-progress"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL))
    try:
        while any(p.poll() is None for p in procs):
            time.sleep(1.0)
            bar.n = count_done()
            bar.refresh()
    except KeyboardInterrupt:
        for p in procs:
            p.send_signal(__import__("signal").SIGINT)
        for p in procs:
            p.wait()
        raise
    bar.n = count_done()
    bar.refresh()
    failed = [p.returncode for p in procs if p.returncode != 0]
    if failed:
        raise UserError(f"{len(failed)} of {workers} workers exited with an error (codes {failed}); "
                        "see their messages above, then run the same command again to resume")
