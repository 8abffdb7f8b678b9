"""``model.placement``: each placement computes its formula, declares its sites, refuses what a baseline does
not support, and trains with diagnostics at its sites; a placement axis gives one leaderboard row per cell.

Usage: ``.venv/bin/python -m pytest -q tests/test_placement.py``
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from normfree_bench import ModelConfig, build_model, get_baseline, list_baselines
from normfree_bench.config import PLACEMENTS, RunConfig, load_run_config, parse_set
from normfree_bench.core.layers import PointwiseNorm
from normfree_bench.errors import UserError
from normfree_bench.tables.render import STUDY_TITLE, study_grid
from normfree_bench.training.train import train_one
from tests.conftest import cli, snapshot

CFG = ModelConfig(d_model=32, n_layers=2, n_heads=4, context_length=16)


def built(name: str, placement: str | None, **hparams) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, dataclasses.replace(CFG, placement=placement), **hparams)
    model.eval()
    return model


def by_hand(block: nn.Module, x: torch.Tensor, placement: str) -> torch.Tensor:
    """The block's output written out from each placement's formula, module by module."""
    for f, n, n_out in ((block.attn, block.norm_attn, block.norm_attn_out), (block.mlp, block.norm_mlp,
                                                                              block.norm_mlp_out)):
        if placement == "pre":
            x = x + f(n(x))
        elif placement == "post":
            x = n(x + f(x))
        elif placement == "res_post":
            x = x + n(f(x))
        else:
            x = x + n_out(f(n(x)))
    return x


@pytest.mark.parametrize("name", ["layernorm", "rmsnorm", "dyt"])
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_each_placement_computes_its_formula(name: str, placement: str) -> None:
    model = built(name, placement)
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        x = model.embed(ids)
        for block in model.blocks:
            want = by_hand(block, x, placement)
            torch.testing.assert_close(block(x), want, rtol=0, atol=0)
            x = want
        if placement == "post":
            assert isinstance(model.norm_final, nn.Identity)  # the last block's output is normalised already
        torch.testing.assert_close(model(ids), model.head(model.norm_final(x)), rtol=0, atol=0)


@pytest.mark.parametrize("placement, sites", [
    ("pre", ["attn", "mlp", "attn", "mlp", "final"]),
    ("post", ["attn", "mlp", "attn", "mlp"]),
    ("res_post", ["attn", "mlp", "attn", "mlp", "final"]),
    ("sandwich", ["attn", "attn_out", "mlp", "mlp_out", "attn", "attn_out", "mlp", "mlp_out", "final"]),
])
def test_each_placement_declares_its_sites_and_the_baseline_fills_them(placement: str, sites: list[str]) -> None:
    for name, kind in (("layernorm", nn.LayerNorm), ("rmsnorm", nn.RMSNorm), ("dyt", PointwiseNorm)):
        model = built(name, placement)
        found = list(model.norm_sites())
        assert [s for _, s, _, _ in found] == sites
        assert all(isinstance(m, kind) for *_, m in found)
        assert model.baseline.check_init(model, torch.randint(0, 256, (2, 16))) == []
        owned = {id(m) for *_, m in found}
        assert sum(isinstance(m, kind) for m in model.modules()) == len(owned)  # no norm outside a site


def test_unset_placement_is_the_baselines_own_and_keeps_the_hash() -> None:
    for name in list_baselines():
        cls = get_baseline(name)
        model = built(name, None)
        assert {b.placement for b in model.blocks} == {cls.placements[0]}
    assert built("deepnorm", None).blocks[0].placement == "post"
    pre = load_run_config(overrides=parse_set(["model.placement=pre"]))
    assert pre.config_hash() != RunConfig().config_hash()  # an explicit placement is part of the hash


@pytest.mark.parametrize("name", list_baselines())
@pytest.mark.parametrize("placement", PLACEMENTS)
def test_an_unsupported_placement_is_one_line_naming_the_valid_ones(name: str, placement: str) -> None:
    cls = get_baseline(name)
    if placement in cls.placements:
        built(name, placement)
        return
    with pytest.raises(UserError) as err:
        built(name, placement)
    message = str(err.value)
    assert "\n" not in message and f"'{name}'" in message and f"'{placement}'" in message
    assert message.endswith("valid for it: " + ", ".join(cls.placements))


def test_the_norm_schemes_support_every_placement_and_the_norm_free_ones_pre_only() -> None:
    for name in ("layernorm", "rmsnorm", "dyt", "derf", "hardtanh", "sigmoid", "softsign", "isru", "identity"):
        assert set(get_baseline(name).placements) == set(PLACEMENTS), name
    for name in ("fixup", "rezero", "skipinit", "nf"):
        assert get_baseline(name).placements == ("pre",), name


def test_bad_placements_exit_2_with_one_line_before_any_work(tmp_path, capsys) -> None:
    before = snapshot(tmp_path)
    cases = [
        (["run", "--suite", "smoke", "--baselines", "layernorm,rezero", "--out", str(tmp_path / "r"),
          "--set", "sweep.axes={model.placement: [pre, post]}"],
         "rezero at model.placement='post': baseline 'rezero' does not support model.placement 'post'"),
        (["train", "--baseline", "skipinit", "--set", "model.placement=sandwich", "--out", str(tmp_path / "t")],
         "baseline 'skipinit' does not support model.placement 'sandwich'; valid for it: pre"),
        (["train", "--set", "model.placement=middle", "--out", str(tmp_path / "t")],
         "invalid config.model.placement 'middle'; valid: pre, post, res_post, sandwich"),
        (["run", "--suite", "smoke", "--baselines", "deepnorm", "--set", "model.placement=pre",
          "--out", str(tmp_path / "r")], "valid for it: post"),
    ]
    for argv, expected in cases:
        code, out, err = cli(argv, capsys)
        assert code == 2 and expected in err and err.count("\n") == 1, (argv, err)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name, placement", [("dyt", "sandwich"), ("layernorm", "post"), ("dyt", "res_post")])
def test_diagnostics_follow_the_sites_of_the_placement(name: str, placement: str) -> None:
    cfg = load_run_config(overrides=parse_set([
        f"baseline={name}", f"model.placement={placement}", "model.d_model=32", "model.n_layers=2",
        "model.context_length=32", "data.batch_size=4", "data.val_windows=4", "train.steps=6",
        "train.warmup_steps=1", "train.eval_interval=3", "train.log_interval=1", "train.threads=1"]))
    result = train_one(cfg)
    assert not result.diverged
    rows = [dict(zip(("step", "layer", "site", "metric", "value"), r)) for r in result.diagnostics]
    sites = {r["site"] for r in rows if r["metric"] == "rms"}
    model_sites = {s for _, s, _, _ in built(name, placement).norm_sites()}
    assert model_sites <= sites, (model_sites, sites)
    if name == "dyt":  # saturation at every point-wise site, sandwich's output sites included
        assert model_sites <= {r["site"] for r in rows if r["metric"] == "saturation"}
    assert ("final" in sites) == (placement != "post")


def test_a_placement_axis_gives_one_leaderboard_row_per_scheme_and_cell(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code, _, err = cli(["run", "--suite", "smoke", "--baselines", "layernorm,dyt", "--out", str(out), "--no-progress",
                        "--set", "sweep.lrs=[0.01]", "--set", "sweep.axes={model.placement: [post, sandwich]}"], capsys)
    assert code == 0, err
    rows = json.loads((out / "leaderboard.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    cells = sorted((r["baseline"], r["model.placement"]) for r in rows)
    assert cells == [("dyt", "post"), ("dyt", "sandwich"), ("layernorm", "post"), ("layernorm", "sandwich")]
    md = (out / "leaderboard.md").read_text()
    assert STUDY_TITLE in md
    grid = md.split(STUDY_TITLE)[1]
    assert "placement=post" in grid and "placement=sandwich" in grid
    by = {r["baseline"] + r["model.placement"]: r for r in rows}
    line = next(x for x in grid.splitlines() if x.startswith("| layernorm"))
    want = f"{by['layernormpost']['best_val_loss']:.4f}"
    assert want in line, (want, line)
    code, _, err = cli(["report", str(out)], capsys)
    assert code == 0, err
    assert 'class="study"' in (out / "report.html").read_text()


def test_the_study_grid_pivots_cells_and_never_gives_a_failed_cell_a_sensitivity() -> None:
    rows = [
        {"baseline": "layernorm", "layernorm.affine": "both", "verdict": "trained", "best_val_loss": 0.25,
         "lr_sensitivity": 0.66},
        {"baseline": "layernorm", "layernorm.affine": "none", "verdict": "trained", "best_val_loss": 0.3,
         "lr_sensitivity": None},
        {"baseline": "dyt", "dyt.affine": "both", "verdict": "failed: no learning", "best_val_loss": 2.3,
         "lr_sensitivity": 0.01},
        {"baseline": "dyt", "dyt.affine": "none", "verdict": "failed: diverged", "best_val_loss": float("nan"),
         "lr_sensitivity": None},
    ]
    headers, body = study_grid(rows, ["layernorm.affine", "dyt.affine"])
    assert headers == ["scheme", "affine=both", "affine=none"]
    assert body == [["layernorm", "0.2500 (sens. 0.660)", "0.3000"],
                    ["dyt", "✗ no learning: 2.3000", "✗ diverged: -"]]
    assert study_grid(rows, []) is None


def test_the_study_grid_marks_a_trained_cell_whose_held_out_seeds_stalled() -> None:
    from normfree_bench.tables.leaderboard import HELDOUT_STALLED

    rows = [{"baseline": "layernorm", "model.placement": "post", "verdict": "trained", "best_val_loss": 2.7658,
             "lr_sensitivity": 0.496, "note": f"2/2 {HELDOUT_STALLED} (mean 3.359 >= 3.227): did not reproduce"},
            {"baseline": "layernorm", "model.placement": "pre", "verdict": "trained", "best_val_loss": 2.6621,
             "lr_sensitivity": 0.241, "note": None}]
    _, body = study_grid(rows, ["model.placement"])
    assert body == [["layernorm", "2.7658 (sens. 0.496) ⚠ held-out seeds stalled", "2.6621 (sens. 0.241)"]]
