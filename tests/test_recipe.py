"""The training recipe and the network inits, each held to a derivation written here, not to the code.

What the README ("Training and the divergence guard", "Init"), the module docstrings and the scheme
reference (``schemes.md`` §1, §7.4) document, re-derived in this file from first principles:

- AdamW with betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on every parameter of two or more
  dimensions that is not a bias (timm's rule), and for NF on no Scaled-WS gain either;
- global gradient clipping at norm 1.0, checked on the gradients a real Lightning step applies;
- the LR: linear warmup from 0 over ``warmup_steps`` optimizer steps, then a cosine to 0.1 x the peak,
  read from the optimizer's param groups during a real run and compared with a closed form;
- the shared GPT-2 init (N(0, 0.02), output projections 0.02 / sqrt(2 L), biases 0) and the other
  network rules (llama, lecun, xavier), as sample standard deviations of a d_model 256 model;
- the eps of the LayerNorm (1e-5) and RMSNorm (1e-6) sites;
- NF's variance schedule: sigma_0^2 from the initialised embeddings and 1 / beta_k = (sigma_0^2 +
  k alpha^2)^(-1/2), both as a formula and as literal numbers for one fixed config and seed;
- the ``invariants`` contract check of ``layernorm`` and ``rmsnorm`` (``sites_normalize``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn

from normfree_bench.config import DataConfig, GuardConfig, ModelConfig, RunConfig, TrainConfig
from normfree_bench.core.inits import NETWORK_INITS
from normfree_bench.data.text import Corpus
from normfree_bench.models.contract import CHECKS, tiny_batch, tiny_config
from normfree_bench.models.factory import build_model
from normfree_bench.models.transformer import Transformer
from normfree_bench.training.guard import DivergenceGuard
from normfree_bench.training.lit_module import LitModel
from normfree_bench.training.train import train_one

# ---- the documented recipe (README "Training and the divergence guard"; methodology.md) ----------
BETAS = (0.9, 0.95)
ADAM_EPS = 1e-8  # methodology.md: AdamW (0.9, 0.95, eps 1e-8)
WEIGHT_DECAY = 0.1
CLIP_NORM = 1.0
FLOOR_RATIO = 0.1  # cosine decay to 0.1 x LR
INIT_STD = 0.02  # GPT-2 / nanoGPT
LN_EPS, RMS_EPS = 1e-5, 1e-6  # baselines/layernorm.py, baselines/rmsnorm.py (HF LlamaRMSNorm)
NF_ALPHA = 0.2  # NF's default alpha


# ---- optimizer --------------------------------------------------------------------------------
def lit(baseline: str, config: ModelConfig | None = None, **train: Any) -> LitModel:
    torch.manual_seed(0)
    model = build_model(baseline, config or tiny_config())
    return LitModel(model, TrainConfig(**train), DivergenceGuard(l0=math.log(256)))


def decayed_names(module: LitModel) -> tuple[set[str], dict[str, float]]:
    """(names in a group with weight decay > 0, weight decay of every parameter by name) of the
    optimizer that ``configure_optimizers`` builds."""
    opt = module.configure_optimizers()["optimizer"]
    names = {id(p): n for n, p in module.model.named_parameters()}
    decay = {names[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert sorted(decay) == sorted(names.values()), "every parameter in exactly one group"
    return {n for n, wd in decay.items() if wd > 0}, decay


def test_train_config_defaults_are_the_documented_recipe() -> None:
    cfg = TrainConfig()
    assert (cfg.beta1, cfg.beta2) == BETAS
    assert cfg.grad_clip == CLIP_NORM
    assert cfg.min_lr_ratio == FLOOR_RATIO
    assert cfg.weight_decay == WEIGHT_DECAY


def test_configure_optimizers_builds_adamw_with_the_documented_betas_eps_and_decay() -> None:
    opt = lit("layernorm").configure_optimizers()["optimizer"]
    assert type(opt) is torch.optim.AdamW
    for group in opt.param_groups:
        assert group["betas"] == BETAS
        assert group["eps"] == ADAM_EPS
        assert group["weight_decay"] in (0.0, WEIGHT_DECAY)
        assert not group["amsgrad"]
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, WEIGHT_DECAY}
    # The config's values reach the optimizer (no constant hidden in the module).
    opt = lit("layernorm", beta1=0.8, beta2=0.99, weight_decay=0.05).configure_optimizers()["optimizer"]
    assert {g["betas"] for g in opt.param_groups} == {(0.8, 0.99)}
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.05}


def test_layernorm_decays_exactly_the_weight_matrices_and_embeddings() -> None:
    """timm's rule: no decay on 1-D parameters and biases; the token and position embeddings are
    matrices (2-D, 3-D) and are decayed, as nanoGPT decays every parameter of dim >= 2."""
    decayed, decay = decayed_names(lit("layernorm"))
    want = {"tok_emb.weight", "pos_emb", "head.weight"} | {
        f"blocks.{i}.{m}.weight" for i in range(2) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}
    assert decayed == want
    assert all(decay[n] == WEIGHT_DECAY for n in want)
    kept = set(decay) - want
    assert all(n.endswith((".bias", "norm_attn.weight", "norm_mlp.weight", "norm_final.weight")) for n in kept)
    assert all(decay[n] == 0.0 for n in kept)


@pytest.mark.parametrize("baseline", ["layernorm", "rmsnorm", "dyt", "skipinit", "nf"])
def test_decayed_set_follows_the_documented_rule_from_names_and_shapes(baseline: str) -> None:
    """Derived from each parameter's name and shape: decayed iff ndim >= 2 and not a bias; NF also
    decays no gain (NFNets' ``pred_gb``: its Scaled-WS gains are (out, 1), its skip gains scalars)."""
    module = lit(baseline)
    decayed, _ = decayed_names(module)
    want = {n for n, p in module.model.named_parameters() if p.ndim >= 2 and not n.endswith(".bias")}
    if baseline == "nf":
        gains = {n for n in want if n.endswith(".gain")}
        assert len(gains) == 8  # one Scaled-WS gain per branch linear: 4 per block, 2 blocks
        want -= gains
    assert decayed == want
    scalars = {n for n, p in module.model.named_parameters() if p.numel() == 1}
    assert not scalars & decayed  # DyT's alpha, the sqrt(d) embedding scale, SkipInit / NF gains


# ---- a real short run: the LR each step used and the gradients it applied --------------------
STEPS, WARMUP, PEAK = 20, 4, 1e-2


def closed_form_lr(step: int, peak: float = PEAK, steps: int = STEPS, warmup: int = WARMUP) -> float:
    """The LR of 0-based optimizer step ``step``: ``peak * step / warmup`` during the warmup (0 at the
    first step), then ``floor + (peak - floor) * (1 + cos(pi * (step - warmup) / (steps - warmup))) / 2``
    with ``floor = 0.1 * peak``, reaching the floor once all ``steps`` are done."""
    floor = FLOOR_RATIO * peak
    if step < warmup:
        return peak * step / warmup
    progress = min(1.0, (step - warmup) / (steps - warmup))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def grad_norm(params: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(p.grad.double().square().sum()) for p in params if p.grad is not None))


class Recorder(pl.Callback):
    """Per optimizer step: its index, the LR of every group, the gradient norm before clipping
    (``on_before_optimizer_step`` runs before Lightning clips) and after (an optimizer step post-hook:
    the gradients AdamW used); and the optimizer's settings and LR once training ended."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.lrs: list[list[float]] = []
        self.pre: list[float] = []
        self.post: list[float] = []
        self.final_lrs: list[float] = []
        self.groups: list[dict[str, Any]] = []

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        (optimizer,) = trainer.optimizers
        self.params = list(module.parameters())
        optimizer.register_step_post_hook(lambda opt, args, kwargs: self.post.append(grad_norm(self.params)))
        self.groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: pl.LightningModule, optimizer: Any) -> None:
        self.steps.append(trainer.global_step)
        self.lrs.append([g["lr"] for g in optimizer.param_groups])
        self.pre.append(grad_norm(self.params))

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.final_lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]


@pytest.fixture(scope="module")
def run() -> tuple[Recorder, Any]:
    """20 steps of a tiny LayerNorm LM through ``train_one`` with the default betas, clip and floor, on
    text of four distinct bytes: its early gradients are coherent across tokens (norm about 4 at init,
    above the clip) and fall below it as the model learns, so the steps cover both cases."""
    rng = np.random.default_rng(0)
    corpus = Corpus(train=rng.integers(97, 101, 20_000, dtype=np.uint8),
                    val=rng.integers(97, 101, 2_000, dtype=np.uint8), sha256="test-recipe")
    cfg = RunConfig(
        baseline="layernorm", model=tiny_config(), data=DataConfig(batch_size=8, val_windows=4),
        train=TrainConfig(steps=STEPS, warmup_steps=WARMUP, lr=PEAK, eval_interval=STEPS, log_interval=1,
                          diagnostics=False, device="cpu"),
        guard=GuardConfig(patience=STEPS))
    recorder = Recorder()
    result = train_one(cfg, corpus=corpus, callbacks=[recorder])
    return recorder, result


def test_real_run_uses_adamw_with_the_documented_settings(run: tuple[Recorder, Any]) -> None:
    recorder, result = run
    assert result.steps == STEPS and recorder.steps == list(range(STEPS))
    assert {g["betas"] for g in recorder.groups} == {BETAS}
    assert {g["eps"] for g in recorder.groups} == {ADAM_EPS}
    assert {g["weight_decay"] for g in recorder.groups} == {0.0, WEIGHT_DECAY}


@pytest.mark.parametrize(("step", "fraction"), [
    (0, 0.0),  # the warmup starts at 0
    (WARMUP // 2, 0.5),  # mid-warmup
    (WARMUP, 1.0),  # the end of the warmup: the peak
    (WARMUP + (STEPS - WARMUP) // 2, 0.55),  # half-way down the cosine: (1 + 0.1) / 2
    (STEPS - 1, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (STEPS - 1 - WARMUP) / (STEPS - WARMUP)))),  # last step
])
def test_lr_at_chosen_steps_of_a_real_run(run: tuple[Recorder, Any], step: int, fraction: float) -> None:
    recorder, _ = run
    for lr in recorder.lrs[step]:
        assert lr == pytest.approx(fraction * PEAK, rel=1e-9, abs=1e-15), f"step {step}"


def test_lr_of_every_step_of_a_real_run_is_warmup_then_cosine_to_a_tenth(run: tuple[Recorder, Any]) -> None:
    recorder, _ = run
    got = [lrs[0] for lrs in recorder.lrs]
    assert all(len(set(lrs)) == 1 for lrs in recorder.lrs)  # every group at the same LR (no lr_scale)
    assert got == pytest.approx([closed_form_lr(s) for s in range(STEPS)], rel=1e-9, abs=1e-15)
    # Warmup is strictly rising for exactly WARMUP steps, the peak is reached at step WARMUP, then it falls.
    assert all(a < b for a, b in zip(got[:WARMUP + 1], got[1:WARMUP + 1]))
    assert max(got) == got[WARMUP] == pytest.approx(PEAK)
    assert all(a > b for a, b in zip(got[WARMUP:], got[WARMUP + 1:]))
    # Once every step is done the scheduler sits on the floor, 0.1 x the peak.
    assert recorder.final_lrs == pytest.approx([FLOOR_RATIO * PEAK] * len(recorder.final_lrs), rel=1e-9)


def test_scheduler_stepped_by_hand_over_the_default_length_matches_the_closed_form() -> None:
    """TrainConfig's own steps and warmup (300, 30), the scheduler stepped as the module steps it."""
    module = lit("layernorm", lr=3e-3)
    cfg = module.cfg
    optimizers = module.configure_optimizers()
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    for t in (0, 1, cfg.warmup_steps - 1, cfg.warmup_steps, cfg.warmup_steps + 1, 165, cfg.steps - 1, cfg.steps):
        scheduler.step_update(num_updates=t)
        want = closed_form_lr(t, peak=3e-3, steps=cfg.steps, warmup=cfg.warmup_steps)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([want] * 2, rel=1e-9, abs=1e-15), t


def test_gradients_are_clipped_to_global_norm_one_on_real_steps(run: tuple[Recorder, Any]) -> None:
    recorder, result = run
    assert len(recorder.pre) == len(recorder.post) == STEPS
    assert sum(pre > 1.5 * CLIP_NORM for pre in recorder.pre) >= 3, recorder.pre  # the clip is exercised
    assert any(pre < 0.9 * CLIP_NORM for pre in recorder.pre), recorder.pre  # and left alone below it
    for pre, post in zip(recorder.pre, recorder.post):
        assert post == pytest.approx(min(pre, CLIP_NORM), rel=1e-4), (pre, post)
    # The curve's grad_norm is the norm before clipping, step k (1-based) being recorder index k - 1.
    curve = {int(row["step"]): row["grad_norm"] for row in result.curve if not math.isnan(row["grad_norm"])}
    assert curve[1] == pytest.approx(recorder.pre[0], rel=1e-4)
    assert curve[STEPS] == pytest.approx(recorder.pre[-1], rel=1e-4)


# ---- network inits ----------------------------------------------------------------------------
WIDE = 256  # 65k-262k entries per matrix: sample std within about 0.5 %


def wide_model(baseline: str = "layernorm", n_layers: int = 2, preset: str = "gpt2",
               init: str = "shared") -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig.from_preset(preset, d_model=WIDE, n_layers=n_layers, n_heads=4, context_length=64, init=init)
    return build_model(baseline, cfg)


def std(t: torch.Tensor) -> float:
    return float(t.detach().double().std())


def role_linears(model: Transformer) -> dict[str, list[nn.Linear]]:
    """Branch linears by role, found by module path (not by the model's own role table)."""
    roles: dict[str, list[nn.Linear]] = {"qkv": [], "attn_out": [], "mlp_in": [], "mlp_out": []}
    for block in model.blocks:
        roles["qkv"].append(block.attn.qkv)
        roles["attn_out"].append(block.attn.proj)
        roles["mlp_in"] += [getattr(block.mlp, n) for n in ("fc1", "fc1_g", "fc1_x") if hasattr(block.mlp, n)]
        roles["mlp_out"].append(block.mlp.fc2)
    return roles


@pytest.mark.parametrize("n_layers", [2, 6])
def test_shared_gpt2_init_std_per_role_with_depth_scaled_output_projections(n_layers: int) -> None:
    model = wide_model(n_layers=n_layers)
    out_std = INIT_STD / math.sqrt(2 * n_layers)  # 0.01 at 2 layers, 0.00577 at 6
    want = {"qkv": INIT_STD, "attn_out": out_std, "mlp_in": INIT_STD, "mlp_out": out_std}
    for role, linears in role_linears(model).items():
        for linear in linears:
            assert std(linear.weight) == pytest.approx(want[role], rel=0.03), role
            assert float(linear.weight.detach().mean()) == pytest.approx(0.0, abs=want[role] / 50)
            assert torch.count_nonzero(linear.bias) == 0, role
    assert std(model.tok_emb.weight) == pytest.approx(INIT_STD, rel=0.03)
    assert std(model.pos_emb) == pytest.approx(INIT_STD, rel=0.03)
    assert std(model.head.weight) == pytest.approx(INIT_STD, rel=0.03)
    for _, _, _, norm in model.norm_sites():  # LayerNorm keeps gamma 1, beta 0
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


def test_depth_scaling_shows_between_two_depths() -> None:
    shallow, deep = wide_model(n_layers=2), wide_model(n_layers=6)
    for role in ("attn_out", "mlp_out"):
        ratio = std(role_linears(shallow)[role][0].weight) / std(role_linears(deep)[role][0].weight)
        assert ratio == pytest.approx(math.sqrt(6 / 2), rel=0.03), role
    ratio = std(role_linears(shallow)["qkv"][0].weight) / std(role_linears(deep)["qkv"][0].weight)
    assert ratio == pytest.approx(1.0, rel=0.03)


def test_shared_init_gives_the_gpt2_rule_to_a_baseline_whose_paper_rule_differs() -> None:
    """SkipInit trains under Haiku's fan-in rule (``paper``); ``shared`` must give it GPT-2's."""
    model = wide_model("skipinit", n_layers=2, init="shared")
    roles = role_linears(model)
    assert std(roles["qkv"][0].weight) == pytest.approx(INIT_STD, rel=0.03)
    assert std(roles["mlp_out"][1].weight) == pytest.approx(INIT_STD / 2, rel=0.03)
    assert std(model.tok_emb.weight) == pytest.approx(INIT_STD, rel=0.03)


def test_llama_rule_is_0_02_everywhere_without_depth_scaling() -> None:
    model = wide_model(n_layers=2, preset="llama", init="paper")  # layernorm, LLaMA flavour: rule llama
    for role, linears in role_linears(model).items():
        for linear in linears:
            assert std(linear.weight) == pytest.approx(INIT_STD, rel=0.03), role
            assert linear.bias is None
    assert std(model.tok_emb.weight) == pytest.approx(INIT_STD, rel=0.03)


def truncated_std(cut: float) -> float:
    """Std of a standard normal truncated to [-cut, cut]: sqrt(1 - 2 cut phi(cut) / (2 Phi(cut) - 1))."""
    phi = math.exp(-cut * cut / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(cut / math.sqrt(2))
    return math.sqrt(1 - 2 * cut * phi / mass)


def test_lecun_rule_is_fan_in_truncated_normal_and_a_truncated_unit_embedding() -> None:
    """Haiku's default (SkipInit, NF): std 1/sqrt(fan_in) cut at +-2 std, so the realised std is
    0.8796 / sqrt(fan_in); the token embedding N(0, 1) cut at +-2 (realised std 0.8796)."""
    model = wide_model("skipinit", n_layers=2, init="paper")
    factor = truncated_std(2.0)
    assert factor == pytest.approx(0.87962566, rel=1e-6)
    for role, linears in role_linears(model).items():
        for linear in linears:
            fan_in = linear.weight.shape[1]
            assert std(linear.weight) == pytest.approx(factor / math.sqrt(fan_in), rel=0.03), role
            assert float(linear.weight.detach().abs().max()) <= 2 / math.sqrt(fan_in) + 1e-7
    assert std(model.tok_emb.weight) == pytest.approx(factor, rel=0.03)
    assert std(model.pos_emb) == pytest.approx(INIT_STD, rel=0.03)


def test_xavier_rule_is_uniform_with_fan_average_variance() -> None:
    """ReZero's tutorial: Xavier-uniform, std sqrt(2 / (fan_in + fan_out)); embedding U(-0.1, 0.1)."""
    model = wide_model("layernorm", n_layers=2)
    with torch.no_grad():
        NETWORK_INITS["xavier"](model)
    for role, linears in role_linears(model).items():
        for linear in linears:
            fan_out, fan_in = linear.weight.shape
            bound = math.sqrt(6 / (fan_in + fan_out))
            assert std(linear.weight) == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.03), role
            assert float(linear.weight.detach().abs().max()) <= bound
    for weight in (model.tok_emb.weight, model.head.weight):
        assert std(weight) == pytest.approx(0.1 / math.sqrt(3), rel=0.03)


def test_fairseq_rule_is_xavier_uniform_zero_biases_and_normal_embeddings() -> None:
    """fairseq's Transformer (DeepNorm's and Admin's code): Xavier-uniform matrices (q/k/v as one), zero
    biases, token embedding, positions and head N(0, d^-1/2)."""
    model = wide_model("layernorm", n_layers=2)
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(1.0)  # every value the rule must redraw
        NETWORK_INITS["fairseq"](model)
    for role, linears in role_linears(model).items():
        for linear in linears:
            fan_out, fan_in = linear.weight.shape
            assert std(linear.weight) == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.03), role
            assert float(linear.weight.detach().abs().max()) <= math.sqrt(6 / (fan_in + fan_out))
            assert linear.bias is not None and torch.all(linear.bias == 0), role
    for weight in (model.tok_emb.weight, model.head.weight, model.pos_emb):
        assert std(weight) == pytest.approx(WIDE ** -0.5, rel=0.03)
        assert float(weight.detach().mean()) == pytest.approx(0.0, abs=0.01)


def test_fairseq_rule_on_a_vit_is_timms() -> None:
    cfg = ModelConfig(task="vit", d_model=32, n_layers=2, n_heads=4, image_size=8, patch_size=2, in_chans=1,
                      num_classes=10)
    states = []
    for rule in ("fairseq", "timm"):
        model = build_model("layernorm", cfg)
        with torch.no_grad():
            for param in model.parameters():
                param.fill_(1.0)
            torch.manual_seed(5)
            NETWORK_INITS[rule](model)
        states.append(model.state_dict())
    assert states[0].keys() == states[1].keys()
    for name in states[0]:
        torch.testing.assert_close(states[0][name], states[1][name], rtol=0, atol=0, msg=name)
    assert any(float(v.std()) > 0 for v in states[0].values() if v.ndim == 2)  # the rule did redraw


# ---- norm eps ---------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["gpt2", "llama"])
@pytest.mark.parametrize(("baseline", "kind", "eps"), [("layernorm", nn.LayerNorm, LN_EPS),
                                                       ("rmsnorm", nn.RMSNorm, RMS_EPS)])
def test_norm_sites_have_the_documented_eps(preset: str, baseline: str, kind: type, eps: float) -> None:
    model = build_model(baseline, tiny_config(preset))
    sites = list(model.norm_sites())
    assert len(sites) == 2 * model.config.n_layers + 1
    x = torch.randn(3, model.config.d_model, generator=torch.Generator().manual_seed(0)) * 1e-3  # var 1e-6
    for _, _, name, norm in sites:
        assert type(norm) is kind and norm.eps == eps, name
        # The eps acts: at input variance ~1e-6 the output's per-token variance is var / (var + eps).
        centred = x - x.mean(-1, keepdim=True) if kind is nn.LayerNorm else x
        var = centred.double().square().mean(-1, keepdim=True)
        with torch.no_grad():
            assert norm(x).double() == pytest.approx((centred.double() / torch.sqrt(var + eps)), rel=1e-4, abs=1e-6)


# ---- NF: sigma_0^2 and the 1/beta schedule ----------------------------------------------------
def nf_model(init: str, seed: int = 0, **hparams: Any) -> Transformer:
    torch.manual_seed(seed)
    return build_model("nf", dataclasses.replace(tiny_config(), init=init), **hparams)


def inv_betas(model: Transformer) -> list[float]:
    """1/beta of every branch in forward order, then the final site's scale."""
    branch: list[float] = []
    for block in model.blocks:
        branch += [float(block.res_attn.inv_beta), float(block.res_mlp.inv_beta)]
    return branch + [float(model.norm_final.scale)]


@pytest.mark.parametrize("init", ["shared", "paper"])
@pytest.mark.parametrize("alpha", [NF_ALPHA, 0.5])
def test_nf_inverse_betas_follow_sigma0_squared_plus_k_alpha_squared(init: str, alpha: float) -> None:
    """sigma_0^2 is the variance of the embedding output at init: token table plus positions (the
    stream is tok_emb[id] + pos_emb[t], independent entries). The stream entering branch k (and, k = 2L,
    the final site) has variance sigma_0^2 + k alpha^2, and the branch sees it divided by its std."""
    model = nf_model(init, alpha=alpha)
    tok = model.tok_emb.weight.detach().numpy().astype(np.float64)
    pos = model.pos_emb.detach().numpy().astype(np.float64)
    sigma0_sq = tok.var() + pos.var()
    if init == "shared":
        assert sigma0_sq == pytest.approx(2 * INIT_STD**2, rel=0.15)  # two N(0, 0.02) tables
    else:
        assert sigma0_sq == pytest.approx(truncated_std(2.0) ** 2 + INIT_STD**2, rel=0.1)  # hk.Embed's N(0, 1) cut at 2
    want = [(sigma0_sq + k * alpha**2) ** -0.5 for k in range(2 * model.config.n_layers + 1)]
    assert inv_betas(model) == pytest.approx(want, rel=1e-3)


# Hand-derived for tiny_config() (d 32, 2 layers, context 16, GPT-2 flavour), seed 0, alpha 0.2:
# shared: Var(tok_emb) = 4.0378e-4, Var(pos_emb) = 4.1648e-4 -> sigma_0^2 = 8.2026e-4, and
# 1/beta = 1/sqrt(8.2026e-4 + k * 0.04) for k = 0..4. paper (lecun): Var(tok_emb) = 0.77430,
# Var(pos_emb) = 4.3475e-4 -> sigma_0^2 = 0.77473. With sigma_0^2 forced to 1 both would read
# 1/sqrt(1 + 0.04 k) = [1.0, 0.981, 0.962, 0.945, 0.928].
NF_INV_BETAS = {
    "shared": [34.916, 4.9497, 3.5177, 2.8770, 2.4936],
    "paper": [1.1361, 1.1076, 1.0815, 1.0574, 1.0343],
}


@pytest.mark.parametrize("init", ["shared", "paper"])
def test_nf_inverse_betas_literal_for_one_config_and_seed(init: str) -> None:
    got = inv_betas(nf_model(init, seed=0))
    assert got == pytest.approx(NF_INV_BETAS[init], rel=2e-3)
    assert got != pytest.approx([(1 + 0.04 * k) ** -0.5 for k in range(5)], rel=0.05)


@pytest.mark.parametrize("init", ["shared", "paper"])
def test_nf_first_branch_sees_unit_variance_and_later_ones_at_most_that(init: str) -> None:
    """The point of 1/beta: with every skip gain at 1 (the "as-if g = 1" bookkeeping), the input of
    the first branch has unit variance, and attention's token averaging keeps later ones below it."""
    model = nf_model(init)
    ids = tiny_batch(model.config, batch=32)
    seen: list[float] = []
    with torch.no_grad():
        for _, _, _, res in model.residual_sites():
            res.skip_gain.fill_(1.0)
        x = model.embed(ids)
        for block in model.blocks:
            for res, branch in ((block.res_attn, block.attn), (block.res_mlp, block.mlp)):
                u = res.branch_input(x)
                seen.append(float(u.var()))
                x = res.combine(x, branch(u))
    assert seen[0] == pytest.approx(1.0, rel=0.15), seen
    assert all(v <= 1.15 for v in seen), seen


# ---- the invariants contract check of layernorm and rmsnorm ------------------------------------
@pytest.mark.parametrize("baseline", ["layernorm", "rmsnorm"])
def test_invariants_check_passes_on_the_built_models(baseline: str) -> None:
    """The contract's ``invariants`` row (``baselines check``), on both flavours, as check_baseline runs it."""
    for preset in ("gpt2", "llama"):
        config = tiny_config(preset)
        torch.manual_seed(0)
        assert CHECKS["invariants"](build_model(baseline, config), tiny_batch(config)) == "", preset


def broken_gamma(model: Transformer) -> str:
    model.blocks[1].norm_mlp.weight.data.fill_(1.5)
    return "blocks.1.norm_mlp"


def broken_eps(model: Transformer) -> str:
    model.blocks[0].norm_attn.eps = 1e-3
    return "blocks.0.norm_attn"


def missing_norm(model: Transformer) -> str:
    model.norm_final = nn.Identity()
    return "norm_final"


def swapped_kind(model: Transformer) -> str:
    other = nn.RMSNorm if isinstance(model.blocks[0].norm_attn, nn.LayerNorm) else nn.LayerNorm
    model.blocks[0].norm_attn = other(model.config.d_model, eps=model.blocks[0].norm_attn.eps)
    return "blocks.0.norm_attn"


@pytest.mark.parametrize("baseline", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("breakage", [broken_gamma, broken_eps, missing_norm, swapped_kind])
def test_invariants_check_catches_a_site_that_is_not_the_documented_norm(baseline: str, breakage: Any) -> None:
    torch.manual_seed(0)
    model = build_model(baseline, tiny_config())
    batch = tiny_batch(model.config)
    assert model.baseline.check_init(model, batch) == []
    site = breakage(model)
    problems = model.baseline.check_init(model, batch)
    assert len(problems) == 1 and problems[0].startswith(site), problems


def test_timm_rule_for_the_vit_is_0_02_linears_zero_biases_and_the_default_patch_convolution() -> None:
    """timm's ViT init (layernorm on the ViT, ``model.init: paper``): every Linear N(0, 0.02) truncated at
    +-2 (absolute, so the realised std is 0.02), zero biases, positions 0.02, and the patch convolution at
    PyTorch's default, kaiming-uniform with a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std
    1/sqrt(3 fan_in)."""
    torch.manual_seed(0)
    cfg = ModelConfig(task="vit", d_model=WIDE, n_layers=2, n_heads=4, image_size=32, patch_size=4, in_chans=3,
                      num_classes=10, init="paper")
    model = build_model("layernorm", cfg)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 * 4 + 1  # qkv, attention out, MLP in and out per block, the head
    for linear in linears:
        if linear.weight.numel() >= 10_000:
            assert std(linear.weight) == pytest.approx(INIT_STD, rel=0.03)
        assert float(linear.weight.detach().abs().max()) <= 2.0  # timm cuts at +-2, absolute
        if linear.bias is not None:
            assert not linear.bias.detach().any()
    assert std(model.pos_emb) == pytest.approx(INIT_STD, rel=0.05)
    conv = model.patch_embed.proj
    fan_in = conv.weight[0].numel()
    assert std(conv.weight) == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.05)
    assert float(conv.weight.detach().abs().max()) <= 1 / math.sqrt(fan_in)
