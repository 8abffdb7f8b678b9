"""Every shipped YAML validates, and config errors name the key and what is valid."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from normfree_bench.config import ModelConfig, SweepConfig, load_run_config, read_yaml
from normfree_bench.config.suites import configs_dir, list_suites, suite_path
from normfree_bench.core.registry import get_baseline
from normfree_bench.errors import UserError
from normfree_bench.sweep.grid import sweep_baselines, validate_axes
from normfree_bench.sweep.ladder import check_rungs, load_ladder

SUITES = sorted(configs_dir().glob("*.yaml"))


def test_required_suites_exist():
    assert {"smoke", "default"} <= set(list_suites())


@pytest.mark.parametrize("path", SUITES, ids=lambda p: p.stem)
def test_every_config_validates(path: Path):
    if "ladder" in read_yaml(path):  # a ladder suite: its run config and every rung's sizes
        from normfree_bench.cli import reference_params

        ladder = load_ladder(path)
        assert len(check_rungs(ladder, reference_params)) == len(ladder.ladder.widths)
        cfg = ladder.base
    else:
        cfg = load_run_config(path)
    baselines = sweep_baselines(cfg)
    validate_axes(cfg, baselines)
    for name, hparams in cfg.hparams.items():
        get_baseline(name)(cfg.model, **hparams)  # unknown hyperparameters raise
    assert cfg.sweep.lr_grid()


def test_default_suite_spans_three_decades_with_seven_lrs():
    grid = load_run_config(configs_dir() / "default.yaml").sweep.lr_grid()
    assert len(grid) >= 7 and grid[-1] / grid[0] >= 1000


def test_llama_preset_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: {preset: llama, d_model: 32}\n")
    model = load_run_config(path).model
    assert (model.mlp, model.positions, model.bias, model.d_model) == ("swiglu", "rope", False, 32)
    assert ModelConfig.from_preset("llama").mlp == "swiglu"


@pytest.mark.parametrize("body, fragment", [
    ("model: {d_modle: 3}\n", "unknown config key 'config.model.d_modle'; valid keys: vocab_size"),
    ("train: {steps: ten}\n", "config.train.steps must be an integer"),
    ("train: {lr: 0}\n", "train.lr must be a finite number > 0"),
    ("train: {steps: 0}\n", "train.steps must be >= 1"),
    ("sweep: {lr_min: 0.1, lr_max: 0.001}\n", "is below sweep.lr_min"),
    ("sweep: {n_lrs: 0}\n", "grid would be empty"),
    ("sweep: {seeds: 0}\n", "sweep.seeds must be >= 1"),
    ("sweep: {lrs: [-1]}\n", "must be finite numbers > 0"),
    ("model: {preset: gpt3}\n", "valid: gpt2, llama"),
    ("model: {mlp: relu}\n", "valid: gelu, swiglu"),
    ("model: {d_model: 30, n_heads: 4}\n", "divisible"),
    ("train: [1, 2\n", "malformed YAML"),
    ("- 1\n- 2\n", "must hold a YAML mapping"),
])
def test_config_errors(tmp_path, body, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(UserError) as err:
        load_run_config(path)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_log_spaced_grid():
    from normfree_bench.config import SweepConfig

    assert SweepConfig(lr_min=1e-4, lr_max=1e-1, n_lrs=4).lr_grid() == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])


def test_set_overrides_parse_dotted_keys_as_yaml():
    from normfree_bench.config import parse_set

    assert parse_set(["hparams.dyt.alpha_init=0.5", "model.preset=llama", "hparams.dyt.sites_with_layernorm=[final]"]) \
        == {"hparams": {"dyt": {"alpha_init": 0.5, "sites_with_layernorm": ["final"]}}, "model": {"preset": "llama"}}
    for bad in ("novalue", "=3", "a..b=1"):
        with pytest.raises(UserError, match="--set needs KEY=VALUE"):
            parse_set([bad])


def test_train_axes_are_valid_sweep_axes_but_lr_and_seed_are_not():
    from normfree_bench.config import build_dataclass
    from normfree_bench.sweep.grid import search_space, trial_config

    base = load_run_config(suite_path("smoke"))
    cfg = dataclasses.replace(base, sweep=build_dataclass(SweepConfig, {
        **base.sweep.__dict__, "axes": {"model.qk_norm": ["none", "layernorm"], "train.z_loss": [0.0, 1.0e-4]}},
        "sweep"))
    validate_axes(cfg, ["layernorm"])
    space = search_space(cfg, "layernorm")
    assert space["model.qk_norm"] == ["none", "layernorm"] and space["train.z_loss"] == [0.0, 1.0e-4]
    one = trial_config(cfg, "layernorm", {"lr": 0.01, "seed": 0, "model.qk_norm": "layernorm", "train.z_loss": 1e-4})
    assert one.model.qk_norm == "layernorm" and one.train.z_loss == 1e-4 and one.train.lr == 0.01
    for axis in ("train.lr", "train.seed", "train.nonsense"):
        bad = dataclasses.replace(cfg, sweep=dataclasses.replace(cfg.sweep, axes={axis: [1, 2]}))
        with pytest.raises(UserError, match="valid train axes"):
            validate_axes(bad, ["layernorm"])


def test_an_explicit_empty_lr_list_is_an_error_not_the_default_grid():
    with pytest.raises(UserError, match="sweep.lrs is an empty list"):
        SweepConfig(lrs=[])
    assert SweepConfig().lr_grid() == SweepConfig(lrs=None).lr_grid()


def test_non_finite_numbers_are_refused_wherever_a_number_is_read():
    from normfree_bench.config import load_run_config

    for key, value in (("guard", {"margin": float("nan")}), ("sweep", {"target_loss": float("inf")}),
                       ("model", {"mlp_ratio": float("nan")}), ("train", {"weight_decay": float("nan")})):
        with pytest.raises(UserError, match="must be a finite number"):
            load_run_config(None, {key: value})
