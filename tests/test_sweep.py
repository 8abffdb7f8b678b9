"""End-to-end tests of the benchmark sweep: ``normfree-bench run``, resume, plugins, ``leaderboard``, ``plot``.

Usage: ``.venv/bin/python -m pytest tests/test_sweep.py -q``

One real ``run --suite smoke`` (every built-in baseline, the stdlib corpus; the session fixture
``smoke`` in conftest.py) is shared with the analysis tests; everything else uses a tiny model on a
small generated text file. The corpus cache lives in a temporary folder ($NORMFREE_BENCH_CACHE).
Plugin runs happen in subprocesses because the baseline registry is process-global.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from normfree_bench.cli import build_parser, main, overrides_of
from normfree_bench.config import load_run_config
from normfree_bench.config.suites import suite_path
from normfree_bench.store.provenance import VECTOR_ISAS
from normfree_bench.store.storage import resolve_storage
from tests.conftest import private_cache, write_word_corpus

REPO = Path(__file__).resolve().parents[1]
L0 = math.log(256)
BUILTINS = ["layernorm", "dyt", "fixup", "nf", "rezero", "rmsnorm", "skipinit"]
SMOKE_LRS = [0.001, 0.01, 0.1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TRIAL_COLUMNS = ["baseline", "lr", "seed", "status", "final_val_loss", "best_val_loss", "diverged",
                 "diverged_step", "max_train_loss", "steps", "tokens_per_s", "wall_s", "params"]
CURVE_COLUMNS = ["trial", "baseline", "phase", "lr", "seed", "step", "train_loss", "val_loss", "grad_norm",
                 "val_perplexity", "val_accuracy"]
LEADERBOARD_KEYS = ["baseline", "best_val_loss", "best_val_loss_std", "best_lr", "lr_sensitivity", "diverged",
                    "max_stable_lr", "spiked", "lr_basin_decades", "steps_to_target", "tokens_per_s", "params"]
RUN_FILES = ["config.yaml", "provenance.json", "trials.csv", "curves.csv", "leaderboard.md", "leaderboard.csv",
             "leaderboard.json", "study.db"]


# ---- helpers ------------------------------------------------------------------------------------
def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {err!r}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return rc, out, err


def subprocess_cli(args: list[str], env: dict[str, str] | None = None,
                   timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "normfree_bench", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>", p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


def num(value: str) -> float:
    return float(value) if value not in ("", None) else math.nan


def write_tiny_config(path: Path, corpus: Path, lrs: list[float], baselines: list[str] | None = None,
                      steps: int = 6) -> Path:
    cfg = {
        "description": "tiny test sweep",
        "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "context_length": 16},
        "data": {"corpus": str(corpus), "batch_size": 4, "val_windows": 4},
        "train": {"steps": steps, "warmup_steps": 1, "eval_interval": 3, "log_interval": 1, "threads": 1},
        "guard": {"patience": 3},
        "sweep": {"lrs": lrs, "seeds": 1, "eval_seeds": 0, "baselines": baselines or ["layernorm"]},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ---- shared fixtures ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private corpus cache for the module (in-process and for subprocesses)."""
    with private_cache(tmp_path_factory.mktemp("sweep")) as root:
        yield root


@pytest.fixture(scope="module")
def corpus_file(env_root: Path) -> Path:
    return write_word_corpus(env_root / "corpus.txt")


@pytest.fixture(scope="module")
def tiny_run(env_root: Path, corpus_file: Path) -> Path:
    """A tiny two-LR layernorm sweep, run in-process."""
    cfg = write_tiny_config(env_root / "tiny.yaml", corpus_file, [0.003, 0.03])
    out = env_root / "tiny"
    assert main(["run", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    return out


# ---- the smoke suite end to end -----------------------------------------------------------------
def test_smoke_run_writes_every_file(smoke: dict[str, Any]) -> None:
    run_dir = smoke["dir"]
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
        assert (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "plots").is_dir()
    stdout = smoke["proc"].stdout
    assert "Traceback" not in smoke["proc"].stderr
    for baseline in BUILTINS:
        assert re.search(rf"^\|\s*{baseline}\s*\|", stdout, re.M), f"{baseline} missing from printed leaderboard"
    assert f"results in {run_dir}" in stdout


def test_smoke_config_yaml(smoke_dir: Path) -> None:
    record = yaml.safe_load((smoke_dir / "config.yaml").read_text())
    assert re.fullmatch(r"[0-9a-f]{12}", record["config_hash"])
    assert record["config_hash"] == load_run_config(suite_path("smoke")).sweep_hash()
    assert record["run_name"] == f"nfb-{record['config_hash']}"
    assert record["storage"] is None  # null: the run directory's own study.db
    assert record["baselines"] == BUILTINS
    smoke_yaml = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    for section in ("model", "data", "train", "guard"):
        for key, value in smoke_yaml[section].items():
            assert record[section][key] == value, f"{section}.{key}"
    assert record["sweep"]["lrs"] == SMOKE_LRS
    assert record["sweep"]["seeds"] == 1


def test_smoke_provenance(smoke: dict[str, Any]) -> None:
    prov = json.loads((smoke["dir"] / "provenance.json").read_text())
    for key in ("created", "python", "platform", "packages", "git_sha", "device", "device_name", "torch_threads",
                "corpus_sha256", "corpus_source", "sweep_wall_s_this_invocation"):
        assert key in prov, key
    assert prov["device"] in ("cpu", "cuda")
    if Path("/proc/cpuinfo").exists():  # Linux: the CPU's vector width and caches, which CPU timings depend on
        assert prov["cpu"]["vector_isa"] in VECTOR_ISAS and prov["cpu"]["caches"]["L1d"].endswith("K")
    assert re.fullmatch(r"[0-9a-f]{64}", prov["corpus_sha256"])
    assert "standard library" in prov["corpus_source"]
    assert prov["packages"]["torch"] and prov["packages"]["optuna"] and prov["packages"]["normfree-bench"]
    assert prov["python"] == sys.version.split()[0]
    assert prov["storage"] == "study.db in the run directory"  # no path of the machine that ran it
    assert 0 < smoke["provenance"]["sweep_wall_s_this_invocation"] <= smoke["wall"]


def test_smoke_trials_csv(smoke_dir: Path) -> None:
    columns, rows = read_csv(smoke_dir / "trials.csv")
    missing = [c for c in TRIAL_COLUMNS if c not in columns]
    assert not missing, missing
    assert len(rows) == len(BUILTINS) * len(SMOKE_LRS) == 21
    assert all(r["status"] == "COMPLETE" for r in rows)
    grid = sorted((r["baseline"], float(r["lr"]), int(r["seed"])) for r in rows)
    assert grid == sorted((b, lr, 0) for b in BUILTINS for lr in SMOKE_LRS), "not one row per grid point"
    assert [r["baseline"] for r in rows][::3] == BUILTINS  # grouped by baseline, layernorm first
    assert len({r["trial"] for r in rows}) == 21
    for r in rows:
        where = f"{r['baseline']} lr={r['lr']}"
        assert r["diverged"] in ("True", "False"), where
        steps = int(r["steps"])
        assert int(r["params"]) > 10_000, where
        assert num(r["tokens_per_s"]) > 0 and num(r["wall_s"]) > 0, where
        assert math.isfinite(num(r["max_train_loss"])), where
        if r["diverged"] == "True":
            assert r["diverged_step"] != "", where
            assert 1 <= int(r["diverged_step"]) <= steps <= 40, where
            assert math.isclose(num(r["value"]), L0, rel_tol=1e-9), where  # objective of a diverged trial = l0
        else:
            assert r["diverged_step"] == "", where
            assert steps == 40, where
            final, best = num(r["final_val_loss"]), num(r["best_val_loss"])
            assert math.isfinite(final) and 0 < final < L0, where
            assert math.isfinite(best) and 0 < best <= final + 1e-9, where
            assert math.isclose(num(r["value"]), final, rel_tol=1e-9), where
    # sanity of the science: at a reasonable LR every baseline learns something
    for b in BUILTINS:
        at_001 = next(r for r in rows if r["baseline"] == b and float(r["lr"]) == 0.01)
        assert at_001["diverged"] == "False" and num(at_001["final_val_loss"]) < L0 - 1.0, b


def test_smoke_curves_csv(smoke_dir: Path) -> None:
    columns, curves = read_csv(smoke_dir / "curves.csv")
    assert columns == CURVE_COLUMNS
    _, trials = read_csv(smoke_dir / "trials.csv")
    by_trial: dict[str, list[dict[str, str]]] = {}
    for point in curves:
        by_trial.setdefault(point["trial"], []).append(point)
    assert set(by_trial) == {t["trial"] for t in trials}
    for t in trials:
        points = by_trial[t["trial"]]
        for p in points:
            assert (p["baseline"], p["lr"], p["seed"]) == (t["baseline"], t["lr"], t["seed"])
        steps = [int(p["step"]) for p in points]
        assert steps == sorted(set(steps)), t["trial"]
        assert steps[-1] == int(t["steps"]), t["trial"]
        if t["diverged"] == "False":
            assert len(points) >= 8, t["trial"]  # log_interval 5 over 40 steps
            assert all(math.isfinite(num(p["train_loss"])) for p in points), t["trial"]
            assert all(num(p["grad_norm"]) >= 0 for p in points), t["trial"]
            vals = {int(p["step"]): num(p["val_loss"]) for p in points if math.isfinite(num(p["val_loss"]))}
            assert {20, 40} <= set(vals), t["trial"]  # eval_interval 20
            assert math.isclose(vals[40], num(t["final_val_loss"]), rel_tol=1e-6), t["trial"]


def test_smoke_leaderboard_tables(smoke_dir: Path) -> None:
    rows = json.loads((smoke_dir / "leaderboard.json").read_text())
    trivial = json.loads((smoke_dir / "provenance.json").read_text())["trivial_loss"]
    assert 3.0 < trivial < 3.5  # the unigram loss of the standard library's bytes
    assert isinstance(rows, list) and [r["baseline"] for r in rows] == BUILTINS
    _, trials = read_csv(smoke_dir / "trials.csv")
    for row in rows:
        b = row["baseline"]
        missing = [k for k in LEADERBOARD_KEYS if k not in row]
        assert not missing, (b, missing)
        mine = [t for t in trials if t["baseline"] == b]
        n_div = sum(t["diverged"] == "True" for t in mine)
        assert re.fullmatch(r"\d+/\d+", row["diverged"]) and row["diverged"] == f"{n_div}/3", b
        # one seed: best_val_loss is the smallest capped loss over the grid, at best_lr
        capped = {float(t["lr"]): (L0 if t["diverged"] == "True" else min(num(t["final_val_loss"]), L0))
                  for t in mine}
        best_lr = min(capped, key=lambda lr: (capped[lr], lr))
        assert row["best_lr"] == pytest.approx(best_lr), b
        assert row["best_val_loss"] == pytest.approx(capped[best_lr], rel=1e-9), b
        assert 0 < row["best_val_loss"] < L0, b
        assert row["best_val_loss_std"] is None  # empty with one seed
        trained = row["best_val_loss"] < trivial * 0.98
        assert row["verdict"] == ("trained" if trained else "failed: no learning"), b
        # the smoke grid (1e-3 .. 1e-1) does not cover the sensitivity window (3e-4 .. 3e-1)
        assert row["lr_sensitivity"] is None and row["note"], b
        if trained:
            assert re.fullmatch(r"\d+/3", row["spiked"]) and row["max_stable_lr"] >= row["best_lr"], b
            assert 0 <= row["lr_basin_decades"] <= 2.0, b
        else:
            assert row["spiked"] is None and row["max_stable_lr"] is None and row["lr_basin_decades"] is None, b
        assert row["steps_to_target"] is None or 0 < row["steps_to_target"] <= 40, b
        assert row["tokens_per_s"] > 0, b
        assert row["params"] == int(mine[0]["params"]), b
    columns, csv_rows = read_csv(smoke_dir / "leaderboard.csv")
    assert not [k for k in LEADERBOARD_KEYS if k not in columns]
    assert [r["baseline"] for r in csv_rows] == BUILTINS
    for json_row, csv_row in zip(rows, csv_rows):
        assert float(csv_row["best_val_loss"]) == pytest.approx(json_row["best_val_loss"])
        assert csv_row["diverged"] == json_row["diverged"]
    md = (smoke_dir / "leaderboard.md").read_text()
    assert md.lstrip().startswith("| baseline")
    for b in BUILTINS:
        assert re.search(rf"^\|\s*{b}\s*\|", md, re.M), b


def test_smoke_plots_and_study(smoke_dir: Path) -> None:
    for name in ("loss_vs_lr.png", "curves_best_lr.png"):
        path = smoke_dir / "plots" / name
        assert path.is_file(), name
        assert path.read_bytes()[:8] == PNG_MAGIC, name
        assert path.stat().st_size > 5_000, name
    record = yaml.safe_load((smoke_dir / "config.yaml").read_text())
    storage = optuna.storages.RDBStorage(resolve_storage(record, smoke_dir))
    summaries = optuna.study.get_all_study_summaries(storage, include_best_trial=False)
    assert sorted(s.study_name for s in summaries) == sorted(f"{record['run_name']}:{b}" for b in BUILTINS)
    for s in summaries:
        study = optuna.load_study(study_name=s.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        assert len(trials) == 3 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        assert sorted(t.params["lr"] for t in trials) == SMOKE_LRS
        assert all(t.user_attrs.get("curve") for t in trials)


# ---- resume ---------------------------------------------------------------------------------------
def _trial_starts(run_dir: Path) -> list[Any]:
    record = yaml.safe_load((run_dir / "config.yaml").read_text())
    storage = optuna.storages.RDBStorage(resolve_storage(record, run_dir))
    return sorted(t.datetime_start for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)
                  for t in optuna.load_study(study_name=s.study_name, storage=storage).get_trials(deepcopy=False))


def test_resume_runs_no_trial(smoke: dict[str, Any], capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-running a finished run trains nothing: no call to train_one, no new trial record, same tables."""
    import normfree_bench.sweep.worker as worker

    run_dir = smoke["dir"]
    before = _trial_starts(run_dir)
    tables = {n: (run_dir / n).read_bytes() for n in ("trials.csv", "curves.csv", "leaderboard.json")}
    trained: list[str] = []
    real_train_one = worker.train_one
    monkeypatch.setattr(worker, "train_one", lambda *a, **k: trained.append("start") or real_train_one(*a, **k))
    rc, out, err = cli(["run", "--suite", "smoke", "--out", str(run_dir), "--no-progress"], capsys)
    assert rc == 0, err
    assert trained == []
    assert _trial_starts(run_dir) == before and len(before) == 21  # no trial was started or re-started
    for name, content in tables.items():
        assert (run_dir / name).read_bytes() == content, f"{name} changed on resume"
    assert "layernorm" in out


# ---- changed config -------------------------------------------------------------------------------
def test_changed_config_refused_unless_force_new(env_root: Path, corpus_file: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    first = write_tiny_config(env_root / "first.yaml", corpus_file, [0.01])
    changed = write_tiny_config(env_root / "changed.yaml", corpus_file, [0.02])
    out = env_root / "changed-run"
    rc, _, err = cli(["run", "--config", str(first), "--out", str(out), "--no-progress"], capsys)
    assert rc == 0, err
    old_hash = yaml.safe_load((out / "config.yaml").read_text())["config_hash"]
    before = snapshot(out)

    rc, _, err = cli(["run", "--config", str(changed), "--out", str(out), "--no-progress"], capsys)
    assert rc == 2
    line = one_error_line(err)
    assert "--force-new" in line and "different config" in line
    assert snapshot(out) == before, "a refused run touched the run directory"

    rc, _, err = cli(["run", "--config", str(changed), "--out", str(out), "--no-progress", "--force-new"], capsys)
    assert rc == 0, err
    record = yaml.safe_load((out / "config.yaml").read_text())
    assert record["config_hash"] != old_hash
    assert record["sweep"]["lrs"] == [0.02]
    _, rows = read_csv(out / "trials.csv")
    assert [(r["baseline"], float(r["lr"]), r["status"]) for r in rows] == [("layernorm", 0.02, "COMPLETE")]


# ---- plugins ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plugin_run(env_root: Path, corpus_file: Path) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A folder of baselines (the built-ins + mynorm.py), plus --plugin othernorm.py from elsewhere."""
    folder = env_root / "baselines-folder"
    folder.mkdir()
    for path in (REPO / "baselines").glob("*.py"):
        shutil.copy(path, folder / path.name)
    template = (REPO / "baselines" / "_template.py").read_text()
    assert 'name = "mynorm"' in template
    (folder / "mynorm.py").write_text(template)  # _template.py (also "mynorm") must stay skipped
    elsewhere = env_root / "elsewhere"
    elsewhere.mkdir()
    other = elsewhere / "othernorm.py"
    other.write_text(template.replace('name = "mynorm"', 'name = "othernorm"').replace("class MyNorm", "class Other"))
    cfg = write_tiny_config(env_root / "plugin.yaml", corpus_file, [0.01])
    out = env_root / "plugin-run"
    env = {**os.environ, "NORMFREE_BENCH_BASELINES": str(folder)}
    proc = subprocess_cli(["run", "--config", str(cfg), "--baselines", "layernorm,mynorm,othernorm",
                           "--plugin", str(other), "--out", str(out), "--no-progress"], env=env)
    return out, proc


def test_plugins_take_part_in_run(plugin_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, proc = plugin_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, rows = read_csv(out / "trials.csv")
    assert sorted(r["baseline"] for r in rows) == ["layernorm", "mynorm", "othernorm"]
    assert all(r["status"] == "COMPLETE" for r in rows)
    board = json.loads((out / "leaderboard.json").read_text())
    assert [r["baseline"] for r in board] == ["layernorm", "mynorm", "othernorm"]
    assert yaml.safe_load((out / "config.yaml").read_text())["baselines"] == ["layernorm", "mynorm", "othernorm"]
    for name in ("mynorm", "othernorm"):
        assert re.search(rf"^\|\s*{name}\s*\|", proc.stdout, re.M), name


def test_leaderboard_of_plugin_run_needs_no_plugin(plugin_run: tuple[Path, subprocess.CompletedProcess[str]],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out, proc = plugin_run
    assert proc.returncode == 0
    rc, stdout, err = cli(["leaderboard", str(out), "--format", "json"], capsys)
    assert rc == 0, err
    assert [r["baseline"] for r in json.loads(stdout)] == ["layernorm", "mynorm", "othernorm"]


# ---- leaderboard ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["github", "psql", "latex", "html", "csv", "json"])
def test_leaderboard_formats(smoke_dir: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = cli(["leaderboard", str(smoke_dir), "--format", fmt], capsys)
    assert rc == 0, err
    assert err == ""
    if fmt == "json":
        rows = json.loads(out)
        assert isinstance(rows, list) and [r["baseline"] for r in rows] == BUILTINS
    elif fmt == "csv":
        lines = out.strip().splitlines()
        header = lines[0].split(",")
        assert header[0] == "baseline" and "best_val_loss" in header and "max_stable_lr" in header
        assert [line.split(",")[0] for line in lines[1:]] == BUILTINS
    else:
        marker = {"latex": r"\begin{tabular}", "html": "<table>", "github": "|---", "psql": "+---"}[fmt]
        assert marker in out
        for b in BUILTINS:
            assert b in out, b
        assert "best_val_loss" in out.replace(r"\_", "_")


def test_leaderboard_sort(smoke_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = cli(["leaderboard", str(smoke_dir), "--format", "json", "--sort", "best_val_loss"], capsys)
    assert rc == 0, err
    losses = [r["best_val_loss"] for r in json.loads(out)]
    assert len(losses) == 7 and losses == sorted(losses)
    rc, out, err = cli(["leaderboard", str(smoke_dir), "--sort", "best_val_loss"], capsys)
    assert rc == 0, err
    header = next(line for line in out.splitlines() if line.startswith("| baseline"))
    column = [c.strip() for c in header.strip("|").split("|")].index("best_val_loss")
    body = [line for line in out.splitlines() if re.match(r"^\|\s*[a-z]", line) and "baseline" not in line]
    shown = [float(line.strip("|").split("|")[column].split()[0]) for line in body]
    assert shown == sorted(shown) and len(shown) == 7


@pytest.mark.parametrize("args, needle", [
    (["--format", "yaml"], "unknown format 'yaml'"),
    (["--sort", "nonsense"], "unknown sort column 'nonsense'"),
])
def test_leaderboard_bad_options(smoke_dir: Path, args: list[str], needle: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = cli(["leaderboard", str(smoke_dir), *args], capsys)
    assert rc == 2
    line = one_error_line(err)
    assert needle in line and "valid:" in line
    assert out == ""


def test_leaderboard_two_runs_adds_run_column(smoke_dir: Path, tiny_run: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = cli(["leaderboard", str(smoke_dir), str(tiny_run), "--format", "json"], capsys)
    assert rc == 0, err
    rows = json.loads(out)
    assert [(r["run"], r["baseline"]) for r in rows] == [(smoke_dir.name, b) for b in BUILTINS] + [
        (tiny_run.name, "layernorm")]
    rc, out, err = cli(["leaderboard", str(smoke_dir), str(tiny_run), "--format", "csv"], capsys)
    assert rc == 0, err
    header, *lines = out.strip().splitlines()
    assert header.split(",")[:2] == ["run", "baseline"] and len(lines) == 8
    rc, out, err = cli(["leaderboard", str(smoke_dir), str(tiny_run)], capsys)
    assert rc == 0, err
    assert re.search(r"^\|\s*run\s*\|\s*baseline\s*\|", out, re.M)
    # one run: no run column
    rc, out, err = cli(["leaderboard", str(tiny_run), "--format", "csv"], capsys)
    assert rc == 0 and out.splitlines()[0].startswith("baseline,")


@pytest.mark.parametrize("kind", ["empty", "files", "train-output"])
def test_leaderboard_on_non_run_dir(env_root: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    target = env_root / f"not-a-run-{kind}"
    target.mkdir()
    if kind == "files":
        (target / "notes.txt").write_text("hello\n")
    elif kind == "train-output":
        (target / "config.yaml").write_text("config_hash: abcdef123456\nbaseline: layernorm\n")
        (target / "metrics.json").write_text("{}\n")
    before = snapshot(target)
    rc, out, err = cli(["leaderboard", str(target)], capsys)
    assert rc == 2
    line = one_error_line(err)
    assert str(target) in line
    assert snapshot(target) == before, "leaderboard created or changed files in a non-run directory"
    rc, _, err = cli(["plot", str(target)], capsys)
    assert rc == 2
    one_error_line(err)
    assert snapshot(target) == before, "plot created or changed files in a non-run directory"


# ---- plot -------------------------------------------------------------------------------------------
def test_plot_redraws(smoke_dir: Path, env_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = env_root / "smoke-copy"
    shutil.copytree(smoke_dir, copy)
    shutil.rmtree(copy / "plots")
    rc, out, err = cli(["plot", str(copy)], capsys)
    assert rc == 0, err
    for name in ("loss_vs_lr.png", "curves_best_lr.png"):
        path = copy / "plots" / name
        assert path.is_file(), name
        assert path.read_bytes()[:8] == PNG_MAGIC
    assert str(copy / "plots") in out


# ---- a run directory can be moved -------------------------------------------------------------
def test_moved_run_dir_still_readable(env_root: Path, corpus_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_tiny_config(env_root / "move.yaml", corpus_file, [0.01])
    src, dst = env_root / "to-move", env_root / "moved"
    rc, _, err = cli(["run", "--config", str(cfg), "--out", str(src), "--no-progress"], capsys)
    assert rc == 0, err
    rc, before, err = cli(["leaderboard", str(src), "--format", "json"], capsys)
    assert rc == 0, err
    src.rename(dst)
    rc, out, err = cli(["leaderboard", str(dst), "--format", "json"], capsys)
    assert rc == 0, err
    assert [r["baseline"] for r in json.loads(out)] == ["layernorm"]
    assert json.loads(out) == json.loads(before)  # every figure, read from the moved study


# ---- overrides compose --------------------------------------------------------------------------
def test_flags_and_set_on_the_same_section_merge(env_root: Path, corpus_file: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """--baselines, --device and --workers beside --set sweep.* / train.*: every override survives in the
    resolved config.yaml (before, --baselines replaced the whole sweep section)."""
    cfg = write_tiny_config(env_root / "compose.yaml", corpus_file, [0.003, 0.03])
    out = env_root / "compose"
    rc, _, err = cli(["run", "--config", str(cfg), "--out", str(out), "--no-progress",
                      "--baselines", "layernorm,rmsnorm", "--device", "cpu", "--workers", "2",
                      "--set", "sweep.seeds=2", "--set", "sweep.lrs=[0.01]",
                      "--set", "train.steps=6", "--set", "train.warmup_steps=1"], capsys)
    assert rc == 0, err
    record = yaml.safe_load((out / "config.yaml").read_text())
    assert record["baselines"] == ["layernorm", "rmsnorm"] and record["sweep"]["baselines"] == ["layernorm", "rmsnorm"]
    assert record["sweep"]["seeds"] == 2 and record["sweep"]["lrs"] == [0.01]
    assert record["train"]["device"] == "cpu" and record["train"]["steps"] == 6
    assert record["storage"] == "journal"  # --workers 2 took effect too
    _, rows = read_csv(out / "trials.csv")
    # two workers may both draw a point; the later one ends PRUNED as a duplicate and stays in trials.csv
    done = [r for r in rows if r["status"] == "COMPLETE"]
    assert all(r["status"] == "PRUNED" for r in rows if r not in done)
    assert sorted((r["baseline"], float(r["lr"]), int(r["seed"])) for r in done) == [
        ("layernorm", 0.01, 0), ("layernorm", 0.01, 1), ("rmsnorm", 0.01, 0), ("rmsnorm", 0.01, 1)]


def test_the_gpu_suite_with_baselines_keeps_its_set_overrides() -> None:
    """The case from the tracker: run --suite gpu --baselines layernorm,dyt --set sweep.seeds=1
    --set 'sweep.lrs=[0.001]' once silently ran seeds 0-2 over 9 LRs."""
    args = build_parser().parse_args(["run", "--suite", "gpu", "--baselines", "layernorm,dyt", "--device", "cpu",
                                      "--set", "sweep.seeds=1", "--set", "sweep.lrs=[0.001]"])
    cfg = load_run_config(suite_path("gpu"), overrides_of(args))
    assert cfg.sweep.seeds == 1 and cfg.sweep.lr_grid() == [0.001]
    assert cfg.sweep.baselines == ["layernorm", "dyt"] and cfg.train.device == "cpu"
    assert cfg.model.d_model == 384  # the suite itself still applies


def test_the_study_names_its_objective_and_carries_the_leaderboards_choice(tiny_run: Path) -> None:
    """optuna-dashboard shows the objective's name and, per cell, the LR the leaderboard chose (by the mean
    over seeds), not Optuna's single best trial."""
    record = yaml.safe_load((tiny_run / "config.yaml").read_text())
    storage = optuna.storages.RDBStorage(resolve_storage(record, tiny_run))
    study = optuna.load_study(study_name=f"{record['run_name']}:layernorm", storage=storage)
    assert study.metric_names == ["final_val_loss"]
    rows = json.loads((tiny_run / "leaderboard.json").read_text())
    assert study.user_attrs["leaderboard"]["all"]["chosen_lr"] == rows[0]["best_lr"]
    assert study.user_attrs["leaderboard"]["all"]["verdict"] == rows[0]["verdict"]
    assert study.user_attrs["trivial_loss"] == json.loads((tiny_run / "provenance.json").read_text())["trivial_loss"]
