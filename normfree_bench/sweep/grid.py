"""The sweep's grid: which baselines, which axes, the LR x seed (x axes) points, and each point's config.

Usage: ``space = search_space(cfg, "dyt"); cfg_of_point = trial_config(cfg, "dyt", {"lr": 1e-3, "seed": 0})``

One Optuna study per baseline samples its grid with `ResumableGridSampler` (Optuna's GridSampler,
shuffled with the fixed seed `GRID_SEED`, so every process sharing a study sees the same grid order).
"""

from __future__ import annotations

import dataclasses
import math
from itertools import product
from typing import Any

import optuna

from normfree_bench.config import ModelConfig, RunConfig, TrainConfig, build_dataclass
from normfree_bench.core.registry import get_baseline, list_baselines
from normfree_bench.errors import UserError

Point = tuple[tuple[str, Any], ...]
Space = dict[str, list[Any]]
GRID_SEED = 0  # GridSampler shuffles its grid with this seed; every study of a run uses it

SHARED_AXES = {  # section -> the fields a sweep axis may vary (lr and seed are the grid itself)
    "model": {f.name for f in dataclasses.fields(ModelConfig)},
    "train": {f.name for f in dataclasses.fields(TrainConfig)} - {"lr", "seed"},
}


class ResumableGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler, tolerating the re-enqueued retries of interrupted trials (they carry
    fixed parameters and no ``grid_id``, which ``GridSampler.after_trial`` expects)."""

    def __init__(self, space: Space) -> None:
        super().__init__(space, seed=GRID_SEED)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: Any, values: Any) -> None:
        if "grid_id" in study._storage.get_trial_system_attrs(trial._trial_id):
            super().after_trial(study, trial, state, values)


def point_of(params: dict[str, Any]) -> Point:
    return tuple(sorted(params.items()))


def params_of(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A trial's whole grid point: the parameters an enqueued retry was given, or the point its
    ``grid_id`` names. Both exist before the objective runs, so a trial interrupted while it was still
    suggesting its parameters (and holds only some of them) still names its whole point."""
    attrs = trial.system_attrs
    if "fixed_params" in attrs:
        return dict(attrs["fixed_params"])
    if "grid_id" in attrs and "search_space" in attrs:
        grid = ResumableGridSampler(attrs["search_space"])  # the same shuffled grid order
        return dict(zip(grid._param_names, grid._all_grids[attrs["grid_id"]]))
    return dict(trial.params)


def sweep_baselines(cfg: RunConfig) -> list[str]:
    """The baselines a sweep runs: the config's list (validated, in its order), or every registered
    baseline of group ``main``, the reference first (a user's plugin included; the ablation plugins
    run only when named)."""
    if cfg.sweep.baselines:
        names = list(cfg.sweep.baselines)
        for name in names:
            get_baseline(name)
        return names
    main = [n for n in list_baselines() if get_baseline(n).group == "main"]
    return sorted(main, key=lambda n: n != cfg.sweep.reference)


def validate_axes(cfg: RunConfig, baselines: list[str]) -> None:
    """Each axis is ``model.<field>``, ``train.<field>`` or ``<baseline>.<hparam>`` of a registered
    baseline; ``model.qk_norm`` x ``train.z_loss`` is the 2x2 ablation of Wortsman et al. 2023.
    A per-baseline LR grid must name a baseline of the sweep."""
    for name in cfg.sweep.lrs_by_baseline:
        if name not in baselines:
            raise UserError(f"sweep.lrs_by_baseline names '{name}', which this sweep does not run; valid: "
                            + ", ".join(baselines))
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


def axes_for(cfg: RunConfig, baseline: str) -> Space:
    """The extra axes that apply to ``baseline``: every ``model.*``/``train.*`` axis and its own hparams."""
    return {a: list(v) for a, v in cfg.sweep.axes.items() if a.split(".", 1)[0] in (*SHARED_AXES, baseline)}


def search_space(cfg: RunConfig, baseline: str) -> Space:
    return {"lr": cfg.sweep.lr_grid(baseline), "seed": list(range(cfg.sweep.seeds)), **axes_for(cfg, baseline)}


def grid_configs(cfg: RunConfig, baselines: list[str]) -> list[tuple[str, RunConfig]]:
    """Every (baseline, axis point) of the sweep as the config it trains with, each value checked like
    the key it sweeps (``model.d_model: [30]`` with 4 heads, ``model.mlp: [relu]`` or a hyperparameter of
    the wrong type is a `UserError` naming the point, before any work)."""
    validate_axes(cfg, baselines)
    out = []
    for baseline in baselines:
        axes = axes_for(cfg, baseline)
        for values in product(*axes.values()):
            point = dict(zip(axes, values))
            try:
                point_cfg = trial_config(cfg, baseline, {"lr": cfg.sweep.lr_grid(baseline)[0], "seed": 0, **point})
                get_baseline(baseline).check_hparams(point_cfg.baseline_hparams(baseline))
                get_baseline(baseline).check_placement(point_cfg.model.placement)
            except UserError as exc:
                where = ", ".join(f"{k}={v!r}" for k, v in point.items()) or "the shared config"
                raise UserError(f"{baseline} at {where}: {exc}") from exc
            out.append((baseline, point_cfg))
    return out


def grid_size(space: Space) -> int:
    return math.prod(len(v) for v in space.values())


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
