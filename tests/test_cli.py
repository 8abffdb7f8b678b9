"""Tests of the ``normfree-bench`` command line: bad input is exit code 2 and one line; the happy paths work.

Usage: ``.venv/bin/python -m pytest tests/test_cli.py -q``

Bad inputs run in-process through ``normfree_bench.cli.main`` (none of them registers a baseline).
Every case that accepts ``--out`` is pointed at a pre-made run directory whose file bytes and mtimes
must not change. Commands that register a new baseline run in a subprocess (the registry is global).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from normfree_bench.cli import main
from tests.conftest import BOOM_PLUGIN, cli, private_cache, snapshot, write_word_corpus

REPO = Path(__file__).resolve().parents[1]
BUILTINS = ["layernorm", "dyt", "fixup", "nf", "rezero", "rmsnorm", "skipinit"]


def tiny_cfg(corpus: str, **sections: dict) -> dict:
    cfg = {
        "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "context_length": 16},
        "data": {"corpus": corpus, "batch_size": 4, "val_windows": 4},
        "train": {"steps": 6, "warmup_steps": 1, "eval_interval": 3, "log_interval": 1, "threads": 1},
        "guard": {"patience": 3},
        "sweep": {"lrs": [0.01], "seeds": 1, "eval_seeds": 0, "baselines": ["layernorm"]},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


def dump(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def subprocess_cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "normfree_bench", *args], capture_output=True, text=True,
                          env=env, timeout=300, cwd=REPO)


# ---- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with private_cache(tmp_path_factory.mktemp("cli")) as base:
        yield base


@pytest.fixture(scope="module")
def inputs(root: Path) -> Path:
    """Every input file the bad-input cases refer to, in one folder (also snapshotted)."""
    d = root / "inputs"
    d.mkdir()
    corpus = write_word_corpus(d / "corpus.txt")
    (d / "tiny.txt").write_text("hello world, tiny\n")
    (d / "empty_corpus").mkdir()
    c = str(corpus)
    dump(d / "base.yaml", tiny_cfg(c))
    (d / "malformed.yaml").write_text("model: {d_model: 16\n  bad: [\n")
    dump(d / "unknown_key.yaml", tiny_cfg(c, model={"widht": 3}))
    dump(d / "wrong_type.yaml", tiny_cfg(c, train={"steps": "ten"}))
    dump(d / "neg_lr.yaml", tiny_cfg(c, sweep={"lrs": [-1]}))
    dump(d / "inverted.yaml", tiny_cfg(c, sweep={"lr_min": 0.1, "lr_max": 0.001, "lrs": None}))
    dump(d / "empty_grid.yaml", tiny_cfg(c, sweep={"n_lrs": 0, "lrs": None}))
    dump(d / "seeds0.yaml", tiny_cfg(c, sweep={"seeds": 0}))
    dump(d / "steps0.yaml", tiny_cfg(c, train={"steps": 0, "warmup_steps": 0}))
    dump(d / "missing_corpus.yaml", tiny_cfg(str(d / "no-such-corpus.txt")))
    dump(d / "empty_corpus.yaml", tiny_cfg(str(d / "empty_corpus")))
    dump(d / "small_corpus.yaml", tiny_cfg(str(d / "tiny.txt"), model={"context_length": 64}))
    (d / "bad_syntax.py").write_text("def oops(:\n    pass\n")
    (d / "registers_nothing.py").write_text("from normfree_bench import Baseline\n\nclass Unregistered(Baseline):\n"
                                            "    name = 'unregistered'\n")
    (d / "dup_dyt.py").write_text(
        "from normfree_bench import Baseline, register_baseline\n\n\n@register_baseline\nclass DupDyt(Baseline):\n"
        "    name = 'dyt'\n    description = 'a second dyt'\n    paper = 'https://example.org'\n")
    not_a_run = d / "not_a_run"
    not_a_run.mkdir()
    (not_a_run / "notes.txt").write_text("not a run\n")
    return d


@pytest.fixture(scope="module")
def premade(root: Path, inputs: Path) -> Path:
    """A finished run directory (tiny sweep) that no bad input may touch."""
    out = root / "premade"
    assert main(["run", "--config", str(inputs / "base.yaml"), "--out", str(out), "--no-progress"]) == 0
    assert (out / "config.yaml").is_file() and (out / "study.db").is_file() and (out / "trials.csv").is_file()
    return out


# ---- bad input ---------------------------------------------------------------------------------------
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")

# (argv template, substrings the error line must contain). {I} = inputs folder, {P} = pre-made run dir.
BAD_INPUTS = [
    pytest.param(["run", "--suite", "smok", "--out", "{P}"], ["unknown suite 'smok'", "did you mean 'smoke'"],
                 id="unknown-suite"),
    pytest.param(["train", "--baseline", "dytt", "--config", "{I}/base.yaml", "--out", "{P}"],
                 ["unknown baseline 'dytt'", "did you mean 'dyt'", "layernorm"], id="unknown-baseline-train"),
    pytest.param(["run", "--config", "{I}/base.yaml", "--baselines", "layernorm,nope", "--out", "{P}"],
                 ["unknown baseline 'nope'", "valid:", "skipinit"], id="unknown-baseline-run"),
    pytest.param(["run", "--config", "{I}/malformed.yaml", "--out", "{P}"], ["malformed YAML", "malformed.yaml"],
                 id="malformed-yaml"),
    pytest.param(["run", "--config", "{I}/no-such-config.yaml", "--out", "{P}"], ["config file not found"],
                 id="missing-config"),
    pytest.param(["run", "--config", "{I}/unknown_key.yaml", "--out", "{P}"],
                 ["unknown config key", "widht", "valid keys:", "d_model", "n_layers"], id="unknown-key"),
    pytest.param(["run", "--config", "{I}/wrong_type.yaml", "--out", "{P}"],
                 ["train.steps", "must be an integer", "ten"], id="wrong-type"),
    pytest.param(["train", "--lr", "0", "--config", "{I}/base.yaml", "--out", "{P}"], ["train.lr", "> 0"],
                 id="train-lr-0"),
    pytest.param(["train", "--lr", "-0.001", "--config", "{I}/base.yaml", "--out", "{P}"], ["train.lr", "> 0"],
                 id="train-lr-negative"),
    pytest.param(["train", "--lr", "abc", "--out", "{P}"], ["--lr", "abc"], id="train-lr-not-a-number"),
    pytest.param(["run", "--config", "{I}/neg_lr.yaml", "--out", "{P}"], ["learning rates", "> 0", "-1"],
                 id="sweep-lr-negative"),
    pytest.param(["run", "--config", "{I}/inverted.yaml", "--out", "{P}"],
                 ["sweep.lr_max (0.001) is below sweep.lr_min"],
                 id="inverted-lr-range"),
    pytest.param(["run", "--config", "{I}/empty_grid.yaml", "--out", "{P}"], ["n_lrs", "empty"], id="empty-grid"),
    pytest.param(["run", "--config", "{I}/seeds0.yaml", "--out", "{P}"], ["sweep.seeds", ">= 1"], id="seeds-0"),
    pytest.param(["train", "--steps", "0", "--config", "{I}/base.yaml", "--out", "{P}"], ["train.steps", ">= 1"],
                 id="train-steps-0"),
    pytest.param(["run", "--config", "{I}/steps0.yaml", "--out", "{P}"], ["train.steps", ">= 1"],
                 id="run-steps-0"),
    pytest.param(["run", "--config", "{I}/missing_corpus.yaml", "--out", "{P}"],
                 ["corpus path not found", "no-such-corpus.txt"], id="missing-corpus"),
    pytest.param(["run", "--config", "{I}/empty_corpus.yaml", "--out", "{P}"], ["empty_corpus", "no text files"],
                 id="empty-corpus-folder"),
    pytest.param(["train", "--config", "{I}/small_corpus.yaml", "--out", "{P}"], ["context window", "65"],
                 id="corpus-smaller-than-context-train"),
    pytest.param(["run", "--config", "{I}/small_corpus.yaml", "--out", "{I}/small-corpus-run"],
                 ["context window", "65"], id="corpus-smaller-than-context-run"),
    pytest.param(["train", "--plugin", "{I}/bad_syntax.py", "--config", "{I}/base.yaml", "--out", "{P}"],
                 ["bad_syntax.py", "SyntaxError", "line 1"], id="plugin-syntax-error"),
    pytest.param(["run", "--plugin", "{I}/registers_nothing.py", "--config", "{I}/base.yaml", "--out", "{P}"],
                 ["registers_nothing.py", "registers no baseline"], id="plugin-registers-nothing"),
    pytest.param(["run", "--plugin", "{I}/dup_dyt.py", "--config", "{I}/base.yaml", "--out", "{P}"],
                 ["'dyt' is registered twice", "dup_dyt.py", str(REPO / "baselines" / "dyt.py")],
                 id="plugin-duplicate-name"),
    pytest.param(["run", "--plugin", "{I}/no_such_plugin.py", "--config", "{I}/base.yaml", "--out", "{P}"],
                 ["plugin file not found"], id="plugin-missing"),
    pytest.param(["run", "--config", "{I}/base.yaml", "--storage", "notaurl://", "--out", "{P}"],
                 ["malformed storage URL", "notaurl://"], id="storage-malformed"),
    pytest.param(["run", "--config", "{I}/base.yaml", "--storage", "postgresql+psycopg://u:secret@127.0.0.1:1/db",
                  "--out", "{I}/unreachable-run"], ["cannot reach the database", "postgresql+psycopg://u:***@127.0.0.1:1/db"],
                 id="storage-unreachable-postgres"),
    pytest.param(["run", "--config", "{I}/base.yaml", "--storage", "sqlite:////nonexistent-nfb-dir/x/study.db",
                  "--out", "{I}/unreachable-run"], ["cannot reach the database"], id="storage-unreachable-sqlite"),
    pytest.param(["run", "--config", "{I}/base.yaml", "--out", "/proc/nope"], ["/proc/nope", "not writable"],
                 id="run-out-not-writable"),
    pytest.param(["train", "--config", "{I}/base.yaml", "--out", "/proc/nope", "--no-progress"],
                 ["/proc/nope", "not writable"], id="train-out-not-writable"),
    pytest.param(["run", "--config", "{I}/base.yaml", "--device", "cuda", "--out", "{P}"], ["cuda", "not available"],
                 id="run-device-cuda", marks=NO_CUDA),
    pytest.param(["train", "--config", "{I}/base.yaml", "--device", "cuda", "--out", "{P}"],
                 ["cuda", "not available"], id="train-device-cuda", marks=NO_CUDA),
    pytest.param(["train", "--device", "tpu", "--out", "{P}"], ["--device", "tpu"], id="train-device-invalid"),
    pytest.param(["run", "--config", "{I}/base.yaml", "--out", "{I}/not_a_run"], ["not a normfree-bench run"],
                 id="run-out-is-foreign-dir"),
    pytest.param(["leaderboard", "{I}/not_a_run"], ["not_a_run", "not a normfree-bench run directory"],
                 id="leaderboard-not-a-run"),
    pytest.param(["leaderboard", "{I}/no_such_dir"], ["no_such_dir", "not a normfree-bench run directory"],
                 id="leaderboard-missing-dir"),
    pytest.param(["leaderboard", "{P}", "--format", "yaml"], ["unknown format 'yaml'", "latex"],
                 id="leaderboard-unknown-format"),
    pytest.param(["leaderboard", "{P}", "--sort", "nonsense"], ["unknown sort column", "best_val_loss"],
                 id="leaderboard-unknown-sort"),
    pytest.param(["plot", "{I}/not_a_run"], ["not a normfree-bench run directory"], id="plot-not-a-run"),
    pytest.param(["analyze", "{I}/not_a_run"], ["not a normfree-bench run directory"], id="analyze-not-a-run"),
    pytest.param(["analyze", "{P}", "--trials", "some"], ["--trials", "'some'", "best"], id="analyze-bad-scope"),
    pytest.param(["report", "{I}/no_such_dir"], ["no_such_dir", "not a normfree-bench run directory"],
                 id="report-missing-dir"),
    pytest.param(["baselines", "check", "dytt"], ["unknown baseline 'dytt'", "did you mean 'dyt'"],
                 id="check-unknown-baseline"),
    pytest.param(["frobnicate"], ["invalid choice", "frobnicate"], id="unknown-subcommand"),
    pytest.param([], ["required"], id="no-subcommand"),
]


@pytest.mark.parametrize("template, needles", BAD_INPUTS)
def test_bad_input_is_exit_2_one_line(template: list[str], needles: list[str], inputs: Path, premade: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.replace("{I}", str(inputs)).replace("{P}", str(premade)) for a in template]
    before_run, before_inputs = snapshot(premade), snapshot(inputs)
    rc, out, err = cli(argv, capsys)
    assert rc == 2, (rc, err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one stderr line, got {err!r}"
    line = lines[0]
    assert line.startswith("error:") and len(line) > len("error: ") + 5, line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert snapshot(premade) == before_run, "the pre-made run directory changed"
    assert snapshot(inputs) == before_inputs, "files were created or changed next to the inputs"


def test_console_script_bad_input(inputs: Path) -> None:
    """The installed entry point, in a fresh process: exit 2, one line, no traceback."""
    exe = Path(sys.executable).with_name("normfree-bench")
    assert exe.is_file(), exe
    proc = subprocess.run([str(exe), "train", "--baseline", "dytt", "--config", str(inputs / "base.yaml")],
                          capture_output=True, text=True, timeout=300, cwd=inputs)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "did you mean 'dyt'" in lines[0], proc.stderr
    assert not (inputs / "runs").exists()


# ---- positive paths ------------------------------------------------------------------------------
def test_baselines_list_subprocess(root: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NORMFREE_BENCH_BASELINES"}
    proc = subprocess_cli(["baselines", "list"], env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in proc.stdout.splitlines() if line.startswith("|") and not line.startswith("|--")]
    header, *body = rows
    assert header[:4] == ["baseline", "group", "description", "paper"]
    assert [r[0] for r in body if r[1] == "main"] == sorted(BUILTINS)
    from normfree_bench.core.registry import get_baseline

    for name, group, description, paper, *_ in body:
        assert group == get_baseline(name).group
        assert re.fullmatch(r"https://arxiv\.org/abs/\d{4}\.\d{4,5}", paper), (name, paper)
        assert paper == get_baseline(name).paper
        assert description and description != "-"


def test_baselines_list_in_process(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    rc, out, err = cli(["baselines", "list"], capsys)
    assert rc == 0, err
    for name in BUILTINS:
        assert re.search(rf"^\|\s*{name}\s*\|.*https://arxiv\.org/abs/", out, re.M), name


def test_baselines_check_builtin(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    rc, out, err = cli(["baselines", "check", "layernorm"], capsys)
    assert rc == 0, err
    results = re.findall(r"^\|\s*(\w+ \((?:gpt2|llama)\))\s*\|\s*(\w+)\s*\|", out, re.M)
    assert len(results) >= 14  # 7 checks x 2 presets
    assert all(result == "ok" for _, result in results), results
    assert "FAIL" not in out and err == ""


def test_baselines_check_plugin_whose_forward_raises(root: Path) -> None:
    plugin = root / "boom_plugin.py"
    plugin.write_text(BOOM_PLUGIN)
    proc = subprocess_cli(["baselines", "check", str(plugin)])
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "boomnorm:" in proc.stdout
    assert re.search(r"^\|\s*forward \(gpt2\)\s*\|\s*FAIL\s*\|.*RuntimeError: boom in forward", proc.stdout, re.M)
    assert re.search(r"\d+ check\(s\) failed", proc.stderr)


def test_train_writes_config_and_metrics(root: Path, inputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = dump(root / "train.yaml", tiny_cfg(str(inputs / "corpus.txt"),
                                             model={"d_model": 32, "n_layers": 2, "n_heads": 4, "context_length": 32},
                                             train={"eval_interval": 10, "log_interval": 5, "warmup_steps": 2}))
    out = root / "train-out"
    rc, stdout, err = cli(["train", "--baseline", "layernorm", "--steps", "20", "--lr", "0.003", "--config",
                           str(cfg), "--out", str(out), "--no-progress"], capsys)
    assert rc == 0, err
    record = yaml.safe_load((out / "config.yaml").read_text())
    assert re.fullmatch(r"[0-9a-f]{12}", record["config_hash"])
    assert record["baseline"] == "layernorm"
    assert record["train"]["steps"] == 20 and record["train"]["lr"] == 0.003
    assert record["model"]["d_model"] == 32 and record["model"]["context_length"] == 32
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("final_val_loss", "diverged", "diverged_step", "steps", "tokens_per_s", "params"):
        assert key in metrics, key
    assert metrics["steps"] == 20
    assert metrics["diverged"] is False and metrics["diverged_step"] is None
    assert 0 < metrics["final_val_loss"] < math.log(256)
    assert isinstance(metrics["params"], int) and metrics["params"] > 10_000
    assert metrics["tokens_per_s"] > 0
    assert (out / "curve.csv").is_file()
    assert stdout.startswith("layernorm: final val loss") and str(out) in stdout
    # a train output is not a run directory
    rc, _, err = cli(["leaderboard", str(out)], capsys)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error:") and "train" in err


def test_python_m_entry_point_help(root: Path) -> None:
    proc = subprocess_cli(["--help"])
    assert proc.returncode == 0
    for command in ("train", "run", "leaderboard", "plot", "baselines"):
        assert command in proc.stdout
