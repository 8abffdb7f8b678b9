"""Tests written for the mutants the sampled mutation run left alive (results/mutation/survivors.md).

Usage: ``.venv/bin/python -m pytest tests/test_mutation_survivors.py -q``
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path

import torch

from normfree_bench import build_model
from normfree_bench.config import ModelConfig, RunConfig, load_run_config, parse_set
from normfree_bench.core.registry import get_baseline
from normfree_bench.sweep.selection import below
from normfree_bench.tables.export import compute_summary, init_label
from normfree_bench.tables.render import render

RESULTS = Path(__file__).resolve().parents[1] / "results"  # the committed runs


def test_below_scales_its_slack_with_the_loss() -> None:
    # the slack is 1e-12 x max(1, |b|): at b = 3 a loss 2e-12 lower is not "below", 4e-12 lower is
    assert not below(3.0 - 2e-12, 3.0)
    assert below(3.0 - 4e-12, 3.0)
    assert below(0.5 - 2e-12, 0.5) and not below(0.5 - 0.5e-12, 0.5)


def test_compute_summary_reports_every_figure_by_its_documented_key() -> None:
    trials = [{"status": "COMPLETE", "steps": 10, "train_s": 1.0, "wall_s": 4.0, "compile_s": 0.5, "diverged": False},
              {"status": "COMPLETE", "steps": 5, "train_s": 2.0, "wall_s": 4.0, "compile_s": 0.0, "diverged": True},
              {"status": "FAIL", "steps": 1, "train_s": 9.0, "wall_s": 9.0}]
    assert compute_summary(trials) == {
        "complete_trials": 2, "diverged_trials": 1, "steps": 15, "diverged_steps": 5, "train_s": 3.0,
        "diverged_train_s": 2.0, "compile_s": 0.5, "trial_wall_s": 8.0, "outside_train_share": 0.625}


def test_init_labels_name_the_rule_or_the_timm_backbone() -> None:
    native = RunConfig()
    assert init_label(native, "layernorm") == "paper: gpt2"
    assert init_label(load_run_config(overrides=parse_set(["model.init=shared"])), "dyt") == "shared: gpt2"
    timm = load_run_config(overrides=parse_set(["model.backbone=timm:vit_tiny_patch16_224", "model.task=vit"]))
    assert init_label(timm, "layernorm") == "paper: timm (timm:vit_tiny_patch16_224)"


def test_csv_leaves_a_missing_value_empty() -> None:
    text = render([{"baseline": "dyt", "best_lr": None, "best_val_loss": 3.25}], "csv")
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["best_lr"] == "" and row["best_val_loss"] == "3.25"


def test_dyt_without_its_embedding_scalar_passes_its_own_init_check() -> None:
    config = ModelConfig(d_model=32, n_layers=2, n_heads=4, context_length=16)
    model = build_model("dyt", config, embed_scale=False)
    batch = torch.randint(0, 256, (2, 16))
    assert get_baseline("dyt")(config, embed_scale=False).check_init(model, batch) == []


def test_fixup_and_nf_details_the_recipe_depends_on() -> None:
    from torch import nn

    from normfree_bench.core.layers import Scale, Shift

    llama = dataclasses.replace(ModelConfig.from_preset("llama"), d_model=32, n_layers=2, n_heads=4,
                                context_length=16)
    def act(config: ModelConfig) -> list[type]:  # Fixup's activation sits between its two scalar biases
        return [type(m) for m in get_baseline("fixup")(config).activation()]

    assert act(llama) == [Shift, nn.SiLU, Shift]  # SwiGLU's gate, as every scheme's
    assert act(ModelConfig()) == [Shift, nn.GELU, Shift]
    nf = build_model("nf", ModelConfig(d_model=32, n_layers=2, n_heads=4, context_length=16))
    final = nf.norm_final
    assert isinstance(final, Scale) and not isinstance(final.scale, nn.Parameter)  # 1/beta, a fixed buffer
    assert Shift().bias.item() == 0.0


def test_the_llama_init_is_002_everywhere_with_zero_biases() -> None:
    from normfree_bench.core.inits import INIT_STD, init_llama

    torch.manual_seed(0)
    model = build_model("layernorm", ModelConfig(d_model=64, n_layers=2, n_heads=4, context_length=128, bias=True))
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():  # the biases the rule must zero, and positions it must redraw
        for m in linears:
            if m.bias is not None:
                m.bias.fill_(1.0)
        model.pos_emb.fill_(1.0)
    init_llama(model)
    for m in linears:
        assert abs(m.weight.std().item() - INIT_STD * 0.88) < 0.004  # trunc_normal_ at +-2: std 0.88 x 0.02
        assert m.bias is None or torch.all(m.bias == 0)
    assert any(m.bias is not None for m in linears)
    assert abs(model.pos_emb.std().item() - INIT_STD * 0.88) < 0.004


def test_the_low_precision_table_heads_its_mode_column_precision() -> None:
    from normfree_bench.report.html import low_precision_tables
    from tests.conftest import html_tables

    analysis = {"trials": [{"baseline": "dyt", "trial": 3, "lr": 0.01, "seed": 0,
                            "low_precision": {"bf16": {"val_loss": 2.5, "delta": 0.25, "diverged": True},
                                              "fp16": {"skipped": "needs CUDA"}}}]}
    rows = html_tables("".join(low_precision_tables(analysis)))[0]
    assert rows[0] == ["baseline", "trial", "lr", "seed", "precision", "val_loss", "delta", "status"]
    assert [r[4] for r in rows[1:]] == ["bf16", "fp16"]
    assert rows[1][7] == "diverged" and rows[2][7] == "skipped: needs CUDA"


def _files(**kwargs: object) -> object:
    from normfree_bench.report.html import RunFiles

    return RunFiles(run_dir=Path("."), config=kwargs.pop("config", {}), config_text="", **kwargs)


def test_provenance_names_only_the_facts_it_has() -> None:
    from normfree_bench.report.html import provenance_section

    first = provenance_section(_files(provenance={"created": "2026-01-02", "python": "3.12.1"}))[0]
    assert "Run created 2026-01-02, Python 3.12.1; the full provenance.json:" in first
    assert "host" not in first
    with_host = provenance_section(_files(provenance={"host": "box", "torch_threads": 2}))[0]
    assert "Run on host box, 2 torch threads; the full provenance.json:" in with_host


def test_the_sweep_sentence_keeps_its_first_words_when_it_adds_the_initial_loss() -> None:
    from normfree_bench.report.html import sweep_text

    trials = [{"lr": "0.001", "final_val_loss": "1.5", "diverged": "False"},
              {"lr": "0.01", "final_val_loss": "nan", "diverged": "True"}]
    text = sweep_text(_files(trials=trials, config={"model": {"task": "vit", "num_classes": 10}}))
    assert text.startswith("Final validation loss of 2 trials over 2 learning rates from ")
    assert "; 1 diverged, the others ended between 1.5 and 1.5 nats" in text
    assert text.endswith("; the initial loss l0 = ln(10) = 2.303 nats.")


def test_only_the_tuning_studies_carry_the_leaderboards_choice(tmp_path) -> None:
    import shutil

    from normfree_bench.store.rundir import run_studies
    from normfree_bench.tables.export import mark_chosen, read_tables

    run = tmp_path / "vision"
    shutil.copytree(RESULTS / "vision", run)
    tables = read_tables(run)
    for study in run_studies(tables.storage, tables.record["run_name"]):  # start from no mark at all
        study.set_user_attr("leaderboard", None)
    mark_chosen(tables)
    studies = run_studies(tables.storage, tables.record["run_name"])
    phases = {s.user_attrs.get("phase", "tune") for s in studies}
    assert phases == {"tune", "eval"}
    best = {r["baseline"]: r["best_lr"] for r in tables.rows}
    for s in studies:
        mark = s.user_attrs["leaderboard"]
        if s.user_attrs.get("phase", "tune") == "eval":
            assert mark is None, s.study_name
        else:
            assert mark["all"]["chosen_lr"] == best[s.user_attrs["baseline"]]


def test_the_plots_draw_the_grids_trials_only(monkeypatch, tmp_path) -> None:
    from normfree_bench.tables import export

    tables = export.read_tables(RESULTS / "vision")
    drawn = []
    monkeypatch.setattr(export, "plot_all", lambda records, *args, **kwargs: drawn.append(records) or [])
    export.write_plots(tables, tmp_path)
    tune = [r for r in tables.records if r["phase"] == "tune"]
    assert 0 < len(tune) < len(tables.records)  # the run has held-out trials too
    assert [r["phase"] for r in drawn[0]] == ["tune"] * len(tune)


def test_the_leaderboard_reads_the_runs_own_sensitivity_window() -> None:
    from normfree_bench.tables.export import read_tables

    tables = read_tables(RESULTS / "affine")
    assert tables.record["sweep"]["sensitivity_window"] == [0.001, 0.1]  # the grid's own edges, not the default
    assert len(tables.rows) == 6 and all(isinstance(r["lr_sensitivity"], float) for r in tables.rows)
