"""Experiment tracking: a real sweep logs to CSV, TensorBoard and MLflow, and each store is read back with its
own library (TensorBoard's EventAccumulator, MLflow's MlflowClient) and checked against curves.csv,
diagnostics.csv and trials.csv; the run's Optuna study is read by optuna-dashboard's own storage loader.

Usage: ``pytest tests/test_tracking.py -q``
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

from normfree_bench.errors import UserError
from normfree_bench.training.tracking import check_loggers, trial_name, trial_verdict
from tests.conftest import cli, private_cache, snapshot, write_word_corpus

LRS = [0.003, 30.0]  # a learning LR and one that diverges at once


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def num(text: str) -> float:
    return float(text) if text not in ("", "nan") else math.nan


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch) -> dict[str, Any]:
    """One sweep (layernorm and dyt, two LRs) with all three loggers, and one `train` with TensorBoard."""
    from normfree_bench.cli import main

    root = tmp_path_factory.mktemp("tracking")
    monkeypatch_module.delenv("MLFLOW_TRACKING_URI", raising=False)
    with private_cache(root):
        corpus = write_word_corpus(root / "corpus.txt")
        cfg = {"model": {"d_model": 16, "n_layers": 2, "n_heads": 2, "context_length": 16},
               "data": {"corpus": str(corpus), "batch_size": 4, "val_windows": 4},
               "train": {"steps": 12, "warmup_steps": 2, "eval_interval": 6, "log_interval": 3, "threads": 1},
               "guard": {"patience": 2, "margin": 0.5},
               "sweep": {"lrs": LRS, "seeds": 1, "eval_seeds": 0, "baselines": ["layernorm", "dyt"]}}
        path = root / "cfg.yaml"
        path.write_text(yaml.safe_dump(cfg))
        run = root / "run"
        assert main(["run", "--config", str(path), "--out", str(run), "--no-progress",
                     "--logger", "csv", "--logger", "tensorboard", "--logger", "mlflow"]) == 0
        train = root / "train"
        assert main(["train", "--config", str(path), "--baseline", "dyt", "--lr", "0.003", "--out", str(train),
                     "--no-progress", "--logger", "tensorboard"]) == 0
        yield {"root": root, "run": run, "train": train, "config": path}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def trials_by_name(run: Path) -> dict[str, dict[str, str]]:
    return {trial_name(t["baseline"], {"lr": float(t["lr"]), "seed": int(t["seed"])}): t
            for t in rows(run / "trials.csv")}


def expected_series(run: Path, trial: str) -> dict[str, dict[int, float]]:
    """curves.csv and diagnostics.csv of one trial as {tag: {step: value}}, finite values only."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for r in rows(run / "curves.csv"):
        if r["trial"] == trial:
            for tag in ("train_loss", "grad_norm", "val_loss", "val_perplexity"):
                if math.isfinite(num(r[tag])):
                    series[tag][int(r["step"])] = num(r[tag])
    for r in rows(run / "diagnostics.csv"):
        if r["trial"] == trial and math.isfinite(num(r["value"])):
            layer = "" if r["layer"] in ("", "None") else f"{r['layer']}/"
            series[f"diagnostics/{r['site']}/{layer}{r['metric']}"][int(r["step"])] = num(r["value"])
    return series


def assert_same(logged: dict[int, float], expected: dict[int, float], tag: str) -> None:
    finite = {s: v for s, v in logged.items() if math.isfinite(v)}
    assert finite.keys() == expected.keys(), (tag, sorted(finite), sorted(expected))
    for step, value in expected.items():
        assert finite[step] == pytest.approx(value, rel=1e-6, abs=1e-9), (tag, step)


def test_the_grid_has_a_trained_and_a_diverged_trial(tracked: dict[str, Any]) -> None:
    diverged = {t["lr"]: t["diverged"] for t in rows(tracked["run"] / "trials.csv")}
    assert diverged == {"0.003": "False", "30.0": "True"}, diverged


def test_tensorboard_events_equal_the_run_tables(tracked: dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tracked["run"]
    for name, trial in trials_by_name(run).items():
        events = EventAccumulator(str(run / "logs" / "tensorboard" / name), size_guidance={"scalars": 0})
        events.Reload()
        tags = set(events.Tags()["scalars"])
        expected = expected_series(run, trial["trial"])
        assert {"train_loss", "grad_norm", "lr", "final/diverged", "final/stalled"} <= tags
        assert any(t.startswith("diagnostics/") for t in tags)
        for tag, values in expected.items():
            assert_same({e.step: e.value for e in events.Scalars(tag)}, values, f"{name} {tag}")
        (final,) = events.Scalars("final/diverged")
        assert final.value == float(trial["diverged"] == "True") and final.step == int(trial["steps"])
        lrs = {e.step: e.value for e in events.Scalars("lr")}
        # the LR each kept step's update used: 0 at step 1 (warmup from 0), the peak after the 2 warmup steps,
        # then decaying (cosine)
        assert lrs[1] == 0.0 and lrs[3] == pytest.approx(float(trial["lr"]), rel=1e-6)
        if trial["diverged"] == "False":
            assert lrs[6] > lrs[9] > lrs[12] > 0


def test_mlflow_runs_hold_each_trials_metrics_params_and_verdict(tracked: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    run = tracked["run"]
    client = MlflowClient(f"sqlite:///{run / 'logs' / 'mlflow.db'}")
    group = yaml.safe_load((run / "config.yaml").read_text())["run_name"]
    experiment = client.get_experiment_by_name(group)
    assert experiment is not None, f"no MLflow experiment named after the run ({group})"
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    trials = trials_by_name(run)
    assert runs.keys() == trials.keys()
    leaderboard = {r["baseline"]: r for r in rows(run / "leaderboard.csv")}
    for name, trial in trials.items():
        mlrun = runs[name]
        assert mlrun.info.status == "FINISHED"
        assert mlrun.data.params["baseline"] == trial["baseline"]
        assert float(mlrun.data.params["lr"]) == float(trial["lr"])
        assert mlrun.data.params["config/train/steps"] == "12"
        verdict = mlrun.data.params["verdict"]
        assert (verdict == "diverged") == (trial["diverged"] == "True"), (name, verdict)
        stalled_in_table = int(leaderboard[trial["baseline"]]["stalled_count"])
        if verdict != "diverged":
            assert (verdict == "stalled") == (stalled_in_table == 1), (name, verdict, stalled_in_table)
        for tag, values in expected_series(run, trial["trial"]).items():
            history = {m.step: m.value for m in client.get_metric_history(mlrun.info.run_id, tag)}
            assert_same(history, values, f"{name} {tag}")


def test_csv_logger_metrics_and_hparams_equal_the_run_tables(tracked: dict[str, Any]) -> None:
    run = tracked["run"]
    for name, trial in trials_by_name(run).items():
        folder = run / "logs" / "csv" / name
        logged: dict[str, dict[int, float]] = defaultdict(dict)
        for r in rows(folder / "metrics.csv"):
            for tag, value in r.items():
                if tag != "step" and value != "":
                    logged[tag][int(r["step"])] = float(value)
        for tag, values in expected_series(run, trial["trial"]).items():
            assert_same(logged[tag], values, f"{name} {tag}")
        hparams = yaml.safe_load((folder / "hparams.yaml").read_text())
        assert hparams["trial"] == name and hparams["config"]["train"]["lr"] == float(trial["lr"])
        assert hparams["verdict"] in ("trained", "stalled", "diverged")


def test_train_logs_its_one_run_under_its_output(tracked: dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train = tracked["train"]
    events = EventAccumulator(str(train / "logs" / "tensorboard" / "dyt" / "lr=0.003" / "seed=0"),
                              size_guidance={"scalars": 0})
    events.Reload()
    curve = {int(r["step"]): float(r["train_loss"]) for r in rows(train / "curve.csv") if r["train_loss"] != "nan"}
    assert_same({e.step: e.value for e in events.Scalars("train_loss")}, curve, "train_loss")


def dashboard_get(app: Any, path: str) -> Any:
    """One GET request to a WSGI app, as a server would make it; the JSON body."""
    from wsgiref.util import setup_testing_defaults

    environ: dict[str, Any] = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status and status[0].startswith("200"), (path, status, body[:300])
    return json.loads(body)


def test_optuna_dashboard_serves_the_runs_study(tracked: dict[str, Any]) -> None:
    """The README's ``optuna-dashboard sqlite:///RUN_DIR/study.db``: the dashboard's own WSGI app, asked
    through its JSON API, lists each baseline's study and every trial of trials.csv with its value."""
    from optuna_dashboard import wsgi

    run = tracked["run"]
    app = wsgi(f"sqlite:///{run / 'study.db'}")
    studies = dashboard_get(app, "/api/studies")["study_summaries"]
    group = yaml.safe_load((run / "config.yaml").read_text())["run_name"]
    assert sorted(s["study_name"] for s in studies) == sorted(f"{group}:{b}" for b in ("layernorm", "dyt")), studies
    values = {}
    for study in studies:
        baseline = study["study_name"].split(":", 1)[1]
        for t in dashboard_get(app, f"/api/studies/{study['study_id']}")["trials"]:
            lr = next(float(p["param_external_value"]) for p in t["params"] if p["name"] == "lr")
            values[(baseline, lr)] = float(t["values"][0])
    expected = {(t["baseline"], float(t["lr"])): float(t["value"]) for t in rows(run / "trials.csv")}
    assert values.keys() == expected.keys()
    for key, value in expected.items():
        assert values[key] == pytest.approx(value, rel=1e-9)


def test_workers_share_the_runs_mlflow_store(tracked: dict[str, Any]) -> None:
    """``run --workers 2``: two worker processes log into one SQLite store (created once, before they start)."""
    from mlflow.tracking import MlflowClient

    from normfree_bench.cli import main

    run = tracked["root"] / "workers"
    assert main(["run", "--config", str(tracked["config"]), "--out", str(run), "--workers", "2", "--no-progress",
                 "--logger", "mlflow"]) == 0
    client = MlflowClient(f"sqlite:///{run / 'logs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(yaml.safe_load((run / "config.yaml").read_text())["run_name"])
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(trials_by_name(run))
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_a_trial_that_crashes_ends_its_mlflow_run_failed_and_a_nan_loss_is_diverged(tracked: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    from normfree_bench.config import load_run_config
    from normfree_bench.training.faults import FaultInjector
    from normfree_bench.training.tracking import Tracking
    from normfree_bench.training.train import train_one

    cfg = load_run_config(tracked["config"], {"baseline": "dyt", "train": {"lr": 0.003}})
    tracking = Tracking(("mlflow", "csv"), tracked["root"] / "faults", "faults")
    tracking.prepare()
    crashed = tracking.tracker(cfg, trivial=10.0, params={"lr": 0.003, "seed": 0})
    with pytest.raises(RuntimeError, match="injected fault at step 5"):
        train_one(cfg, callbacks=[FaultInjector("raise", step=5)], tracker=crashed)
    nan = tracking.tracker(cfg, trivial=10.0, params={"lr": 0.003, "seed": 1})
    result = train_one(cfg, callbacks=[FaultInjector("nan_loss", step=4)], tracker=nan)
    assert result.diverged
    client = MlflowClient(tracking.mlflow_uri())
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("faults").experiment_id])}
    assert runs["dyt/lr=0.003/seed=0"].info.status == "FAILED"
    assert "verdict" not in runs["dyt/lr=0.003/seed=0"].data.params
    finished = runs["dyt/lr=0.003/seed=1"]
    assert finished.info.status == "FINISHED" and finished.data.params["verdict"] == "diverged"
    assert [m.value for m in client.get_metric_history(finished.info.run_id, "final/diverged")] == [1.0]


def test_a_ladder_logs_each_rungs_trials_under_its_run_directory(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ladder"
    with private_cache(tmp_path):
        write_word_corpus(tmp_path / "corpus.txt")
        rc, _, err = cli(["ladder", "--suite", "ladder-smoke", "--out", str(out), "--no-progress", "--logger", "csv",
                          "--baselines", "layernorm", "--set", f"data.corpus={tmp_path / 'corpus.txt'}",
                          "--set", "ladder.widths=[8,16]", "--set", "ladder.head_dim=4",
                          "--set", "ladder.tokens_per_param=0.5"], capsys)
    assert rc == 0, err
    rungs = sorted(p.name for p in out.iterdir() if (p / "trials.csv").is_file())
    assert {"d8", "d16"} <= set(rungs)
    for rung in ("d8", "d16"):
        logged = sorted(p.relative_to(out / rung / "logs" / "csv").as_posix()
                        for p in (out / rung / "logs" / "csv").glob("*/*/*/metrics.csv"))
        expected = sorted(f"{name}/metrics.csv" for name in trials_by_name(out / rung))
        assert logged == expected, (rung, logged, expected)


def test_mlflow_tracking_uri_names_the_store(tracked: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from normfree_bench.cli import main

    store = f"sqlite:///{tracked['root'] / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    out = tracked["root"] / "train-uri"
    assert main(["train", "--config", str(tracked["config"]), "--baseline", "dyt", "--lr", "0.003", "--out", str(out),
                 "--no-progress", "--logger", "mlflow"]) == 0
    assert not (out / "logs" / "mlflow.db").exists()
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("train-uri").experiment_id])
    assert run.info.run_name == "dyt/lr=0.003/seed=0" and run.data.params["verdict"] in ("trained", "stalled")
    assert os.environ["MLFLOW_TRACKING_URI"] == store  # left as the user set it


# ---- the pieces ------------------------------------------------------------------------------------------
def test_trial_names_carry_the_grid_point() -> None:
    assert trial_name("dyt", {"lr": 0.001, "seed": 2}) == "dyt/lr=0.001/seed=2"
    assert trial_name("dyt", {"seed": 0, "lr": 3e-4, "dyt.alpha_init": 0.5, "model.mlp": "gelu"}) == \
        "dyt/lr=0.0003/seed=0/dyt.alpha_init=0.5/model.mlp=gelu"


@pytest.mark.parametrize("diverged, loss, expected", [
    (True, 1.0, "diverged"), (False, 2.0, "trained"), (False, 3.0, "stalled"), (False, math.nan, "stalled"),
    (False, 2.94, "stalled"), (False, 2.939, "trained")])
def test_a_trials_verdict_follows_the_leaderboards_stall_threshold(diverged: bool, loss: float,
                                                                   expected: str) -> None:
    assert trial_verdict(diverged, loss, l0=5.5, stall_at=3.0 * (1 - 0.02)) == expected


@pytest.mark.parametrize("names, needles", [
    (["wandb"], ["unknown --logger 'wandb'", "none, csv, tensorboard, mlflow"]),
    (["none", "csv"], ["--logger none cannot be combined", "csv"]),
])
def test_bad_logger_names_are_refused(names: list[str], needles: list[str]) -> None:
    with pytest.raises(UserError) as err:
        check_loggers(names)
    for needle in needles:
        assert needle in str(err.value)


def test_loggers_are_deduplicated_and_none_means_none() -> None:
    assert check_loggers(["csv", "csv"]) == ("csv",)
    assert check_loggers(["none"]) == () and check_loggers([]) == ()


@pytest.mark.parametrize("logger, module", [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
@pytest.mark.parametrize("command", ["run", "train"])
def test_a_logger_without_its_extra_is_one_line_naming_the_extra(logger: str, module: str, command: str,
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "existing"
    run.mkdir()
    (run / "keep.txt").write_text("a result\n")
    before = snapshot(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # how Python marks a module as not importable
    rc, out, err = cli([command, "--out", str(run), "--logger", logger, "--no-progress"], capsys)
    assert rc == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"--logger {logger} needs the tracking extra" in lines[0], err
    assert "pip install -e '.[tracking]'" in lines[0]
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("argv, needle", [
    (["run", "--logger", "wandb"], "unknown --logger 'wandb'"),
    (["train", "--logger", "none", "--logger", "mlflow"], "--logger none cannot be combined"),
    (["worker", "--storage", "sqlite:///{R}/nowhere.db", "--study", "nfb-x", "--log-dir", "{R}"],
     "--log-dir applies only with --logger"),
])
def test_bad_logger_input_changes_nothing(argv: list[str], needle: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "existing"
    run.mkdir()
    (run / "keep.txt").write_text("a result\n")
    before = snapshot(tmp_path)
    argv = [a.replace("{R}", str(tmp_path)) for a in argv]
    rc, _, err = cli([*argv, *(["--out", str(run)] if argv[0] != "worker" else []), "--no-progress"], capsys)
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(tmp_path) == before
