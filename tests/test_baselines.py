"""Every registered baseline meets the contract, and each scheme matches its paper's rules at init."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats as st
from torch import nn

from normfree_bench import Baseline, ModelConfig, build_model, list_baselines
from normfree_bench.core.layers import PointwiseNorm, Scale, Shift
from normfree_bench.models.contract import CHECKS, check_baseline, init_state, lm_loss, tiny_batch, tiny_config

BUILTINS = ["layernorm", "rmsnorm", "dyt", "fixup", "rezero", "skipinit", "nf"]


def test_all_seven_builtins_are_registered():
    assert set(BUILTINS) <= set(list_baselines())
    assert list_baselines() == sorted(list_baselines())


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
@pytest.mark.parametrize("check", list(CHECKS))
@pytest.mark.parametrize("name", list_baselines())
def test_contract(name, check, preset):
    config = tiny_config(preset)
    torch.manual_seed(0)
    detail = CHECKS[check](build_model(name, config), tiny_batch(config))
    assert detail == "", f"{name} {check} ({preset}): {detail}"


def test_norm_free_claims():
    claims = {n: build_model(n, tiny_config()).baseline.norm_free for n in BUILTINS}
    assert claims == {"layernorm": False, "rmsnorm": False, "dyt": True, "fixup": True, "rezero": True,
                      "skipinit": True, "nf": True}


# ---- the checks can fail ----------------------------------------------------------------------
class _Broken(Baseline):
    name = "broken"
    norm_free = True


def test_contract_catches_a_norm_left_in_a_norm_free_baseline():
    model = build_model(_Broken(tiny_config()), tiny_config())
    assert "norm-free" in CHECKS["norm_free"](model, tiny_batch(model.config))


def test_contract_catches_non_finite_init():
    model = build_model(_Broken(tiny_config()), tiny_config())
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    assert "non-finite" in CHECKS["forward"](model, tiny_batch(model.config))


def test_contract_catches_a_parameter_missing_from_the_optimizer():
    class Dropping(Baseline):
        name = "dropping"

        def param_groups(self, model, lr, weight_decay):
            return [{"params": [p for n, p in model.named_parameters() if "head" not in n]}]

    model = build_model(Dropping(tiny_config()), tiny_config())
    assert "missing" in CHECKS["param_groups"](model, tiny_batch(model.config))


def test_check_baseline_reports_a_raising_forward_as_failed():
    class Raising(Baseline):
        name = "raising"

        def residual(self, dim, branch, layer_idx, n_layers):
            raise RuntimeError("boom")

    from normfree_bench.core import registry

    registry._REGISTRY["raising_test"] = Raising
    try:
        checks = check_baseline("raising_test", presets=("gpt2",))
    finally:
        registry._REGISTRY.pop("raising_test")
    assert not any(c.ok for c in checks)
    assert "boom" in checks[0].detail


# ---- scheme-specific rules --------------------------------------------------------------------
def test_dyt_alpha_per_site_embedding_scalar_and_width_rule():
    cfg = tiny_config()
    model = build_model("dyt", cfg)
    dyts = {n: m for n, m in model.named_modules() if isinstance(m, PointwiseNorm)}
    assert len(dyts) == 2 * cfg.n_layers + 1  # every site replaced, final included
    assert all(m.alpha.numel() == 1 for m in dyts.values())  # one scalar per layer
    assert model.embed_scale.scale.item() == pytest.approx(math.sqrt(cfg.d_model))
    from normfree_bench.core.registry import get_baseline

    dyt = get_baseline("dyt")
    wide = dyt(ModelConfig(d_model=4096, n_heads=32))
    assert wide.alpha == {"attn": 0.8, "other": 0.2}
    assert dyt(ModelConfig(d_model=2048, n_heads=16)).alpha == {"attn": 1.0, "other": 0.5}
    assert dyt(ModelConfig(d_model=8192, n_heads=64)).alpha == {"attn": 0.2, "other": 0.05}
    assert dyt(ModelConfig(task="vit")).alpha == {"attn": 0.5, "other": 0.5}
    small = build_model("dyt", cfg, alpha_init_attn=0.8, alpha_init_other=0.2)
    assert small.blocks[0].norm_attn.alpha.item() == pytest.approx(0.8)
    assert small.blocks[0].norm_mlp.alpha.item() == pytest.approx(0.2)
    assert small.norm_final.alpha.item() == pytest.approx(0.2)


def test_dyt_final_layernorm_ablation_is_one_hparam():
    model = build_model("dyt", tiny_config(), sites_with_layernorm=["final"])
    assert isinstance(model.norm_final, nn.LayerNorm)
    assert isinstance(model.blocks[0].norm_attn, PointwiseNorm)
    assert model.baseline.norm_free is False


def test_dyt_llama_flavour_has_no_beta():
    model = build_model("dyt", tiny_config("llama"))
    assert model.blocks[0].norm_attn.bias is None


def test_rezero_shares_one_alpha_per_layer_and_offers_per_branch():
    model = build_model("rezero", tiny_config())
    for block in model.blocks:
        assert block.res_attn.gain is block.res_mlp.gain
    n_scalars = sum(1 for p in model.parameters() if p.numel() == 1)
    assert n_scalars == model.config.n_layers
    per_branch = build_model("rezero", tiny_config(), per_branch=True)
    assert per_branch.blocks[0].res_attn.gain is not per_branch.blocks[0].res_mlp.gain
    assert not any(isinstance(m, (nn.LayerNorm, nn.RMSNorm)) for m in model.modules())


def test_skipinit_one_zero_gain_per_branch():
    model = build_model("skipinit", tiny_config())
    gains = [r.gain for b in model.blocks for r in (b.res_attn, b.res_mlp)]
    assert len({id(g) for g in gains}) == 2 * model.config.n_layers
    assert all(g.item() == 0 for g in gains)


def test_fixup_inits_and_lr_group():
    cfg = tiny_config()
    model = build_model("fixup", cfg)
    n_branches = 2 * cfg.n_layers
    for _, role, linear in model.branch_linears():
        if role in ("attn_out", "mlp_out"):
            assert linear.weight.abs().max() == 0
    # Xavier-uniform bound sqrt(6/(fan_in+fan_out)) times L^(-1/6) for Q, K, V.
    qkv = model.blocks[0].attn.qkv.weight
    bound = math.sqrt(6 / (qkv.shape[0] + qkv.shape[1])) * n_branches ** (-1 / 6)
    assert qkv.abs().max().item() <= bound + 1e-6
    assert qkv.abs().max().item() > 0.8 * bound
    fc1 = model.blocks[0].mlp.fc1.weight
    bound1 = math.sqrt(6 / (fc1.shape[0] + fc1.shape[1])) * n_branches ** (-1 / 2)
    assert 0.8 * bound1 < fc1.abs().max().item() <= bound1 + 1e-6
    assert model.head.weight.abs().max() == 0
    assert model.norm_final.bias.item() == 0.0  # the decoder's shift0 before the head
    groups = model.baseline.param_groups(model, 1e-3, 0.1)
    scalar_group = [g for g in groups if "lr_scale" in g]
    assert len(scalar_group) == 1 and scalar_group[0]["lr_scale"] == 1.0  # fairseq's run.sh: one group
    # per block: branch shift + scale (2 per branch) and 2 shifts around the activation; plus shift0
    assert len(scalar_group[0]["params"]) == cfg.n_layers * (2 * 2 + 2) + 1
    assert all(p.numel() == 1 for p in scalar_group[0]["params"])
    resnet_rule = build_model("fixup", cfg, scalar_lr_scale=0.1)
    groups = resnet_rule.baseline.param_groups(resnet_rule, 1e-3, 0.1)
    assert [g["lr_scale"] for g in groups if "lr_scale" in g] == [0.1]


def test_nf_beta_schedule_ws_and_agc():
    cfg = tiny_config()
    model = build_model("nf", cfg)
    baseline = model.baseline
    variances = baseline.expected_variances(model)
    assert variances[1] - variances[0] == pytest.approx(0.2**2)
    residuals = [r for b in model.blocks for r in (b.res_attn, b.res_mlp)]
    for residual, var in zip(residuals, variances):
        assert residual.inv_beta.item() == pytest.approx(var**-0.5, rel=1e-5)
        assert residual.skip_gain.item() == 0
    # Scaled WS: each standardised row has zero mean and unit norm.
    weight = model.blocks[0].mlp.fc1.weight
    assert weight.mean(dim=1).abs().max() < 1e-5
    assert torch.allclose(weight.norm(dim=1), torch.ones(weight.shape[0]), atol=1e-4)
    # AGC clips a unit whose gradient is far larger than lambda * |W|.
    ids = tiny_batch(cfg)
    model.zero_grad()
    lm_loss(model, ids).backward()
    raw = model.blocks[0].res_mlp.skip_gain
    raw.grad = torch.full_like(raw, 1e6)
    baseline.clip_gradients(model, 1.0)
    assert raw.grad.abs().item() <= 0.01 * max(raw.abs().item(), 1e-3) + 1e-9


def test_branches_silent_invariant_can_fail():
    model = build_model("rezero", tiny_config())
    with torch.no_grad():
        model.blocks[0].res_attn.gain.fill_(0.5)
    assert model.baseline.check_init(model, tiny_batch(model.config))


@pytest.mark.parametrize("name", list_baselines())
def test_vit_head_shares_the_blocks(name):
    config = ModelConfig(task="vit", d_model=32, n_layers=2, n_heads=4, image_size=8, patch_size=2,
                         in_chans=1, num_classes=10)
    model = build_model(name, config)
    images = torch.randn(3, 1, 8, 8)
    logits = model(images)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    assert model.pos_emb.shape == (1, 16, 32)  # one learned position per patch


# ---- the state each scheme starts from, under both init protocols -------------------------------------
def truncated_std(cut: float) -> float:
    """The std of a standard normal truncated at +-cut (Haiku's and timm's truncated normals)."""
    return float(st.truncnorm(-cut, cut).std())


@pytest.mark.parametrize("init", ["paper", "shared"])
def test_init_state_holds_what_each_paper_promises(init: str) -> None:
    config = tiny_config()  # d = 32, 2 layers, vocab 256
    d, ln256 = 32, math.log(256)
    states = {name: init_state(name, config, init) for name in BUILTINS}
    # Fixup: every branch silent, the head zero (a uniform first prediction), the stream at unit variance:
    # tokens N(0, d^-1/2) x sqrt(d) and positions N(0, d^-1/2) unscaled -> std sqrt(1 + 1/d)
    fixup = states["fixup"]
    assert fixup.branch_std == [0.0] * 4 and fixup.logit_std == 0.0 and fixup.initial_loss == pytest.approx(ln256)
    assert all(s == pytest.approx(math.sqrt(1 + 1 / d), rel=0.1) for s in fixup.stream_std)
    for name in ("rezero", "skipinit", "nf"):  # silent branches: the stream passes through unchanged
        assert states[name].branch_std == [0.0] * 4, name
        assert len(set(states[name].stream_std)) == 1, name
    assert states["skipinit"].logit_std == 0.0  # the zero head
    for name in ("layernorm", "rmsnorm", "dyt"):  # branches write at init; the first prediction is near uniform
        assert all(b > 0 for b in states[name].branch_std), name
        assert states[name].initial_loss == pytest.approx(ln256, abs=0.05), name
    if init == "shared":
        assert {s.rule for s in states.values()} == {"gpt2"}
        assert states["rezero"].stream_std[0] == pytest.approx(0.02 * math.sqrt(2), rel=0.15)  # tok + pos, 0.02 each
    else:
        assert states["rezero"].rule == "xavier" and states["skipinit"].rule == "lecun" and states["nf"].rule == "lecun"
        # ReZero's tutorial: U(-0.1, 0.1) tokens (std 0.1 / sqrt 3) x sqrt(d), positions 0.02 added after
        want = math.sqrt((0.1 / math.sqrt(3) * math.sqrt(d)) ** 2 + 0.02**2)
        assert states["rezero"].stream_std[0] == pytest.approx(want, rel=0.1)
        # SkipInit and NF: hk.Embed's unit-variance truncated normal tokens
        assert states["skipinit"].stream_std[0] == pytest.approx(truncated_std(2.0), rel=0.1)
        assert states["layernorm"].rule == "gpt2" and states["dyt"].rule == "gpt2"


def test_the_llama_flavour_and_the_vit_take_their_recipes_init() -> None:
    llama = build_model("layernorm", tiny_config("llama"))
    assert llama.baseline.network_init() == "llama"
    outs = [lin.weight.std().item() for _, role, lin in llama.branch_linears() if role == "attn_out"]
    assert all(o == pytest.approx(0.02, rel=0.2) for o in outs)  # no 1/sqrt(2L) under LLaMA's init
    vit_cfg = ModelConfig(task="vit", d_model=32, n_layers=2, n_heads=4, image_size=8, patch_size=2, in_chans=1)
    torch.manual_seed(0)
    vit = build_model("dyt", vit_cfg)
    fan_in = 1 * 2 * 2
    bound = 1 / math.sqrt(fan_in)  # PyTorch's Conv2d default: U(+-1/sqrt(fan_in)), timm leaves it
    w = vit.patch_embed.proj.weight
    assert w.abs().max() <= bound and w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.15)


# ---- optimizer groups: which parameters are decayed, at which LR scale ------------------------------
def expected_group(name: str, pname: str, param: torch.nn.Parameter, model) -> tuple[bool, float]:
    """The rule each baseline's docstring states, derived here independently of its param_groups:
    weight matrices (ndim >= 2) are decayed at LR x1, every other parameter is not; NF's Scaled-WS gains
    (shape (out, 1)) are not decayed either; Fixup's scalar biases and multipliers train at
    scalar_lr_scale (1.0, the fairseq script's single group)."""
    if name == "fixup":
        scalars = {id(p) for m in model.modules() if isinstance(m, (Scale, Shift)) for p in m.parameters()}
        if id(param) in scalars:
            return False, 1.0
    if name == "nf" and pname.endswith(".gain") and "parametrizations" in pname:
        return False, 1.0
    return param.ndim >= 2, 1.0


@pytest.mark.parametrize("preset", ["gpt2", "llama"])
@pytest.mark.parametrize("name", BUILTINS)
def test_optimizer_groups_decay_matrices_only_and_keep_the_lr(name: str, preset: str) -> None:
    model = build_model(name, tiny_config(preset))
    actual: dict[int, tuple[bool, float]] = {}
    for group in model.baseline.param_groups(model, 1e-3, 0.1):
        for p in group["params"]:
            actual[id(p)] = (group.get("weight_decay", 0.1) > 0, group.get("lr_scale", 1.0))
    for pname, param in model.named_parameters():
        assert actual[id(param)] == expected_group(name, pname, param, model), (name, pname, param.shape)


def test_nf_gains_of_shape_out_by_1_are_not_decayed() -> None:
    model = build_model("nf", tiny_config())
    gains = [p for n, p in model.named_parameters() if n.endswith("parametrizations.weight.0.gain")]
    assert len(gains) == 8 and all(g.ndim == 2 and g.shape[1] == 1 for g in gains)  # 4 branch linears x 2 blocks
    decayed = {id(p) for g in model.baseline.param_groups(model, 1e-3, 0.1) if g["weight_decay"] > 0
               for p in g["params"]}
    assert not any(id(g) in decayed for g in gains)
