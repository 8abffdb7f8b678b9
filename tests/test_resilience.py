"""Sweeps that survive: kill -9 and resume, Ctrl-C, injected numeric faults, parallel workers,
bitwise determinism, and a real PostgreSQL server shared by several workers."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from normfree_bench.config import load_run_config
from normfree_bench.store.storage import open_storage, resolve_storage
from normfree_bench.sweep.driver import run_sweep
from normfree_bench.tables.export import write_results
from normfree_bench.training.faults import FaultInjector
from tests.conftest import private_cache, write_word_corpus

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with private_cache(tmp_path_factory.mktemp("resilience")) as base:
        write_word_corpus(base / "corpus.txt", n_words=20000)
        yield base


def config(root: Path, name: str, *, steps: int = 40, lrs: list[float] | None = None,
           baselines: list[str] | None = None, **sections: Any) -> Path:
    cfg = {
        "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "context_length": 16},
        "data": {"corpus": str(root / "corpus.txt"), "batch_size": 4, "val_windows": 8},
        "train": {"steps": steps, "warmup_steps": 2, "eval_interval": 10, "log_interval": 1, "threads": 1},
        "guard": {"margin": 1.0, "patience": 3},
        "sweep": {"lrs": lrs or [0.003, 0.01, 0.03], "seeds": 1, "eval_seeds": 0,
                  "baselines": baselines or ["layernorm"]},
        **sections,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "normfree_bench", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def study_trials(run_dir: Path, storage_url: str | None = None) -> list[optuna.trial.FrozenTrial]:
    record = yaml.safe_load((run_dir / "config.yaml").read_text())
    storage = open_storage(resolve_storage(record, run_dir, storage_url), heartbeat=False)
    out = []
    for summary in optuna.study.get_all_study_summaries(storage, include_best_trial=False):
        if summary.study_name.startswith(record["run_name"] + ":"):
            out += optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)
    return out


def complete_counts(trials: list[optuna.trial.FrozenTrial]) -> collections.Counter:
    return collections.Counter((t.user_attrs["baseline"], *sorted(t.params.items()))
                               for t in trials if t.state.name == "COMPLETE")


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def losses(run_dir: Path) -> list[tuple]:
    rows = json.loads((run_dir / "leaderboard.json").read_text())
    return [(r["baseline"], r["best_val_loss"], r["best_lr"], r["lr_sensitivity"], r["diverged"]) for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(root: Path) -> Path:
    out = root / "uninterrupted"
    proc = cli("run", "--config", str(config(root, "kill", steps=300)), "--out", str(out), "--no-progress")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    return out


def _running_after_one_complete(run_dir: Path) -> bool:
    if not (run_dir / "study.db").exists():
        return False
    try:
        trials = study_trials(run_dir)
    except Exception:
        return False
    done = [t for t in trials if t.state.name == "COMPLETE"]
    # training has started: the running trial holds its whole grid point (every parameter a finished one has)
    return bool(done) and any(t.state.name == "RUNNING" and "worker" in t.user_attrs
                              and t.params.keys() == done[0].params.keys() for t in trials)


def interrupt_mid_trial(root: Path, name: str, sig: int) -> tuple[Path, str, subprocess.Popen[str]]:
    """Start the `kill` sweep, send ``sig`` while a trial runs (one already finished); return
    (run dir, config path, the ended process)."""
    out = root / name
    cfg = str(config(root, "kill", steps=300))
    proc = cli("run", "--config", cfg, "--out", str(out), "--no-progress")
    wait_for(lambda: _running_after_one_complete(out))
    proc.send_signal(sig)
    proc.wait(timeout=120)
    return out, cfg, proc


def test_kill_9_then_resume_finishes_each_point_exactly_once(root, uninterrupted):
    out, cfg, _ = interrupt_mid_trial(root, "killed", signal.SIGKILL)
    before = study_trials(out)
    killed = [t for t in before if t.state.name == "RUNNING"]
    assert len(killed) == 1
    resumed = cli("run", "--config", cfg, "--out", str(out), "--no-progress")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    after = study_trials(out)
    counts = complete_counts(after)
    assert len(counts) == 3 and set(counts.values()) == {1}  # every grid point done exactly once
    old = next(t for t in after if t.number == killed[0].number)
    assert old.state.name == "FAIL" and old.user_attrs["interrupted"] is True
    rerun = [t for t in after if t.user_attrs.get("retry_of") == killed[0].number]
    assert len(rerun) == 1 and rerun[0].state.name == "COMPLETE" and rerun[0].params == killed[0].params
    assert losses(out) == losses(uninterrupted)  # identical leaderboard, given CPU determinism


def test_ctrl_c_marks_the_trial_interrupted_writes_tables_and_resumes(root, uninterrupted):
    out, cfg, proc = interrupt_mid_trial(root, "sigint", signal.SIGINT)
    assert proc.returncode == 130
    assert "run the same command to resume" in proc.stderr.read()
    trials = study_trials(out)
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    assert len(interrupted) == 1 and interrupted[0].state.name == "FAIL"
    assert (out / "trials.csv").is_file() and (out / "leaderboard.json").is_file()
    resumed = cli("run", "--config", cfg, "--out", str(out), "--no-progress")
    assert resumed.wait(timeout=600) == 0
    counts = complete_counts(study_trials(out))
    assert len(counts) == 3 and set(counts.values()) == {1}
    assert losses(out) == losses(uninterrupted)


@pytest.mark.parametrize("kind, step, size, expect", [
    ("nan_loss", 7, 0.0, {"diverged": True, "diverged_step": 7, "steps": 7, "reason": "non-finite loss"}),
    ("inf_grad", 9, 0.0, {"diverged": True, "diverged_step": 9, "steps": 9, "reason": "non-finite gradient"}),
    # Creep: the recorded loss exceeds l0 + 1 from step 5 on (>= 2.0 added to a loss above 4.5), so the
    # guard stops after exactly its patience window of 3 steps: step 7.
    ("creep", 5, 2.0, {"diverged": True, "diverged_step": 7, "steps": 7, "reason": "loss above l0+1 for 3 steps"}),
    ("spike", 6, 500.0, {"diverged": False, "spiked": True}),
])
def test_injected_faults_are_recorded_at_the_right_step_and_the_sweep_goes_on(root, kind, step, size, expect):
    out = root / f"fault-{kind}"
    cfg = load_run_config(config(root, f"fault-{kind}", steps=30, lrs=[0.003, 0.01]))
    run_sweep(cfg, out, progress=False, callbacks=[FaultInjector(kind, step, size)])
    write_results(out, plots=False)
    trials = [t for t in study_trials(out) if t.state.name == "COMPLETE"]
    assert len(trials) == 2  # the sweep went on past the fault
    for t in trials:
        attrs = t.user_attrs
        assert attrs["diverged"] is expect["diverged"]
        if expect["diverged"]:
            assert attrs["diverged_step"] == expect["diverged_step"]
            assert attrs["steps"] == expect["steps"]  # a non-finite fault costs no extra step on CPU
            assert attrs["diverged_reason"] == expect["reason"]
            assert t.value == pytest.approx(attrs["l0"])  # diverged trials are COMPLETE with value l0
        else:
            assert attrs["spiked"] and attrs["spikes"][0]["start"] == step and attrs["spikes"][0]["end"] == step + 1
            assert attrs["spikes"][0]["peak"] > 500 and attrs["final_val_loss"] < attrs["l0"]
    compute = json.loads((out / "provenance.json").read_text())["compute"]
    assert compute["diverged_trials"] == (2 if expect["diverged"] else 0)
    if expect["diverged"]:
        assert compute["diverged_steps"] == 2 * expect["steps"]


def test_exploding_lr_diverges_and_a_raising_trial_fails_alone(root):
    out = root / "explode"
    cfg = load_run_config(config(root, "explode", steps=30, lrs=[0.01, 10.0]))
    run_sweep(cfg, out, progress=False)
    by_lr = {t.params["lr"]: t for t in study_trials(out)}
    assert by_lr[10.0].user_attrs["diverged"] is True and by_lr[10.0].state.name == "COMPLETE"
    assert by_lr[0.01].user_attrs["diverged"] is False

    out = root / "raising"
    cfg = load_run_config(config(root, "raising", steps=20, lrs=[0.003, 0.01]))
    run_sweep(cfg, out, progress=False, callbacks=[FaultInjector("raise", 5)])
    trials = study_trials(out)
    assert [t.state.name for t in trials] == ["FAIL", "FAIL"]  # each trial failed alone; the sweep went on
    assert all(t.user_attrs["error"] == "RuntimeError: injected fault at step 5" for t in trials)
    write_results(out, plots=False)
    assert "injected fault at step 5" in (out / "trials.csv").read_text()


def test_same_config_and_seed_give_bitwise_identical_curves(root):
    cfg = str(config(root, "determinism", steps=25, lrs=[0.01], baselines=["layernorm", "dyt"]))
    for name in ("det-a", "det-b"):
        proc = cli("run", "--config", cfg, "--out", str(root / name), "--no-progress")
        assert proc.wait(timeout=300) == 0
    a, b = (root / "det-a" / "curves.csv").read_bytes(), (root / "det-b" / "curves.csv").read_bytes()
    assert a == b and len(a.splitlines()) > 20


def test_two_workers_do_every_point_exactly_once(root):
    out = root / "workers"
    cfg = config(root, "workers", steps=30, lrs=[0.001, 0.003, 0.01, 0.03], baselines=["layernorm", "rezero"])
    proc = cli("run", "--config", str(cfg), "--out", str(out), "--workers", "2", "--no-progress")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    assert yaml.safe_load((out / "config.yaml").read_text())["storage"] == "journal"
    trials = study_trials(out)
    counts = complete_counts(trials)
    assert len(counts) == 8 and set(counts.values()) == {1}  # 2 baselines x 4 LRs, each exactly once
    assert len({t.user_attrs["worker"] for t in trials if t.state.name == "COMPLETE"}) == 2
    assert len(json.loads((out / "leaderboard.json").read_text())) == 2


# ---- a real PostgreSQL server on loopback ---------------------------------------------------------
def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed; .ci/run installs them")
    pytest.importorskip("psycopg", reason="the psycopg driver is not installed (pip install '.[postgres]')")
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="nfb-pg-"))  # outside pytest's 0700 folder: postgres must reach it
    data = base / "data"
    data.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(data, "postgres")
        os.chmod(base, 0o755)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-w", "-l", str(data / "log"), "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE nfb")
        # trust auth ignores the password: it is here to check that it never reaches a file.
        yield f"postgresql+psycopg://postgres:sekret-pw@127.0.0.1:{port}/nfb"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_postgres_study_shared_by_run_and_a_separate_worker(root, postgres):
    out = root / "pg"
    cfg = config(root, "pg", steps=60, lrs=[0.001, 0.003, 0.01, 0.03], baselines=["layernorm", "skipinit"])
    # The separate worker imports while the run starts, then waits for its command line on stdin, so
    # that the run cannot finish the grid alone while the worker is still importing torch.
    worker = subprocess.Popen([sys.executable, "-c", "import sys\nfrom normfree_bench.cli import main\n"
                               "sys.exit(main(sys.stdin.readline().split()))"], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    run = cli("run", "--config", str(cfg), "--out", str(out), "--storage", postgres, "--no-progress")
    wait_for(lambda: (out / "config.yaml").is_file())
    run_name = yaml.safe_load((out / "config.yaml").read_text())["run_name"]
    storage = optuna.storages.RDBStorage(postgres)
    wait_for(lambda: len(optuna.study.get_all_study_summaries(storage, include_best_trial=False)) == 2)
    assert worker.stdin is not None
    worker.stdin.write(f"worker --storage {postgres} --study {run_name} --threads 1 --no-progress\n")
    worker.stdin.close()
    assert worker.wait(timeout=600) == 0, worker.stderr.read()
    assert run.wait(timeout=600) == 0, run.stderr.read()
    trials = study_trials(out, postgres)
    counts = complete_counts(trials)
    assert len(counts) == 8 and set(counts.values()) == {1}
    done_by = {t.user_attrs["worker"] for t in trials if t.state.name == "COMPLETE"}
    assert f"{socket.gethostname()}:{worker.pid}" in done_by and len(done_by) == 2  # both did work
    # The password is never written: not in config.yaml, provenance.json or any table.
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".json", ".csv", ".md"):
            assert "sekret-pw" not in path.read_text(), path
    assert yaml.safe_load((out / "config.yaml").read_text())["storage"].endswith(":***@127.0.0.1:" +
                                                                                postgres.rsplit(":", 1)[1])
    # Without the password the run directory says how to pass it; with it, the leaderboard reads the study.
    lb = subprocess.run([sys.executable, "-m", "normfree_bench", "leaderboard", str(out)], capture_output=True,
                        text=True, cwd=REPO)
    assert lb.returncode == 2 and "--storage" in lb.stderr and "sekret-pw" not in lb.stderr
    lb = subprocess.run([sys.executable, "-m", "normfree_bench", "leaderboard", str(out), "--storage", postgres],
                        capture_output=True, text=True, cwd=REPO)
    assert lb.returncode == 0 and "skipinit" in lb.stdout


def test_worker_with_an_unknown_run_name_is_bad_input(root):
    optuna.storages.RDBStorage(f"sqlite:///{root / 'empty.db'}")  # a database that exists, without the run
    proc = cli("worker", "--storage", f"sqlite:///{root / 'empty.db'}", "--study", "nfb-000000000000")
    assert proc.wait(timeout=120) == 2
    err = proc.stderr.read().strip().splitlines()
    assert len(err) == 1 and "no study named 'nfb-000000000000:<baseline>'" in err[0]


def test_a_trial_interrupted_while_suggesting_is_retried_once_at_its_whole_point():
    """Ctrl-C can land between two ``suggest`` calls: the FAIL trial then holds only ``lr``. Its retry
    must be the whole grid point (from ``grid_id``), enqueued once, or resume loops on duplicates."""
    from normfree_bench.sweep.grid import ResumableGridSampler, params_of
    from normfree_bench.sweep.worker import mark_interrupted, open_points, recover

    space = {"lr": [0.01, 0.03, 0.1], "seed": [0, 1]}
    study = optuna.create_study(sampler=ResumableGridSampler(space))
    for _ in range(3):  # whole trials: params_of names exactly the point GridSampler gave them
        done = study.ask()
        for name in ("lr", "seed"):
            done.suggest_categorical(name, space[name])
        study.tell(done, 1.0)
        assert params_of(study._storage.get_trial(done._trial_id)) == done.params
    trial = study.ask()
    lr = trial.suggest_categorical("lr", space["lr"])  # interrupted before the seed was suggested
    frozen = study._storage.get_trial(trial._trial_id)
    assert set(frozen.params) == {"lr"}
    mark_interrupted(study, frozen, "interrupted: Ctrl-C")
    recover(study)
    recover(study)  # a second pass must not enqueue it again
    waiting = [t for t in study.get_trials(deepcopy=False) if t.state.name == "WAITING"]
    assert len(waiting) == 1
    retry = waiting[0].system_attrs["fixed_params"]
    assert set(retry) == {"lr", "seed"} and retry["lr"] == lr  # the point it was interrupted at
    assert open_points(study, space) == 3  # three done; the retry is queued, not done


def test_start_gate_holds_a_worker_until_all_are_ready(tmp_path, monkeypatch):
    import threading

    from normfree_bench.sweep.worker import wait_at_start_gate

    monkeypatch.setenv("NORMFREE_BENCH_START_GATE", str(tmp_path))
    monkeypatch.setenv("NORMFREE_BENCH_START_COUNT", "2")
    waiter = threading.Thread(target=wait_at_start_gate, kwargs={"timeout": 120.0})
    waiter.start()
    wait_for(lambda: len(list(tmp_path.iterdir())) == 1)  # this worker is at the gate ...
    waiter.join(timeout=0.5)
    assert waiter.is_alive()  # ... and held there while the other is not ready
    (tmp_path / "other-worker").touch()
    waiter.join(timeout=60)
    assert not waiter.is_alive()  # the other is ready: both go
    assert "NORMFREE_BENCH_START_GATE" not in os.environ  # once per process: a later study does not wait
