"""The Transformer alone, under the plain pre-LN baseline: shapes, causality, positions, the shared init,
and the documented view (`ModelView`) that every baseline hook is written against."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from normfree_bench import ModelConfig, ModelView, Transformer, build_model, get_baseline
from normfree_bench.core.baseline import BlockView

LM = ModelConfig(d_model=32, n_layers=3, n_heads=4, context_length=16)
VIT = ModelConfig(task="vit", d_model=32, n_layers=2, n_heads=4, image_size=8, patch_size=2, in_chans=1,
                  num_classes=10)


def lm(**overrides: object) -> Transformer:
    torch.manual_seed(0)
    return build_model("layernorm", ModelConfig(**{**LM.__dict__, **overrides}))


def test_lm_and_vit_heads_share_the_blocks() -> None:
    ids = torch.randint(0, 256, (2, 16))
    assert lm()(ids).shape == (2, 16, 256)
    torch.manual_seed(0)
    vit = build_model("layernorm", VIT)
    assert vit(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert vit.config.n_tokens == 16  # (8 / 2)^2 patches


@pytest.mark.parametrize("positions", ["learned", "rope", "none"])
def test_the_lm_is_causal(positions: str) -> None:
    model = lm(positions=positions).eval()
    ids = torch.randint(0, 256, (1, 16))
    changed = ids.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 256  # only tokens from position 10 on
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.equal(a[0, :10], b[0, :10])
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_positions_change_what_a_token_sees() -> None:
    ids = torch.full((1, 16), 7)  # one token repeated: only positions tell the places apart
    with torch.no_grad():
        out = {p: lm(positions=p).eval()(ids)[0] for p in ("learned", "rope", "none")}
    assert torch.allclose(out["none"][0], out["none"][5], atol=1e-5)  # no positions: every place looks alike
    assert not torch.allclose(out["learned"][0], out["learned"][5], atol=1e-5)
    # Rotary positions are relative, so a repeated token cannot tell them apart; on mixed tokens the same
    # weights (rope adds no parameter) give other outputs with rotary positions than without.
    mixed = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        rope, none = lm(positions="rope").eval()(mixed), lm(positions="none").eval()(mixed)
    assert torch.equal(rope[0, 0], none[0, 0])  # the first token attends to itself only
    assert not torch.allclose(rope[0, 1:], none[0, 1:], atol=1e-5)


def test_the_shared_init_is_gpt2s_with_depth_scaled_output_projections() -> None:
    """Independent derivation: N(0, 0.02) truncated at +-2 std for weights (timm's trunc_normal_ cuts at
    +-2 absolute, i.e. 100 std, so in effect untruncated), 0.02 / sqrt(2 L) for the outputs of the branches,
    zero biases, LayerNorm gamma 1 and beta 0."""
    torch.manual_seed(0)
    model = build_model("layernorm", ModelConfig(d_model=256, n_layers=4, n_heads=4, context_length=64))
    out_std = 0.02 / math.sqrt(2 * 4)
    for _, role, linear in model.branch_linears():
        want = out_std if role in ("attn_out", "mlp_out") else 0.02
        assert linear.weight.std().item() == pytest.approx(want, rel=0.05), role
        assert torch.all(linear.bias == 0)
    assert model.tok_emb.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.pos_emb.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.head.weight.std().item() == pytest.approx(0.02, rel=0.05)
    for _, _, _, norm in model.norm_sites():
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0) and norm.eps == 1e-5


def test_branch_linears_name_every_linear_inside_a_branch_by_role() -> None:
    for preset, roles in (("gpt2", ["qkv", "attn_out", "mlp_in", "mlp_out"]),
                          ("llama", ["qkv", "attn_out", "mlp_in", "mlp_in", "mlp_out"])):
        model = build_model("layernorm", ModelConfig.from_preset(preset, d_model=32, n_layers=2, n_heads=4,
                                                                 context_length=8))
        found = list(model.branch_linears())
        assert [r for i, r, _ in found if i == 0] == roles
        in_blocks = {id(m) for m in model.blocks.modules() if isinstance(m, nn.Linear)}
        assert {id(lin) for _, _, lin in found} == in_blocks  # every linear of every block, nothing else


def test_sites_and_residuals_are_named_by_their_module_paths() -> None:
    model = lm()
    modules = dict(model.named_modules())
    sites = list(model.norm_sites())
    assert [(layer, site) for layer, site, _, _ in sites][-1] == (3, "final")
    assert len(sites) == 2 * 3 + 1 and all(modules[name] is module for _, _, name, module in sites)
    residuals = list(model.residual_sites())
    assert len(residuals) == 2 * 3 and all(modules[name] is res for _, _, name, res in residuals)


def test_the_model_is_a_model_view_and_its_blocks_block_views() -> None:
    model = lm()
    assert isinstance(model, ModelView) and all(isinstance(b, BlockView) for b in model.blocks)
    assert model.baseline.name == "layernorm" and model.norm_final is model.norm_final


def test_embed_then_blocks_then_final_site_is_the_forward_pass() -> None:
    model = lm().eval()
    ids = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        x = model.embed(ids)
        for block in model.blocks:
            x = block(x)
        assert torch.allclose(model.head(model.norm_final(x)), model(ids), atol=1e-6)


def test_swiglu_and_mlp_ratio_set_the_hidden_width() -> None:
    model = build_model("layernorm", ModelConfig.from_preset("llama", d_model=32, n_layers=1, n_heads=4,
                                                             context_length=8, mlp_ratio=2.0))
    widths = {r: lin.out_features for _, r, lin in model.branch_linears() if r == "mlp_in"}
    assert widths == {"mlp_in": 64} and model.head.bias is None  # llama preset: no biases


def test_a_baseline_instance_can_be_passed_instead_of_a_name() -> None:
    baseline = get_baseline("dyt")(LM, alpha_init=0.3)
    model = build_model(baseline, LM)
    assert model.baseline is baseline and model.blocks[0].norm_attn.alpha.item() == pytest.approx(0.3)


def test_layer_reprs_name_their_settings() -> None:
    """``print(model)`` and ``baselines check`` show each point-wise norm's and gate's settings."""
    from normfree_bench.core.layers import GatedResidual, PointwiseNorm, SkipScaledResidual

    norm = PointwiseNorm(8, nn.Tanh(), alpha_init=0.25, bias=True)
    assert norm.extra_repr() == "alpha_init=0.25, gain=True, bias=True"
    shifted = PointwiseNorm(8, nn.Tanh(), alpha_init=2.0, bias=False, shift=0.5, gain=False)
    assert shifted.extra_repr() == "alpha_init=2, gain=False, bias=False, shift_init=0.5"
    assert GatedResidual(nn.Parameter(torch.zeros(4))).extra_repr() == "shape=(4,), learnable=True"
    assert GatedResidual(torch.zeros(1)).extra_repr() == "shape=(1,), learnable=False"
    assert SkipScaledResidual(nn.Parameter(torch.ones(4))).extra_repr() == "shape=(4,), learnable=True"
    assert SkipScaledResidual(torch.ones(1)).extra_repr() == "shape=(1,), learnable=False"
