"""No command loses a result: every bad or unusual input across the subcommands is refused with exit code 2
and one line on stderr before any work, and no run directory involved changes by a byte.

Usage: ``pytest tests/test_bad_input.py -q``; the cases under test: ``pytest --collect-only -q tests/test_bad_input.py``

The accepted-with-documented-behaviour cases (``--force-new`` keeps the old run, ``--workers`` is capped,
the leaderboard across runs) are at the end.
"""

from __future__ import annotations

import shutil
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from normfree_bench.cli import main
from normfree_bench.tables.render import sort_rows
from tests.conftest import BOOM_PLUGIN, cli, private_cache, snapshot, write_word_corpus

BASE = {
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "context_length": 16},
    "train": {"steps": 6, "warmup_steps": 1, "eval_interval": 3, "log_interval": 1, "threads": 1},
    "guard": {"patience": 3},
    "sweep": {"lrs": [0.01], "seeds": 1, "eval_seeds": 0, "baselines": ["layernorm"]},
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with private_cache(tmp_path_factory.mktemp("bad-input")) as base:
        yield base


@pytest.fixture(scope="module")
def world(root: Path) -> dict[str, Path]:
    """Two finished runs (P and Q, other configs), a run whose config.yaml is Q's, a copy of P without its
    study database, config files for every case, and a folder that is not a run."""
    corpus = write_word_corpus(root / "corpus.txt")
    configs = root / "configs"
    configs.mkdir()

    def config(name: str, **sections: dict) -> Path:
        cfg = {k: dict(v) for k, v in BASE.items()}
        cfg["data"] = {"corpus": str(corpus), "batch_size": 4, "val_windows": 4}
        for key, values in sections.items():
            cfg[key] = {**cfg.get(key, {}), **values}
        path = configs / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    w = {"configs": configs, "root": root}
    w["base"] = config("base")
    w["other"] = config("other", sweep={"lrs": [0.02]})
    for name, sections in {
        "margin_nan": {"guard": {"margin": float("nan")}}, "target_nan": {"sweep": {"target_loss": float("nan")}},
        "basin_neg": {"sweep": {"basin_tol": -1}}, "hparams_typo": {"hparams": {"dytt": {"alpha_init": 0.1}}},
        "fp16_cpu": {"train": {"precision": "16-mixed"}}, "mlp_tiny": {"model": {"mlp_ratio": 0.001}},
        "vocab_10": {"model": {"vocab_size": 10}}, "axis_heads": {"sweep": {"axes": {"model.d_model": [31, 32]}}},
        "axis_relu": {"sweep": {"axes": {"model.mlp": ["relu"]}}}, "mlp_nan": {"model": {"mlp_ratio": float("nan")}},
        "mlp_inf": {"model": {"mlp_ratio": float("inf")}}, "wd_nan": {"train": {"weight_decay": float("nan")}},
        "beta1_2": {"train": {"beta1": 2}}, "threads_neg": {"train": {"threads": -1}},
        "axis_hparam_type": {"sweep": {"axes": {"dyt.alpha_init": ["big"]}, "baselines": ["dyt"]}},
        "eval_seeds_neg": {"sweep": {"eval_seeds": -1}},
        "window_upside_down": {"sweep": {"sensitivity_window": [0.3, 3e-4]}},
        "target_tol_neg": {"sweep": {"target_tol": -0.1}},
    }.items():
        config(name, **sections)
    (configs / "dup_train.yaml").write_text(w["base"].read_text() + "train: {steps: 3}\n")
    (configs / "binary.yaml").write_bytes(bytes(range(128, 256)) * 4)
    assert main(["run", "--config", str(w["base"]), "--out", str(root / "P"), "--no-progress"]) == 0
    assert main(["run", "--config", str(w["other"]), "--out", str(root / "Q"), "--no-progress"]) == 0
    w["P"], w["Q"] = root / "P", root / "Q"
    mixed = root / "mixed"  # P's files with Q's config.yaml
    shutil.copytree(w["P"], mixed)
    shutil.copy(w["Q"] / "config.yaml", mixed / "config.yaml")
    w["mixed"] = mixed
    no_db = root / "no_db"  # P without its study.db
    shutil.copytree(w["P"], no_db)
    (no_db / "study.db").unlink()
    w["no_db"] = no_db
    (root / "not_a_run").mkdir()
    (root / "not_a_run" / "notes.txt").write_text("not a run\n")
    return w


C = "{C}"  # the configs folder
R = "{R}"  # the root (run directories P, Q, mixed, no_db; a fresh name for outputs)
CASES = [
    # ---- commands that used to lose or silently change results ----
    pytest.param(["plot", f"{R}/no_db"], ["study database", "no_db/study.db", "does not exist"], id="plot-db-missing"),
    pytest.param(["leaderboard", f"{R}/no_db"], ["study database", "does not exist"], id="leaderboard-db-missing"),
    pytest.param(["analyze", f"{R}/no_db", "--no-progress"], ["study database", "does not exist"],
                 id="analyze-db-missing"),
    pytest.param(["run", "--config", f"{C}/base.yaml", "--out", f"{R}/no_db", "--no-progress"],
                 ["study database", "missing", "--force-new"], id="resume-db-missing"),
    pytest.param(["train", "--config", f"{C}/base.yaml", "--out", f"{R}/P", "--no-progress"],
                 ["sweep", "choose another --out"], id="train-out-is-a-sweep"),
    pytest.param(["run", "--config", f"{C}/base.yaml", "--out", f"{R}/P", "--storage", f"sqlite:///{R}/other.db",
                  "--no-progress"], ["own study.db", "leave out --storage"], id="resume-other-storage"),
    pytest.param(["run", "--config", f"{C}/base.yaml", "--out", f"{R}/fresh1", "--storage", "sqlite://"],
                 ["in-memory"], id="storage-in-memory"),
    pytest.param(["run", "--config", f"{C}/base.yaml", "--out", f"{R}/fresh1", "--storage", "sqlite:///:memory:"],
                 ["in-memory"], id="storage-in-memory-named"),
    pytest.param(["run", "--config", f"{C}/margin_nan.yaml", "--out", f"{R}/fresh1"],
                 ["guard.margin", "finite"], id="guard-margin-nan"),
    pytest.param(["run", "--config", f"{C}/target_nan.yaml", "--out", f"{R}/fresh1"],
                 ["sweep.target_loss", "finite"], id="target-loss-nan"),
    pytest.param(["run", "--config", f"{C}/basin_neg.yaml", "--out", f"{R}/fresh1"], ["sweep.basin_tol", "[0, 1)"],
                 id="basin-tol-negative"),
    pytest.param(["run", "--config", f"{C}/hparams_typo.yaml", "--out", f"{R}/fresh1"],
                 ["unknown baseline 'dytt'", "did you mean 'dyt'", "hparams.dytt"], id="hparams-baseline-typo"),
    pytest.param(["train", "--config", f"{C}/base.yaml", "--set", "hparams.dytt.alpha_init=0.1", "--out",
                  f"{R}/fresh1"], ["unknown baseline 'dytt'"], id="hparams-baseline-typo-train"),
    pytest.param(["run", "--config", f"{C}/base.yaml", "--baselines", ",", "--out", f"{R}/fresh1"],
                 ["--baselines", "names no baseline"], id="baselines-empty"),
    pytest.param(["run", "--config", f"{C}/dup_train.yaml", "--out", f"{R}/fresh1"],
                 ["duplicate key 'train'", "dup_train.yaml"], id="yaml-duplicate-key"),
    pytest.param(["run", "--config", f"{C}/fp16_cpu.yaml", "--out", f"{R}/fresh1"],
                 ["16-mixed", "needs a CUDA device"], id="fp16-on-cpu"),
    pytest.param(["train", "--config", f"{C}/fp16_cpu.yaml", "--out", f"{R}/fresh1"],
                 ["16-mixed", "needs a CUDA device"], id="fp16-on-cpu-train"),
    pytest.param(["speed", "--set", "train.steps=abc", "--out", f"{R}/fresh1"], ["--set", "--overhead"],
                 id="speed-set-without-overhead"),
    pytest.param(["speed", "--steps", "-5", "--out", f"{R}/fresh1"], ["--steps", "--overhead"],
                 id="speed-steps-without-overhead"),
    pytest.param(["speed", "--suite", "nonsense", "--out", f"{R}/fresh1"], ["--suite", "--overhead"],
                 id="speed-suite-without-overhead"),
    pytest.param(["speed", "--overhead", "--widths", "256", "--out", f"{R}/fresh1"], ["--widths", "--overhead"],
                 id="speed-widths-with-overhead"),
    pytest.param(["speed", "--overhead", "--steps", "0", "--out", f"{R}/fresh1"], ["--steps", ">= 1"],
                 id="speed-overhead-steps-0"),
    pytest.param(["leaderboard", f"{R}/mixed"], ["holds no study of run", "different runs"],
                 id="leaderboard-config-of-another-run"),
    pytest.param(["report", f"{R}/mixed"], ["belongs to run", "mixed"], id="report-config-of-another-run"),
    pytest.param(["leaderboard", f"{R}/P", "--storage", f"sqlite:///{R}/Q/study.db"], ["own study.db"],
                 id="leaderboard-storage-of-another-run"),
    pytest.param(["plot", f"{R}/P", "--storage", f"sqlite:///{R}/Q/study.db"], ["own study.db"],
                 id="plot-storage-of-another-run"),
    pytest.param(["leaderboard", f"{R}/P", f"{R}/P/"], ["given twice"], id="leaderboard-same-run-twice"),
    pytest.param(["run", "--config", f"{C}/mlp_tiny.yaml", "--out", f"{R}/fresh1"], ["mlp_ratio", "width 0"],
                 id="mlp-ratio-zero-width"),
    pytest.param(["run", "--config", f"{C}/eval_seeds_neg.yaml", "--out", f"{R}/fresh1"],
                 ["sweep.eval_seeds", ">= 0"], id="eval-seeds-negative"),
    pytest.param(["run", "--config", f"{C}/window_upside_down.yaml", "--out", f"{R}/fresh1"],
                 ["sweep.sensitivity_window", "0 < low < high"], id="sensitivity-window-upside-down"),
    pytest.param(["run", "--config", f"{C}/target_tol_neg.yaml", "--out", f"{R}/fresh1"],
                 ["sweep.target_tol", "[0, 1)"], id="target-tol-negative"),
    # ---- inputs that used to end in a traceback or a FAIL per trial ----
    pytest.param(["run", "--config", f"{C}/vocab_10.yaml", "--out", f"{R}/fresh1"],
                 ["model.vocab_size is 10", "256"], id="vocab-below-corpus-run"),
    pytest.param(["train", "--config", f"{C}/vocab_10.yaml", "--out", f"{R}/fresh1"],
                 ["model.vocab_size is 10", "256"], id="vocab-below-corpus-train"),
    pytest.param(["run", "--config", f"{C}/axis_heads.yaml", "--out", f"{R}/fresh1"],
                 ["model.d_model=31", "divisible by model.n_heads"], id="axis-value-heads"),
    pytest.param(["run", "--config", f"{C}/axis_relu.yaml", "--out", f"{R}/fresh1"],
                 ["model.mlp", "'relu'", "gelu"], id="axis-value-mlp"),
    pytest.param(["run", "--config", f"{C}/axis_hparam_type.yaml", "--out", f"{R}/fresh1"],
                 ["dyt.alpha_init='big'", "must be a number"], id="axis-value-hparam-type"),
    pytest.param(["run", "--config", f"{C}/mlp_nan.yaml", "--out", f"{R}/fresh1"], ["model.mlp_ratio", "finite"],
                 id="mlp-ratio-nan"),
    pytest.param(["run", "--config", f"{C}/mlp_inf.yaml", "--out", f"{R}/fresh1"], ["model.mlp_ratio", "finite"],
                 id="mlp-ratio-inf"),
    pytest.param(["run", "--config", f"{C}/wd_nan.yaml", "--out", f"{R}/fresh1"], ["train.weight_decay", "finite"],
                 id="weight-decay-nan"),
    pytest.param(["run", "--config", f"{C}/beta1_2.yaml", "--out", f"{R}/fresh1"], ["train.beta1", "[0, 1)"],
                 id="beta1-2"),
    pytest.param(["train", "--config", f"{C}/base.yaml", "--seed", "99999999999", "--out", f"{R}/fresh1"],
                 ["train.seed", "4294967295"], id="seed-too-large"),
    pytest.param(["train", "--config", f"{C}/base.yaml", "--seed", "-1", "--out", f"{R}/fresh1"],
                 ["train.seed", "[0,"], id="seed-negative"),
    pytest.param(["run", "--config", f"{C}/binary.yaml", "--out", f"{R}/fresh1"], ["not UTF-8"], id="config-binary"),
    pytest.param(["worker", "--storage", f"sqlite:///{R}/P/study.db", "--study", "x", "--threads", "-1"],
                 ["--threads", ">= 0"], id="worker-threads-negative"),
    pytest.param(["run", "--config", f"{C}/threads_neg.yaml", "--out", f"{R}/fresh1"], ["train.threads", ">= 0"],
                 id="train-threads-negative"),
    pytest.param(["speed", "--widths", "abc", "--out", f"{R}/fresh1"], ["--widths", "'abc'"], id="speed-widths-abc"),
    pytest.param(["speed", "--widths", "256,", "--out", f"{R}/fresh1"], ["--widths", "'256,'"],
                 id="speed-widths-trailing-comma"),
    pytest.param(["speed", "--overhead", "--repeats", "0", "--out", f"{R}/fresh1"], ["--repeats", ">= 1"],
                 id="speed-repeats-0"),
    pytest.param(["run", "--config", C, "--out", f"{R}/fresh1"], ["is a directory"], id="config-is-a-directory"),
    pytest.param(["run", "--config", f"{C}/base.yaml", "--plugin", C, "--out", f"{R}/fresh1"], ["is a directory"],
                 id="plugin-is-a-directory"),
    pytest.param(["worker", "--storage", f"sqlite:///{R}/nowhere.db", "--study", "nfb-x"],
                 ["nowhere.db", "does not exist"], id="worker-missing-sqlite"),
    pytest.param(["train", "--config", f"{C}/base.yaml", "--baseline", "nope", "--out", f"{R}/fresh1/deep"],
                 ["unknown baseline 'nope'"], id="train-failure-leaves-no-out-dir"),
    pytest.param(["speed", "--baselines", "nope", "--out", f"{R}/fresh1/deep"], ["unknown baseline 'nope'"],
                 id="speed-failure-leaves-no-out-dir"),
]


@pytest.mark.parametrize("template, needles", CASES)
def test_bad_input_is_refused_before_any_work(template: list[str], needles: list[str], world: dict[str, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    root = world["root"]
    argv = [a.replace(C, str(world["configs"])).replace(R, str(root)) for a in template]
    before = snapshot(root)
    rc, out, err = cli(argv, capsys)
    assert rc == 2, (rc, err[-2000:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    for needle in needles:
        assert needle.replace(R, str(root)) in lines[0], (needle, lines[0])
    assert snapshot(root) == before, "a refused command changed, created or deleted a file"


# ---- property: random mixtures of valid and invalid --set values -------------------------------------
VALID = [("train.steps", "3"), ("train.lr", "0.01"), ("guard.patience", "5"), ("model.d_model", "16"),
         ("train.weight_decay", "0.0"), ("hparams.dyt.alpha_init", "0.5"), ("sweep.seeds", "1"),
         ("train.eval_interval", "2"), ("model.qk_norm", "layernorm"), ("train.z_loss", "1.0e-4")]
INVALID = [("train.steps", "0"), ("train.lr", "-1"), ("train.lr", ".nan"), ("guard.margin", ".inf"),
           ("model.d_model", "15"), ("model.mlp", "relu"), ("train.beta2", "1.5"), ("hparams.dyt.alpha_init", "abc"),
           ("hparams.nope.x", "1"), ("sweep.lrs", "[]"), ("train.seed", "-3"), ("model.mlp_ratio", "0.0001"),
           ("train.precision", "16-mixed"), ("model.vocab_size", "10"), ("train.threads", "-2"),
           ("train.nonsense", "1"), ("sweep.basin_tol", "-0.5"), ("data.batch_size", "0")]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(valid=st.lists(st.sampled_from(VALID), max_size=4), invalid=st.lists(st.sampled_from(INVALID), min_size=1,
                                                                              max_size=3),
       order=st.randoms(use_true_random=False), name=st.text(string.ascii_lowercase, min_size=4, max_size=8))
def test_random_mixtures_of_set_values_are_refused_whole(valid, invalid, order, name, world, capsys) -> None:
    """At least one invalid value among valid ones: the command is refused, exit 2 and one line, and
    nothing is created or changed, whatever the order of the values."""
    pairs = valid + invalid
    order.shuffle(pairs)
    keys = {k for k, _ in pairs}
    pairs = [p for p in pairs if p[0] in keys and (keys.discard(p[0]) or True)]  # one value per key: the first
    if not any(p in INVALID for p in pairs):
        pairs.append(invalid[0])
        pairs = [p for p in pairs if p[0] != invalid[0][0] or p == invalid[0]]
    root = world["root"]
    command = order.choice(["train", "run"])
    argv = [command, "--config", str(world["base"]), "--out", str(root / f"prop-{name}"), "--no-progress"]
    for key, value in pairs:
        argv += ["--set", f"{key}={value}"]
    before = snapshot(root)
    rc, out, err = cli(argv, capsys)
    assert rc == 2, (argv, err[-1500:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert snapshot(root) == before


# ---- accepted, with the documented behaviour ----------------------------------------------------------
def test_force_new_moves_the_old_run_whole_into_previous(world: dict[str, Path], capsys) -> None:
    run = world["root"] / "forced"
    shutil.copytree(world["P"], run)
    old = snapshot(run)
    old_name = yaml.safe_load((run / "config.yaml").read_text())["run_name"]
    rc, _, err = cli(["run", "--config", str(world["other"]), "--out", str(run), "--no-progress", "--force-new"],
                     capsys)
    assert rc == 0, err
    (kept,) = (run / "previous").iterdir()
    assert kept.name.endswith(old_name)
    assert snapshot(kept) == old  # every file of the old run, byte for byte and untouched
    rc, out, err = cli(["leaderboard", str(kept), "--format", "json"], capsys)
    assert rc == 0 and '"layernorm"' in out, err  # still readable on its own
    assert yaml.safe_load((run / "config.yaml").read_text())["run_name"] != old_name


def test_workers_are_capped_at_the_grid_and_the_cores_with_a_note(world: dict[str, Path], capsys) -> None:
    out = world["root"] / "capped"
    rc, _, err = cli(["run", "--config", str(world["base"]), "--out", str(out), "--no-progress", "--workers", "4",
                      "--set", "sweep.lrs=[0.01, 0.02]"], capsys)
    assert rc == 0, err
    assert "note: --workers 4 capped at 2" in err
    record = yaml.safe_load((out / "config.yaml").read_text())
    assert record["resolved"]["workers"] == 2 and record["resolved"]["device"] == "cpu"
    assert record["resolved"]["precision"] == "32-true"


def test_leaderboard_of_runs_with_the_same_name_labels_them_apart(world: dict[str, Path], capsys) -> None:
    a, b = world["root"] / "a" / "run", world["root"] / "b" / "run"
    shutil.copytree(world["P"], a)
    shutil.copytree(world["Q"], b)
    rc, out, err = cli(["leaderboard", str(a), str(b), "--format", "csv"], capsys)
    assert rc == 0, err
    labels = [line.split(",")[0] for line in out.splitlines()[1:]]
    assert labels == ["a/run", "b/run"]


def test_sort_by_a_count_column_uses_the_numbers_behind_it() -> None:
    rows = [{"baseline": "x", "diverged": "12/12"}, {"baseline": "y", "diverged": "2/3"},
            {"baseline": "z", "diverged": "0/7"}, {"baseline": "w", "diverged": None}]
    assert [r["baseline"] for r in sort_rows(rows, "diverged")] == ["z", "y", "x", "w"]  # 0, 0.67, 1.0, missing
    rows = [{"baseline": "a", "best_val_loss": 10.0}, {"baseline": "b", "best_val_loss": 9.0}]
    assert [r["baseline"] for r in sort_rows(rows, "best_val_loss")] == ["b", "a"]


def test_train_records_what_it_resolved_and_refuses_another_configs_output(world: dict[str, Path], capsys) -> None:
    out = world["root"] / "trained"
    rc, _, err = cli(["train", "--config", str(world["base"]), "--baseline", "layernorm", "--out", str(out),
                      "--no-progress"], capsys)
    assert rc == 0, err
    record = yaml.safe_load((out / "config.yaml").read_text())
    assert record["kind"] == "train" and record["resolved"] == {"device": "cpu", "precision": "32-true", "threads": 1,
                                                             "compile": False}
    rc, _, err = cli(["train", "--config", str(world["base"]), "--baseline", "layernorm", "--out", str(out),
                      "--no-progress"], capsys)
    assert rc == 0, err  # the same config again reproduces the same output
    before = snapshot(out)
    rc, _, err = cli(["train", "--config", str(world["base"]), "--lr", "0.02", "--out", str(out), "--no-progress"],
                     capsys)
    assert rc == 2 and "another config" in err and snapshot(out) == before


def test_a_baseline_whose_forward_raises_is_refused_before_any_trial(world: dict[str, Path], capsys,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The preflight builds every baseline of the grid and runs one forward pass before the sweep."""
    from normfree_bench.core import registry

    for name in ("_REGISTRY", "_SOURCES", "_LOADED_FILES"):  # the plugin stays out of the other tests
        monkeypatch.setattr(registry, name, type(getattr(registry, name))(getattr(registry, name)))
    root = world["root"]
    plugin = root / "boom_plugin.py"
    plugin.write_text(BOOM_PLUGIN)
    before = snapshot(root)
    rc, out, err = cli(["run", "--config", str(world["base"]), "--plugin", str(plugin), "--baselines",
                        "layernorm,boomnorm", "--out", str(root / "boom-run"), "--no-progress"], capsys)
    assert rc == 2, err
    assert err.strip() == ("error: baseline 'boomnorm' fails before training (RuntimeError: boom in forward); "
                           "check it with `normfree-bench baselines check boomnorm`")
    assert snapshot(root) == before and not (root / "boom-run").exists()  # not even layernorm was trained
