"""``train.compile``: the training steps through torch.compile, the compile time apart from the step time.

Usage: ``.venv/bin/python -m pytest tests/test_compile_training.py -q``  (``-m slow``: the compiled run)
"""

from __future__ import annotations

import math

import pytest

from normfree_bench.config import RunConfig, config_hash, load_run_config, parse_set
from normfree_bench.config.suites import suite_path
from normfree_bench.store.trials import TRIAL_COLUMNS
from normfree_bench.tables.export import compute_summary
from normfree_bench.training.train import resolve_compile, resolved_settings, train_one
from tests.conftest import cli, without_later_keys


def test_compile_defaults_to_cuda_only_and_keeps_old_hashes() -> None:
    assert resolve_compile(None, "cuda") is True and resolve_compile(None, "cpu") is False
    assert resolve_compile(True, "cpu") is True and resolve_compile(False, "cuda") is False
    cfg = RunConfig()
    assert resolved_settings(cfg)["compile"] is False  # this machine has no GPU
    assert cfg.config_hash() == config_hash(without_later_keys(cfg.to_dict()))  # old runs still resume
    on = load_run_config(overrides=parse_set(["train.compile=true"]))
    assert on.train.compile is True and on.config_hash() != cfg.config_hash()


def test_compile_must_be_a_boolean(tmp_path, capsys) -> None:
    rc, _, err = cli(["run", "--suite", "smoke", "--out", str(tmp_path / "r"), "--set", "train.compile=yes please"],
                     capsys)
    assert rc == 2 and "train.compile must be true or false" in err and len(err.strip().splitlines()) == 1


def test_compile_time_is_a_trial_column_and_summed_in_the_compute_record() -> None:
    assert TRIAL_COLUMNS.index("compile_s") == TRIAL_COLUMNS.index("eval_s") + 1
    trials = [{"status": "COMPLETE", "steps": 10, "train_s": 1.0, "wall_s": 3.0, "compile_s": 1.5},
              {"status": "COMPLETE", "steps": 10, "train_s": 1.0, "wall_s": 2.0, "compile_s": 0.25},
              {"status": "FAIL", "steps": 0, "train_s": 0.0, "wall_s": 1.0, "compile_s": 9.0}]
    assert compute_summary(trials)["compile_s"] == 1.75


@pytest.mark.slow
def test_a_compiled_run_follows_the_eager_run_and_reports_its_compile_time() -> None:
    settings = ["train.steps=20", "train.eval_interval=10", "train.log_interval=1", "train.diagnostics=false",
                "baseline=dyt"]
    eager = train_one(load_run_config(suite_path("smoke"), parse_set(settings)))
    compiled = train_one(load_run_config(suite_path("smoke"), parse_set([*settings, "train.compile=true"])))
    assert eager.compile_s == 0.0
    assert compiled.compile_s > 0.5  # inductor's C++ compile of a whole model takes seconds on a CPU
    assert compiled.train_s + compiled.compile_s + compiled.eval_s <= compiled.wall_s  # three parts, apart
    assert compiled.tokens_per_s == pytest.approx(compiled.tokens / compiled.train_s)  # the compile left out
    curve = [(e["train_loss"], c["train_loss"]) for e, c in zip(eager.curve, compiled.curve)
             if not math.isnan(e["train_loss"])]
    assert len(curve) == 20
    for a, b in curve:  # the same steps up to float reassociation in the fused kernels
        assert b == pytest.approx(a, rel=1e-3, abs=1e-3)
    assert compiled.final_val_loss == pytest.approx(eager.final_val_loss, rel=1e-3)
