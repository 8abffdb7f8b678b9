"""The gain/bias study: ``affine: both | gamma | none`` for DyT (and its relatives) and LayerNorm.

Usage: ``.venv/bin/python -m pytest tests/test_affine.py -q``
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from normfree_bench import build_model
from normfree_bench.config import ModelConfig, load_run_config, parse_set
from normfree_bench.config.suites import suite_path
from normfree_bench.core.invariants import affine_problems
from normfree_bench.core.layers import PointwiseNorm
from normfree_bench.core.norm_impl import implement
from normfree_bench.core.registry import get_baseline
from normfree_bench.sweep.grid import grid_configs
from tests.conftest import cli

# affine, model.bias -> (gain, bias) at every norm site
EXPECTED = {("both", True): (True, True), ("both", False): (True, False), ("gamma", True): (True, False),
            ("gamma", False): (True, False), ("none", True): (False, False), ("none", False): (False, False)}


@pytest.mark.parametrize("name", ["dyt", "derf", "layernorm"])
@pytest.mark.parametrize("affine, model_bias", list(EXPECTED))
def test_every_norm_site_has_exactly_the_gain_and_bias_asked_for(name: str, affine: str, model_bias: bool) -> None:
    config = ModelConfig(d_model=32, n_layers=2, n_heads=4, context_length=16, bias=model_bias)
    model = build_model(name, config, affine=affine)
    gain, bias = EXPECTED[(affine, model_bias)]
    sites = list(model.norm_sites())
    assert len(sites) == 2 * 2 + 1
    for _, _, site, module in sites:
        assert (module.weight is not None) == gain, site
        assert (module.bias is not None) == bias, site
        if gain:
            assert torch.all(module.weight == 1)
    n_affine = sum(p.numel() for _, _, _, m in sites for p in (m.weight, m.bias) if p is not None)
    assert n_affine == len(sites) * 32 * (gain + bias)
    batch = torch.randint(0, 256, (2, 16))
    assert get_baseline(name)(config, affine=affine).check_init(model, batch) == []


def test_a_site_with_another_affine_map_is_reported() -> None:
    with_both = PointwiseNorm(8, nn.Tanh(), alpha_init=0.5, bias=True)
    assert affine_problems("h.0.attn", with_both, "none", True) == [
        "h.0.attn: affine 'none' takes no gain gamma",
        "h.0.attn: affine 'none' with model.bias=True takes no bias beta"]
    bare = nn.LayerNorm(8, elementwise_affine=False)
    assert affine_problems("final", bare, "both", True) == [
        "final: affine 'both' needs a gain gamma", "final: affine 'both' with model.bias=True needs a bias beta"]
    assert affine_problems("final", bare, "none", True) == []


def test_dyt_without_its_affine_map_is_tanh_alone_eager_and_fused() -> None:
    torch.manual_seed(0)
    eager = PointwiseNorm(16, nn.Tanh(), alpha_init=0.7, bias=False, gain=False)
    fused = implement(PointwiseNorm(16, nn.Tanh(), alpha_init=0.7, bias=False, gain=False), "fused")
    x = 3 * torch.randn(64, 16, requires_grad=True)
    want = torch.tanh(0.7 * x)
    torch.testing.assert_close(eager(x), want)
    torch.testing.assert_close(fused(x), want, atol=1e-6, rtol=1e-5)
    (da_e,) = torch.autograd.grad(eager(x).sum(), [eager.alpha])
    (da_f,) = torch.autograd.grad(fused(x).sum(), [fused.alpha])
    torch.testing.assert_close(da_f, da_e, rtol=1e-4, atol=1e-4)
    assert [n for n, _ in eager.named_parameters()] == ["alpha"]


def test_the_two_by_three_study_is_one_axes_line() -> None:
    cfg = load_run_config(suite_path("smoke"), parse_set([
        "sweep.baselines=[layernorm, dyt]",
        "sweep.axes={layernorm.affine: [both, gamma, none], dyt.affine: [both, gamma, none]}"]))
    points = grid_configs(cfg, ["layernorm", "dyt"])
    assert sorted((name, c.baseline_hparams(name)["affine"]) for name, c in points) == sorted(
        (n, a) for n in ("layernorm", "dyt") for a in ("both", "gamma", "none"))
    batch = torch.randint(0, 256, (2, 16))
    for name, c in points:
        hp = c.baseline_hparams(name)
        assert get_baseline(name)(c.model, **hp).check_init(build_model(name, c.model, **hp), batch) == []


def test_an_unknown_affine_is_refused_in_one_line(tmp_path, capsys) -> None:
    rc, _, err = cli(["run", "--suite", "smoke", "--out", str(tmp_path / "r"), "--set", "hparams.dyt.affine=gain"],
                     capsys)
    assert rc == 2 and "both, gamma, none" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()
