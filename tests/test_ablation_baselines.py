"""The ablation-group plugins: each formula on known inputs, each init, and that default sweeps skip them.

The generic contract checks (forward, backward, state_dict, ...) run over every registered baseline in
test_baselines.py; this file checks what is specific to each scheme.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normfree_bench import ModelConfig, Transformer, build_model, get_baseline, list_baselines
from normfree_bench.config import RunConfig, load_run_config
from normfree_bench.config.suites import suite_path
from normfree_bench.core.layers import PointwiseNorm, Residual
from normfree_bench.core.pointwise import PointwiseBaseline
from normfree_bench.models.contract import tiny_batch, tiny_config
from normfree_bench.sweep.grid import sweep_baselines

POINTWISE = ["derf", "hardtanh", "sigmoid", "softsign", "isru", "identity"]
ABLATIONS = [*POINTWISE, "layerscale", "op_block"]


def _sigmoid(u: float) -> float:
    return 1.0 / (1.0 + math.exp(-u))


# f(u) written out with the math module, independently of the plugins' torch code.
FORMULAS = {
    "derf": math.erf,
    "hardtanh": lambda u: max(-1.0, min(1.0, u)),
    "sigmoid": lambda u: 2.0 * _sigmoid(u) - 1.0,
    "softsign": lambda u: u / (1.0 + abs(u)),
    "isru": lambda u: u / math.sqrt(1.0 + u * u),
    "identity": lambda u: u,
}


def sites(model: Transformer) -> dict[str, nn.Module]:
    out = {"final": model.norm_final}
    for block in model.blocks:
        out[f"{block.layer_idx}.attn"] = block.norm_attn
        out[f"{block.layer_idx}.mlp"] = block.norm_mlp
    return out


# ---- grouping and selection ------------------------------------------------------------------------
def test_ablation_plugins_are_registered_in_the_ablation_group() -> None:
    for name in ABLATIONS:
        assert name in list_baselines()
        assert get_baseline(name).group == "ablation", name
    assert get_baseline("dyt").group == "main" and get_baseline("layernorm").group == "main"


def test_default_sweep_excludes_the_ablation_group() -> None:
    selected = sweep_baselines(RunConfig())
    assert "dyt" in selected and "layernorm" in selected
    assert not set(ABLATIONS) & set(selected)


def test_ablation_suite_names_every_ablation_plugin_and_its_references() -> None:
    cfg = load_run_config(suite_path("ablation"))
    assert set(sweep_baselines(cfg)) == {"dyt", "layernorm", *ABLATIONS}
    assert len(cfg.sweep.lr_grid()) >= 3 and cfg.sweep.seeds == 1


def test_pointwise_base_class_is_not_registered_and_dyt_uses_it() -> None:
    registered = {get_baseline(n) for n in list_baselines()}
    assert PointwiseBaseline not in registered
    for name in ["dyt", *POINTWISE]:
        assert issubclass(get_baseline(name), PointwiseBaseline), name


# ---- PointwiseNorm.squash ----------------------------------------------------------------------
def test_squash_is_f_of_alpha_x_plus_s_in_fp32_before_gamma_and_beta() -> None:
    norm = PointwiseNorm(4, nn.Tanh(), alpha_init=0.5, bias=True, shift=0.25)
    with torch.no_grad():
        norm.weight.fill_(3.0)
        norm.bias.fill_(1.0)
    x = torch.tensor([[-8.0, -1.0, 0.0, 2.0]], dtype=torch.bfloat16)
    squashed = norm.squash(x)
    assert squashed.dtype == torch.float32
    want = torch.tensor([[math.tanh(0.5 * v + 0.25) for v in (-8.0, -1.0, 0.0, 2.0)]])
    assert torch.allclose(squashed, want, atol=1e-6)
    assert torch.allclose(norm(x.float()), 3.0 * want + 1.0, atol=1e-6)
    assert norm(x).dtype == torch.bfloat16
    # the saturation diagnostic others compute from it
    assert (squashed.abs() > 0.99).float().mean().item() == pytest.approx(0.25)


def test_no_shift_keeps_the_dyt_state_dict() -> None:
    plain = PointwiseNorm(4, nn.Tanh(), alpha_init=0.5)
    assert plain.shift is None
    assert list(plain.state_dict()) == ["alpha", "weight", "bias"]
    assert torch.allclose(plain.squash(torch.ones(1, 4)), torch.full((1, 4), math.tanh(0.5)))
    shifted = PointwiseNorm(4, nn.Tanh(), alpha_init=0.5, shift=0.0)
    assert list(shifted.state_dict()) == ["alpha", "weight", "bias", "shift"]
    assert shifted.shift.numel() == 1 and shifted.shift.item() == 0.0


# ---- point-wise plugins ------------------------------------------------------------------------
@pytest.mark.parametrize("name", POINTWISE)
def test_pointwise_formula_on_known_inputs(name: str) -> None:
    model = build_model(name, tiny_config())
    norm = model.blocks[0].norm_attn
    assert isinstance(norm, PointwiseNorm)
    dim = model.config.d_model
    gamma = torch.linspace(0.5, 2.0, dim)
    beta = torch.linspace(-1.0, 1.0, dim)
    alpha, shift = 0.7, 0.3
    with torch.no_grad():
        norm.alpha.fill_(alpha)
        norm.weight.copy_(gamma)
        norm.bias.copy_(beta)
        if norm.shift is not None:
            norm.shift.fill_(shift)
    s = shift if name == "derf" else 0.0
    x = torch.linspace(-5.0, 5.0, 3 * dim).reshape(1, 3, dim)
    f = FORMULAS[name]
    want = torch.tensor([[[f(alpha * v + s) for v in row] for row in x[0].tolist()]]) * gamma + beta
    with torch.no_grad():
        assert torch.allclose(norm(x), want, atol=1e-5), name


def test_sigmoid_is_tanh_of_half_the_argument() -> None:
    model = build_model("sigmoid", tiny_config())
    u = torch.linspace(-6, 6, 101)
    assert torch.allclose(model.blocks[0].norm_attn.fn(u), torch.tanh(u / 2), atol=1e-6)


@pytest.mark.parametrize("name", POINTWISE)
def test_pointwise_init_every_site_and_embedding_scalar(name: str) -> None:
    cfg = tiny_config()
    model = build_model(name, cfg)
    norms = sites(model)
    assert all(isinstance(m, PointwiseNorm) for m in norms.values())  # final site included
    assert model.baseline.norm_free is True
    for site, norm in norms.items():
        assert norm.alpha.numel() == 1
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)
        if name == "derf":
            assert norm.alpha.item() == pytest.approx(0.5), site
            assert norm.shift is not None and norm.shift.numel() == 1 and norm.shift.item() == 0.0
        else:
            assert norm.alpha.item() == pytest.approx(1.0), site  # DyT's width rule below width 1024
            assert norm.shift is None
    assert model.embed_scale.scale.item() == pytest.approx(math.sqrt(cfg.d_model))
    assert model.baseline.check_init(model, tiny_batch(cfg)) == []


@pytest.mark.parametrize("name", [n for n in POINTWISE if n != "derf"])
def test_squashing_ablations_follow_dyts_alpha_rule(name: str) -> None:
    cls = get_baseline(name)
    assert cls(ModelConfig(d_model=4096, n_heads=32)).alpha == {"attn": 0.8, "other": 0.2}
    assert cls(ModelConfig(d_model=2048, n_heads=16)).alpha == {"attn": 1.0, "other": 0.5}
    assert cls(ModelConfig(task="vit")).alpha == {"attn": 0.5, "other": 0.5}


def test_derf_alpha_and_hparams() -> None:
    derf = get_baseline("derf")
    for config in (ModelConfig(d_model=4096, n_heads=32), ModelConfig(task="vit"), tiny_config()):
        assert derf(config).alpha == {"attn": 0.5, "other": 0.5}
    assert derf(tiny_config(), alpha_init_attn=2.0, alpha_init_other=0.1).alpha == {"attn": 2.0, "other": 0.1}
    model = build_model("derf", tiny_config(), sites_with_layernorm=["final"])
    assert isinstance(model.norm_final, nn.LayerNorm) and model.baseline.norm_free is False
    llama = build_model("derf", tiny_config("llama"))
    assert llama.blocks[0].norm_attn.bias is None and llama.blocks[0].norm_attn.shift is not None


def test_derf_check_init_catches_a_nonzero_shift() -> None:
    model = build_model("derf", tiny_config())
    with torch.no_grad():
        model.norm_final.shift.fill_(0.5)
    assert any("shift" in p for p in model.baseline.check_init(model, tiny_batch(model.config)))


# ---- LayerScale ----------------------------------------------------------------------------------
@pytest.mark.parametrize("depth, eps", [(2, 1e-4), (12, 1e-4), (23, 1e-4), (24, 1e-5), (35, 1e-5), (36, 1e-6),
                                        (48, 1e-6)])
def test_layerscale_eps_by_depth(depth: int, eps: float) -> None:
    assert get_baseline("layerscale")(ModelConfig(n_layers=depth)).init == eps


def test_layerscale_per_channel_gains_on_a_pre_ln_model() -> None:
    cfg = tiny_config()
    model = build_model("layerscale", cfg)
    assert all(isinstance(m, nn.LayerNorm) for m in sites(model).values())
    residuals = [r for b in model.blocks for r in (b.res_attn, b.res_mlp)]
    assert all(isinstance(r, Residual) for r in residuals)
    gammas = [r.gain for r in residuals]
    assert len({id(g) for g in gammas}) == 2 * cfg.n_layers  # one vector per branch
    for g in gammas:
        assert isinstance(g, nn.Parameter) and g.shape == (cfg.d_model,) and torch.all(g == 1e-4)
    # x + diag(gamma) y
    res = model.blocks[0].res_mlp
    with torch.no_grad():
        res.gain.copy_(torch.arange(cfg.d_model, dtype=torch.float32))
    x, y = torch.randn(2, 3, cfg.d_model), torch.randn(2, 3, cfg.d_model)
    assert torch.allclose(res.combine(x, y), x + torch.arange(cfg.d_model) * y)
    assert res.branch_input(x) is x
    assert any("gamma" in p for p in model.baseline.check_init(model, tiny_batch(cfg)))


def test_layerscale_init_hparam_and_deep_model() -> None:
    model = build_model("layerscale", tiny_config(), init=0.1)
    assert torch.all(model.blocks[1].res_attn.gain == 0.1)
    deep = build_model("layerscale", ModelConfig(d_model=16, n_heads=2, n_layers=24, context_length=8))
    assert torch.all(deep.blocks[23].res_mlp.gain == 1e-5)
    assert deep.baseline.check_init(deep, torch.zeros(1, 8, dtype=torch.long)) == []


# ---- OP block ------------------------------------------------------------------------------------
def test_op_block_norm_sites_qk_rmsnorm_and_fixed_gains() -> None:
    cfg = tiny_config()
    model = build_model("op_block", cfg)
    assert model.baseline.norm_free is False
    assert isinstance(model.blocks[0].norm_attn, nn.LayerNorm)
    assert isinstance(model.norm_final, nn.LayerNorm)
    others = [n for site, n in sites(model).items() if site not in ("0.attn", "final")]
    assert others and all(isinstance(n, nn.Identity) for n in others)
    assert sum(isinstance(m, nn.LayerNorm) for m in model.modules()) == 2
    for block in model.blocks:
        q, k = block.attn.q_norm, block.attn.k_norm
        assert isinstance(q, nn.RMSNorm) and isinstance(k, nn.RMSNorm) and q is not k
        assert tuple(q.weight.shape) == (cfg.head_dim,)  # one weight shared by all heads
        assert q.eps == k.eps == pytest.approx(1e-16)  # the reference's 1e-8 on the RMS, squared
        for res in (block.res_attn, block.res_mlp):
            assert res.gain.item() == pytest.approx(0.2)
            assert not isinstance(res.gain, nn.Parameter)  # fixed, as the reference's default
    assert not any(p.numel() == 1 for p in model.parameters())
    assert any(key.endswith("res_attn.gain") for key in model.state_dict())
    res = model.blocks[1].res_mlp
    x, y = torch.randn(2, 3, cfg.d_model), torch.randn(2, 3, cfg.d_model)
    assert torch.allclose(res.combine(x, y), x + 0.2 * y)
    assert model.baseline.check_init(model, tiny_batch(cfg)) == []


def test_op_block_hparams_and_ignored_model_qk_norm() -> None:
    trainable = build_model("op_block", tiny_config(), trainable_gains=True, resid_gain=0.1)
    gains = [r.gain for b in trainable.blocks for r in (b.res_attn, b.res_mlp)]
    assert all(isinstance(g, nn.Parameter) and g.item() == pytest.approx(0.1) for g in gains)
    assert len({id(g) for g in gains}) == len(gains)
    config = ModelConfig.from_preset("gpt2", d_model=32, n_layers=2, n_heads=4, context_length=16, qk_norm="layernorm")
    assert isinstance(build_model("op_block", config).blocks[0].attn.q_norm, nn.RMSNorm)
    from normfree_bench.errors import UserError

    with pytest.raises(UserError, match="qk_norm"):
        build_model("op_block", tiny_config(), qk_norm="batchnorm")


def test_op_block_qk_norm_normalises_each_head() -> None:
    cfg = tiny_config()
    model = build_model("op_block", cfg)
    seen: dict[str, torch.Tensor] = {}
    model.blocks[1].attn.q_norm.register_forward_hook(lambda m, args, out: seen.__setitem__("q", out))
    model(tiny_batch(cfg))
    q = seen["q"]  # (B, H, T, head_dim)
    assert q.shape[1] == cfg.n_heads and q.shape[-1] == cfg.head_dim
    assert torch.allclose(q.pow(2).mean(-1), torch.ones(q.shape[:-1]), atol=1e-2)
