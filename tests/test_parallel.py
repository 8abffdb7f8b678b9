"""Data-parallel trials (``train.devices: 2``, ``train.strategy: ddp``): two gloo processes on the CPU train the
curve one process trains on the same global batch, and bad settings are refused before any work.

Usage: ``pytest tests/test_parallel.py -q``
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from normfree_bench.config import load_run_config
from normfree_bench.errors import UserError
from normfree_bench.training.parallel import RankShard
from normfree_bench.training.train import resolved_settings, train_one
from tests.conftest import cli, private_cache, snapshot, write_word_corpus


def settings(corpus: Path, **train) -> dict:
    return {"baseline": "layernorm",
            "model": {"d_model": 16, "n_layers": 2, "n_heads": 2, "context_length": 16},
            "data": {"corpus": str(corpus), "batch_size": 8, "val_windows": 8},
            "train": {"steps": 12, "warmup_steps": 2, "eval_interval": 6, "log_interval": 1, "threads": 2,
                      "lr": 0.01, **train}}


def test_two_gloo_ranks_train_the_single_process_curve(tmp_path: Path) -> None:
    with private_cache(tmp_path):
        corpus = write_word_corpus(tmp_path / "corpus.txt")
        single = train_one(load_run_config(None, settings(corpus)))
        ddp = train_one(load_run_config(None, settings(corpus, devices=2, strategy="ddp")))
    assert ddp.steps == single.steps == 12 and not ddp.diverged
    assert [r["step"] for r in ddp.curve] == [r["step"] for r in single.curve]
    for one, two in zip(single.curve, ddp.curve):
        for key in ("train_loss", "grad_norm", "val_loss"):
            if math.isnan(one[key]):
                assert math.isnan(two[key]), (key, one["step"])
            else:
                assert two[key] == pytest.approx(one[key], rel=2e-5, abs=1e-6), (key, one["step"], one[key], two[key])
    assert ddp.final_val_loss == pytest.approx(single.final_val_loss, rel=2e-5)
    assert single.curve[-1]["train_loss"] < single.curve[0]["train_loss"]  # the curve compared is one that learns


def test_each_rank_trains_its_own_contiguous_share_of_the_global_batch() -> None:
    x = torch.arange(8 * 3).reshape(8, 3)
    batches = [(x, x + 100), (x * 2, x * 2 + 100)]
    shards = [list(RankShard(batches, rank, 2)) for rank in range(2)]
    for i, (gx, gy) in enumerate(batches):
        assert torch.equal(torch.cat([shards[0][i][0], shards[1][i][0]]), gx)
        assert torch.equal(torch.cat([shards[0][i][1], shards[1][i][1]]), gy)
        assert shards[0][i][0].shape[0] == 4


@pytest.mark.parametrize("train, data, needle", [
    ({"devices": 2}, {}, "train.devices 2 needs train.strategy ddp"),
    ({"devices": 0}, {}, "train.devices must be >= 1"),
    ({"strategy": "fsdp"}, {}, "train.strategy 'fsdp'; valid: auto, ddp"),
    ({"devices": 3, "strategy": "ddp"}, {}, "data.batch_size 8 is not divisible by train.devices 3"),
])
def test_bad_parallel_settings_are_refused(tmp_path: Path, train: dict, data: dict, needle: str) -> None:
    cfg = settings(tmp_path / "corpus.txt", **train)
    cfg["data"].update(data)
    with pytest.raises(UserError, match=needle):
        resolved_settings(load_run_config(None, cfg))


def test_a_logger_with_data_parallel_trials_is_one_line_before_any_work(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    before = snapshot(tmp_path)
    rc, _, err = cli(["run", "--suite", "smoke", "--out", str(out), "--logger", "csv", "--set", "train.devices=2",
                      "--set", "train.strategy=ddp", "--no-progress"], capsys)
    assert rc == 2 and "--logger is not available with train.devices > 1" in err, err
    assert len(err.strip().splitlines()) == 1 and snapshot(tmp_path) == before
