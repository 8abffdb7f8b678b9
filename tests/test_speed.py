"""The speed suite and the harness-overhead measurement run and write what they promise.

These check correctness, not speed: timings are benchmarks, reported by `normfree-bench speed`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import subprocess
import sys
import time

import pytest

from normfree_bench.cli import main
from normfree_bench.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from normfree_bench.tools.overhead import bare_loop, measure_overhead
from normfree_bench.tools.speed import ROUNDS, SpeedSettings, add_ratios, measure_interleaved, run_speed


def tiny_settings(**kw) -> SpeedSettings:
    base = dict(baselines=["layernorm", "dyt", "rezero"], widths=[32], tokens=64,
                model_sizes=[{"d_model": 16, "n_layers": 1, "n_heads": 2}], batch_size=2, context_length=16,
                dtypes=["fp32"], compile=False, min_run_time=0.01)
    return SpeedSettings(**{**base, **kw})


def test_speed_eager_writes_tables_json_csv_and_plot(tmp_path):
    rows = run_speed(tiny_settings(dtypes=["fp32", "bf16"]), tmp_path)
    layer = [r for r in rows if r["bench"] == "layer"]
    model = [r for r in rows if r["bench"] == "model"]
    # rezero has no norm at the attn site, so only layernorm and dyt have layer rows: 2 x 2 dtypes x 2 modes.
    assert {r["baseline"] for r in layer} == {"layernorm", "dyt"} and len(layer) == 8
    assert all(r["time_ms"] > 0 and r["gb_per_s"] > 0 for r in layer)
    assert all(r["time_vs_layernorm"] == 1.0 for r in layer if r["baseline"] == "layernorm")
    assert len(model) == 3 * 2 and all(r["train_tokens_per_s"] > 0 and r["infer_tokens_per_s"] > 0 for r in model)
    data = json.loads((tmp_path / "speed.json").read_text())
    assert len(data["rows"]) == len(rows) and data["settings"]["tokens"] == 64
    header = (tmp_path / "speed.csv").read_text().splitlines()[0].split(",")
    assert {"baseline", "time_ms", "gb_per_s", "train_tokens_per_s", "time_vs_layernorm"} <= set(header)
    assert (tmp_path / "speed.png").read_bytes()[:4] == b"\x89PNG"
    assert "layer benchmark" in (tmp_path / "speed.md").read_text()


def test_timings_are_medians_over_blocks_taken_in_turn_with_their_spread():
    """Every function is timed in ROUNDS blocks, the functions' blocks alternating (a drift in the machine's
    speed reaches all of them), and the interquartile range is the spread of those blocks."""
    log: list[str] = []
    rng = random.Random(0)

    def steady() -> None:
        log.append("steady")
        time.sleep(0.001)

    def jumpy() -> None:
        log.append("jumpy")
        time.sleep(rng.choice([0.0005, 0.003]))

    timed = measure_interleaved({"steady": steady, "jumpy": jumpy}, min_run_time=0.03)
    timing = log[log.index("jumpy") + 4:]  # after each one's warm-up and sizing calls
    switches = sum(a != b for a, b in zip(timing, timing[1:]))
    assert switches >= 2 * ROUNDS - 2
    median, iqr = timed["steady"]
    assert 0.001 <= median < 0.002 and iqr < median
    median, iqr = timed["jumpy"]
    assert 0.0005 <= median <= 0.003 and iqr > 0


@pytest.mark.slow
def test_speed_does_not_print_the_profilers_log(tmp_path):
    """The model rows profile a training step; torch's profiler library would log every start and stop (and,
    without a GPU, an ERROR line) on stderr."""
    env = {k: v for k, v in os.environ.items() if k != "KINETO_LOG_LEVEL"}
    argv = ["speed", "--baselines", "layernorm", "--widths", "32", "--tokens", "64", "--no-compile",
            "--min-run-time", "0.01", "--out", str(tmp_path / "s")]
    done = subprocess.run([sys.executable, "-m", "normfree_bench", *argv], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "s" / "speed.json").read_text())["rows"][-1]["norm_share_pct"] > 0
    assert "profiler_st" not in done.stderr and "ERROR" not in done.stderr, done.stderr


PAGE_FAULTS = """
import resource, sys, torch
from normfree_bench.tools.speed import pin_allocator
if sys.argv[1] == "pin":
    print(pin_allocator(), file=sys.stderr)
x = torch.randn(4096, 256)
def two():
    return x.clone(), x.clone()
for _ in range(3):  # the heap grows to its size over the first calls
    two()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    two()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator is pinned through glibc's mallopt")
def test_timed_calls_take_no_page_faults_once_the_allocator_is_pinned():
    """Two 4 MiB outputs alive at once (the fused DyT forward's y and tanh): with glibc's defaults the heap hands
    them back to the OS on every free and the next call faults on every page (about 2,000 per call); pinned,
    none or a few (the machine may still reclaim idle memory). Run in a fresh process: the setting is
    process-wide."""
    def faults_per_call(mode: str) -> float:
        done = subprocess.run([sys.executable, "-c", PAGE_FAULTS, mode], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return float(done.stdout.split()[-1])

    # Whether glibc's defaults trim depends on where the heap's chunks fell (0, 51, 256 or 2,016 faults per
    # call in four processes): up to four tries for a process that shows the faults.
    faults = {"default": 0.0}
    for _ in range(4):
        faults["default"] = max(faults["default"], faults_per_call("default"))
        if faults["default"] >= 200:
            break
    if faults["default"] < 200:
        pytest.skip(f"glibc kept the memory here even with its defaults ({faults['default']} faults per call)")
    faults["pin"] = faults_per_call("pin")
    assert faults["pin"] <= faults["default"] / 4, faults  # alone: about 2,000 and 0; beside other work up to 256


def test_bandwidth_counts_bytes_moved():
    rows = run_speed.__globals__["layer_rows"](tiny_settings(baselines=["layernorm"]))
    fwd = next(r for r in rows if r["mode"] == "fwd")
    # forward reads x and writes y: 2 * tokens * width * 4 bytes
    assert fwd["gb_per_s"] == pytest.approx(2 * 64 * 32 * 4 / (fwd["time_ms"] / 1e3) / 1e9)


def test_ratios_are_within_matching_settings():
    rows = [{"bench": "layer", "baseline": "layernorm", "width": 8, "dtype": "fp32", "compiled": False,
             "mode": "fwd", "time_ms": 2.0},
            {"bench": "layer", "baseline": "dyt", "width": 8, "dtype": "fp32", "compiled": False, "mode": "fwd",
             "time_ms": 1.0},
            {"bench": "layer", "baseline": "dyt", "width": 8, "dtype": "fp32", "compiled": True, "mode": "fwd",
             "time_ms": 1.0}]
    add_ratios(rows)
    assert rows[1]["time_vs_layernorm"] == 0.5
    assert "time_vs_layernorm" not in rows[2]  # no compiled layernorm in this run: no ratio


def test_compiled_layer_benchmark_reports_compile_time(tmp_path):
    rows = run_speed(tiny_settings(baselines=["layernorm"], compile=True,
                                   model_sizes=[]), tmp_path)
    compiled = [r for r in rows if r["compiled"]]
    assert compiled and all(r["compile_s"] > 0 for r in compiled)
    assert all(r["compile_s"] == 0 for r in rows if not r["compiled"])


def test_overhead_measures_both_sides_of_the_same_trial():
    cfg = RunConfig(model=ModelConfig(d_model=16, n_layers=1, n_heads=2, context_length=16),
                    data=DataConfig(batch_size=4, val_windows=4),
                    train=TrainConfig(steps=10, warmup_steps=2, eval_interval=5, threads=1))
    from normfree_bench.data.text import load_corpus

    assert bare_loop(cfg, load_corpus(cfg.data)) > 0
    result = measure_overhead(cfg, repeats=1)
    assert result["steps"] == 10 and len(result["pairs"]) == 1
    assert math.isfinite(result["ratio"]) and result["ratio"] > 0


@pytest.mark.parametrize("argv, fragment", [
    (["speed", "--widths", "0", "--no-compile"], "--widths must be comma-separated positive integers"),
    (["speed", "--baselines", "nope", "--no-compile"], "unknown baseline 'nope'"),
    (["speed", "--overhead", "--suite", "nosuch"], "unknown suite 'nosuch'"),
])
def test_speed_bad_input(tmp_path, capsys, argv, fragment):
    assert main([*argv, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0]
