"""`convert`: a third-party timm ViT under each baseline, its report, and its refusals (which change nothing)."""

from __future__ import annotations

import copy
import re

import pytest
import timm
import torch
from timm.layers import RmsNorm, SwiGLU
from timm.models.vision_transformer import Block, ParallelScalingBlock
from torch import nn
from torch.nn.utils import parametrize

from normfree_bench.core.baseline import Baseline
from normfree_bench.core.layers import GatedResidual, PointwiseNorm, Scale
from normfree_bench.errors import UserError
from normfree_bench.models.convert import ConvertedBlock, convert

NORMS = (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, RmsNorm)
NORM_REPLACING = ["rmsnorm", "dyt"]
NORM_FREE = ["fixup", "rezero", "skipinit", "nf"]


def vit(**kwargs) -> nn.Module:
    """A 2-block ViT-Tiny on 32x32 images (17 tokens of width 192)."""
    torch.manual_seed(0)
    args = {"pretrained": False, "img_size": 32, "patch_size": 8, "depth": 2, "num_classes": 10, **kwargs}
    return timm.create_model("vit_tiny_patch16_224", **args)


def images(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def snapshot(model: nn.Module) -> tuple[list, dict[str, torch.Tensor]]:
    return [(n, type(m)) for n, m in model.named_modules()], {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: tuple[list, dict[str, torch.Tensor]]) -> None:
    types, state = before
    assert [(n, type(m)) for n, m in model.named_modules()] == types
    now = model.state_dict()
    assert list(now) == list(state)
    assert all(torch.equal(now[k], state[k]) for k in state)


def sites(model: nn.Module) -> dict[str, nn.Module]:
    out = {f"blocks.{i}.{a}": getattr(b, a) for i, b in enumerate(model.blocks) for a in ("norm1", "norm2")}
    final = "fc_norm" if model.global_pool == "avg" else "norm"
    return {**out, final: getattr(model, final)}


# ---- every baseline converts, trains, and keeps its claims ---------------------------------------
@pytest.mark.parametrize("pool", ["token", "avg"])
@pytest.mark.parametrize("name", NORM_REPLACING + NORM_FREE)
def test_converted_model_runs_forward_and_backward(name, pool):
    model, report = convert(vit(global_pool=pool), name)
    model.train()
    out = model(images())
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    (out.square().mean() + out.mean()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), name
    assert str(report)


@pytest.mark.parametrize("name", ["dyt", *NORM_FREE])
def test_no_norm_is_left_where_the_baseline_replaces_it(name):
    model, _ = convert(vit(global_pool="avg"), name)
    left = [n for n, m in model.named_modules() if isinstance(m, NORMS)]
    assert left == []
    if name == "dyt":
        assert all(isinstance(m, PointwiseNorm) for m in sites(model).values())


def test_rmsnorm_puts_an_rmsnorm_at_every_site():
    model, report = convert(vit(), "rmsnorm")
    assert len(sites(model)) == 5
    assert all(type(m) is nn.RMSNorm and m.eps == 1e-6 for m in sites(model).values())
    assert str(report) == "4 LayerNorm → RMSNorm, 1 LayerNorm (norm) → RMSNorm"


def test_a_timm_rmsnorm_vit_keeps_its_norms_under_rmsnorm_and_loses_them_under_dyt():
    model = vit(norm_layer="rmsnorm").eval()
    with torch.no_grad():
        expected = model(images())
        kept, report = convert(model, "rmsnorm")
        assert torch.equal(kept(images()), expected)
    assert str(report) == "4 RmsNorm → RmsNorm (kept), 1 RmsNorm (norm) → RmsNorm (kept)"
    model, report = convert(vit(norm_layer="rmsnorm"), "dyt")
    assert not any(isinstance(m, NORMS) for m in model.modules())
    assert model.norm.bias is None  # RMSNorm flavour: DyT without beta
    assert str(report) == "4 RmsNorm → PointwiseNorm, 1 RmsNorm (norm) → PointwiseNorm"


def test_layernorm_conversion_is_numerically_identical_on_the_full_vit_tiny():
    torch.manual_seed(0)
    original = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    converted, report = convert(copy.deepcopy(original), "layernorm")
    x = images(1, 224)
    with torch.no_grad():
        assert torch.equal(converted(x), original(x))
    assert str(report) == "24 LayerNorm → LayerNorm (kept), 1 LayerNorm (norm) → LayerNorm (kept)"
    assert all(m.eps == 1e-6 for m in sites(converted).values())  # timm's eps, not the baseline's 1e-5


def test_layernorm_conversion_keeps_the_original_modules_with_avg_pooling():
    model = vit(global_pool="avg").eval()
    before = dict(sites(model))
    with torch.no_grad():
        expected = model(images())
        converted, _ = convert(model, "layernorm")
        assert torch.equal(converted(images()), expected)
    assert all(sites(converted)[k] is m for k, m in before.items())


def test_dyt_report_counts_each_group():
    model, report = convert(vit(global_pool="avg"), "dyt")
    assert str(report) == "4 LayerNorm → PointwiseNorm, 1 LayerNorm (fc_norm) → PointwiseNorm"
    assert report.replaced == {"LayerNorm → PointwiseNorm": 4, "LayerNorm (fc_norm) → PointwiseNorm": 1}
    assert report.changes[0] == ("blocks.0.norm1", "LayerNorm", "PointwiseNorm")
    assert isinstance(model.norm, nn.Identity) and model.fc_norm.alpha.item() == 0.5  # DyT's ViT alpha_0
    assert all(type(b) is Block for b in model.blocks)  # pre-norm residuals: blocks untouched


def test_residual_baselines_wrap_blocks_and_register_their_residuals():
    model, report = convert(vit(), "rezero")
    assert str(report) == "4 LayerNorm → Identity, 1 LayerNorm (norm) → Identity, 4 residuals → GatedResidual"
    block = model.blocks[0]
    assert isinstance(block, ConvertedBlock) and isinstance(block.res_attn, GatedResidual)
    assert block.res_attn.gain is block.res_mlp.gain  # ReZero: one alpha per layer
    assert "blocks.0.res_attn.gain" in model.state_dict()
    assert any(p is block.res_attn.gain for p in model.parameters())


def test_fixup_scales_the_embedding_at_norm_pre_and_replaces_the_activation():
    model, report = convert(vit(), "fixup")
    assert isinstance(model.norm_pre, Scale) and model.norm_pre.scale.item() == pytest.approx(192**0.5)
    assert report.replaced["embedding scale (norm_pre) → Scale"] == 1
    assert report.replaced["GELU (mlp.act) → Sequential(Shift, GELU, Shift)"] == 2
    assert all(torch.all(b.attn.proj.weight == 0) and torch.all(b.mlp.fc2.weight == 0) for b in model.blocks)
    assert torch.all(model.head.weight == 0)


def test_nf_parametrizes_branch_linears_and_sets_its_schedule():
    model, _ = convert(vit(), "nf")
    assert parametrize.is_parametrized(model.blocks[0].attn.qkv, "weight")
    assert parametrize.is_parametrized(model.blocks[1].mlp.fc2, "weight")
    inv_betas = [r.inv_beta.item() for b in model.blocks for r in (b.res_attn, b.res_mlp)]
    assert inv_betas == sorted(inv_betas, reverse=True) and inv_betas[-1] != 1  # 1/beta_l falls with depth
    assert isinstance(model.norm, Scale) and model.norm.scale.item() < inv_betas[-1]
    twin, _ = convert(vit(), "nf")
    twin.load_state_dict(model.state_dict())  # same keys, parametrizations included


def test_new_modules_follow_the_model_dtype_and_masks_still_reach_attention():
    model, _ = convert(vit().double(), "rezero")
    assert model.blocks[0].res_attn.gain.dtype == torch.float64
    x = images().double()
    assert torch.isfinite(model(x)).all()
    mask = torch.zeros(17, 17, dtype=torch.float64)
    assert torch.equal(model(x, attn_mask=mask), model(x))


def test_a_converted_model_can_be_copied():
    model, _ = convert(vit(), "nf")
    twin = copy.deepcopy(model).eval()
    with torch.no_grad():
        assert torch.equal(twin(images()), model.eval()(images()))


def test_nf_on_a_swiglu_vit_scales_silu():
    model, report = convert(vit(mlp_layer=SwiGLU, act_layer="silu"), "nf")
    assert report.replaced["SiLU (mlp.act) → ScaledActivation"] == 2
    assert torch.isfinite(model(images())).all()


@pytest.mark.parametrize("name", NORM_FREE)
def test_blocks_are_the_identity_at_init_when_the_baseline_says_so(name):
    model, report = convert(vit(), name)
    model.eval()
    with torch.no_grad():
        x = report.view.embed(images())
        for block in model.blocks:
            assert torch.equal(block(x), x), name
    assert report.baseline.check_init(report.view, images()) == []


# ---- refusals name the module and change nothing ------------------------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"qk_norm": True}, "blocks.0: it has a norm at attn.q_norm"),
    ({"block_fn": ParallelScalingBlock}, "blocks.0 (ParallelScalingBlock): only timm Block is supported"),
    ({"pre_norm": True}, "norm at norm_pre"),
    ({"global_pool": "map"}, "norm at attn_pool.norm"),
])
def test_unsupported_structures_are_refused_untouched(kwargs, message):
    model = vit(**kwargs)
    before = snapshot(model)
    with pytest.raises(UserError, match=re.escape(message)):
        convert(model, "dyt")
    assert_unchanged(model, before)


def test_a_non_vit_module_is_refused():
    model = nn.Sequential(nn.Linear(4, 4))
    before = snapshot(model)
    with pytest.raises(UserError, match="not a timm model made of timm Blocks"):
        convert(model, "rezero")
    assert_unchanged(model, before)


def test_an_activation_the_baseline_does_not_wrap_is_refused():
    model = vit(act_layer="gelu_tanh")
    before = snapshot(model)
    with pytest.raises(UserError, match=r"blocks\.0\.mlp\.act .*baseline 'nf'"):
        convert(model, "nf")
    assert_unchanged(model, before)


def test_bad_hyperparameters_and_a_second_conversion_are_refused():
    model = vit()
    before = snapshot(model)
    with pytest.raises(UserError, match="unknown hyperparameter 'alpha'"):
        convert(model, "dyt", alpha=1.0)
    assert_unchanged(model, before)
    convert(model, "skipinit")
    with pytest.raises(UserError, match="already converted"):
        convert(model, "dyt")


def test_an_init_needing_what_the_model_lacks_is_rolled_back():
    model = vit(num_classes=0)  # no head to zero
    before = snapshot(model)
    with pytest.raises(UserError, match=r"baseline 'skipinit'.*'Identity' object has no attribute 'weight'"):
        convert(model, "skipinit")
    assert_unchanged(model, before)
    assert all(type(b) is Block for b in model.blocks)


class _Double(nn.Module):
    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return 2 * weight


class _NeedsTokens(Baseline):
    """Changes weights and parametrizes linears, then asks for an LM-only attribute."""

    name = "needs_tokens"
    norm_free = True

    def norm(self, dim, site, layer_idx, n_layers):
        return nn.Identity()

    def residual(self, dim, branch, layer_idx, n_layers):
        return GatedResidual(nn.Parameter(torch.zeros(1)))

    def init_(self, model):
        for _, _, linear in model.branch_linears():
            parametrize.register_parametrization(linear, "weight", _Double())
        nn.init.zeros_(model.head.weight)
        model.tok_emb.weight.zero_()


class _ClaimsNormFree(Baseline):
    name = "claims_norm_free"
    norm_free = True

    def norm(self, dim, site, layer_idx, n_layers):
        return nn.RMSNorm(dim)


@pytest.mark.parametrize(("baseline", "message"), [
    (_NeedsTokens, "baseline 'needs_tokens'.*no attribute 'tok_emb'"),
    (_ClaimsNormFree, "'claims_norm_free' claims to be norm-free but blocks.0.norm1 is RMSNorm"),
])
def test_failures_after_mutation_roll_everything_back(baseline, message):
    model = vit()
    before = snapshot(model)
    with pytest.raises(UserError, match=message):
        convert(model, baseline)
    assert_unchanged(model, before)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
