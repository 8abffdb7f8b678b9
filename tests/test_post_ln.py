"""The post-LN stabilisers, DeepNorm and Admin, against their papers' and official code's rules at init.

- DeepNorm (``microsoft/torchscale``, decoder-only): ``LN(alpha x + F(x))``, alpha = (2N)^(1/4); Xavier-normal
  with gain beta = (8N)^(-1/4) on v, the output projection and the MLP, gain 1 on q and k; no final LayerNorm.
- Admin (``LiyuanLucasLiu/Transformer-Clinic``): ``LN(omega_i x + F_i(x))`` with a per-channel omega set by the
  profiling recurrence omega_1 = 1, omega_{i+1} = sqrt(Var[omega_i x_{i-1}] + Var[F_i(x_{i-1})]), written out
  here a second time; admin-torch's closed form sqrt((n+1)/ln(n+1) - 1).

Usage: ``.venv/bin/python -m pytest -q tests/test_post_ln.py``
"""

from __future__ import annotations

import math
import sys

import pytest
import torch
from torch import nn

from normfree_bench import ModelConfig, build_model, get_baseline
from normfree_bench.config import load_run_config, parse_set
from normfree_bench.core.layers import SkipScaledResidual
from normfree_bench.training.train import train_one

CFG = ModelConfig(d_model=64, n_layers=6, n_heads=4, context_length=32)
ADMIN = sys.modules[get_baseline("admin").__module__]  # the plugin file's module, as the registry loaded it


def fresh(name: str, config: ModelConfig = CFG, **hparams) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, config, **hparams)
    model.eval()
    return model


def ids(config: ModelConfig = CFG, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (4, config.n_tokens), generator=torch.Generator().manual_seed(seed))


# ---- DeepNorm ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_layers, alpha, beta", [(1, 1.189207, 0.594604), (6, 1.861210, 0.379918),
                                                    (12, 2.213364, 0.319472), (18, 2.449490, 0.288675)])
def test_deepnorm_alpha_and_beta_are_the_decoder_only_formulas(n_layers: int, alpha: float, beta: float) -> None:
    model = fresh("deepnorm", ModelConfig(d_model=64, n_layers=n_layers, n_heads=4, context_length=32))
    assert math.isclose(model.baseline.alpha, alpha, rel_tol=1e-5) and math.isclose(model.baseline.beta, beta,
                                                                                    rel_tol=1e-5)
    gains = {res.gain.item() for *_, res in model.residual_sites()}
    assert len(gains) == 1 and math.isclose(gains.pop(), alpha, rel_tol=1e-6)


def test_deepnorm_is_post_ln_with_the_skip_scaled() -> None:
    model = fresh("deepnorm")
    x = model.embed(ids())
    a = model.baseline.alpha
    with torch.no_grad():
        for block in model.blocks:
            want = block.norm_attn(a * x + block.attn(x))
            want = block.norm_mlp(a * want + block.mlp(want))
            torch.testing.assert_close(block(x), want, rtol=0, atol=0)
            x = want
    assert isinstance(model.norm_final, nn.Identity) and all(isinstance(m, nn.LayerNorm)
                                                             for *_, m in model.norm_sites())
    assert all(m.eps == 1e-5 for *_, m in model.norm_sites())


def test_deepnorm_init_scales_v_out_and_mlp_by_beta_and_leaves_q_and_k_at_gain_one() -> None:
    model = fresh("deepnorm")
    d, beta = CFG.d_model, model.baseline.beta
    for block in model.blocks:
        q, k, v = block.attn.qkv.weight.split(d)
        for w, gain in ((q, 1.0), (k, 1.0), (v, beta), (block.attn.proj.weight, beta), (block.mlp.fc1.weight, beta),
                        (block.mlp.fc2.weight, beta)):
            want = gain * math.sqrt(2.0 / sum(w.shape))
            assert abs(w.std().item() / want - 1) < 0.05, (w.shape, gain)
        assert all(b.abs().max() == 0 for b in (block.attn.qkv.bias, block.attn.proj.bias, block.mlp.fc1.bias,
                                                 block.mlp.fc2.bias))
    assert model.baseline.check_init(model, ids()) == []


@pytest.mark.parametrize("break_it, expected", [
    (lambda m: m.blocks[2].res_mlp.gain.fill_(1.0), "blocks.2.res_mlp: the skip must be scaled by alpha"),
    (lambda m: m.blocks[1].attn.qkv.weight[128:].mul_(2.0), "block 1 qkv rows 128:192"),
    (lambda m: m.blocks[0].attn.qkv.weight[:64].mul_(0.38), "block 0 qkv rows 0:64"),
    (lambda m: m.blocks[3].mlp.fc2.weight.mul_(1.3), "block 3 mlp_out"),
    (lambda m: m.blocks[0].attn.proj.bias.fill_(0.1), "block 0 attn_out: the bias must start at 0"),
    (lambda m: m.blocks[0].norm_mlp.weight.fill_(2.0), "blocks.0.norm_mlp: LayerNorm is not the identity-affine"),
])
def test_deepnorm_check_init_names_each_broken_rule(break_it, expected: str) -> None:
    model = fresh("deepnorm")
    with torch.no_grad():
        break_it(model)
    problems = model.baseline.check_init(model, ids())
    assert len(problems) == 1 and problems[0].startswith(expected), problems


# ---- Admin ---------------------------------------------------------------------------------------------------
def profile_by_hand(model: nn.Module, inputs: torch.Tensor) -> list[float]:
    """Transformer-Clinic's ``adaptive-profiling`` pass, on a copy whose omegas are reset to 1 first."""
    for *_, res in model.residual_sites():
        res.gain.data.fill_(1.0)
    with torch.no_grad():
        x = model.embed(inputs)
        ratio, omegas = 1.0, []
        for block in model.blocks:
            for norm, f, res in ((block.norm_attn, block.attn, block.res_attn), (block.norm_mlp, block.mlp,
                                                                                  block.res_mlp)):
                res.gain.fill_(ratio)
                omegas.append(ratio)
                residual = x * ratio
                out = f(x)
                ratio = float(torch.sqrt(residual.flatten().var(unbiased=False) + out.flatten().var(unbiased=False)))
                x = norm(residual + out)
    return omegas


def test_admin_omegas_are_the_profiling_recurrence() -> None:
    model = fresh("admin")
    got = [res.gain[0].item() for *_, res in model.residual_sites()]
    for *_, res in model.residual_sites():
        assert isinstance(res, SkipScaledResidual) and isinstance(res.gain, nn.Parameter)
        assert res.gain.shape == (CFG.d_model,) and torch.all(res.gain == res.gain[0])
    want = profile_by_hand(fresh("admin"), ADMIN.profiling_batch(CFG))
    assert got[0] == 1.0 and len(got) == 2 * CFG.n_layers
    assert got == pytest.approx(want, rel=1e-5)
    assert all(b > a for a, b in zip(got, got[1:]))  # each branch adds variance to the skip


def test_admin_omega_squared_sums_the_variances_before_it() -> None:
    """The paper's reading: after the first LayerNorm, omega_i^2 ~ Var[x_0] + sum_{j<i} Var[F_j]."""
    model = fresh("admin")
    rows = ADMIN.profile_omegas(model, ADMIN.profiling_batch(CFG), write=False)
    var_x0 = model.embed(ADMIN.profiling_batch(CFG)).var(unbiased=False).item()
    total = var_x0
    for i, (omega, _, branch_var) in enumerate(rows):
        if i >= 1:
            assert omega ** 2 == pytest.approx(total, rel=0.02), i
        total += branch_var


def test_admin_logn_is_admin_torchs_closed_form() -> None:
    assert ADMIN.logn_omega(24) == pytest.approx(math.sqrt(25 / math.log(25) - 1))
    assert ADMIN.logn_omega(24) == pytest.approx(2.60129, abs=1e-5)  # 12 layers: n = 24 sublayers
    model = fresh("admin", omega_init="logn")
    assert {round(res.gain[0].item(), 6) for *_, res in model.residual_sites()} == {round(ADMIN.logn_omega(12), 6)}
    assert model.baseline.check_init(model, ids()) == []


def test_admin_logn_sites_match_admin_torchs_own_module() -> None:
    """admin-torch's OmegaResidual (the official package, a dev dependency) beside ours at every site: the same
    learnable per-channel omega and the same ``x * omega + F(x)``, forward and backward."""
    import admin_torch

    model = fresh("admin", omega_init="logn")
    official = admin_torch.as_module(2 * len(model.blocks), as_parameter=True, embed_dim=CFG.d_model)
    gen = torch.Generator().manual_seed(3)
    x, fx = (torch.randn(2, 5, CFG.d_model, generator=gen) for _ in range(2))
    sites = [res for *_, res in model.residual_sites()]
    assert len(sites) == 12
    for res in sites:
        assert isinstance(res.gain, nn.Parameter) and isinstance(official.omega, nn.Parameter)
        torch.testing.assert_close(res.gain.detach(), official.omega.detach(), rtol=0, atol=1e-7)
        ours, theirs = res.combine(x, fx), official(x, fx)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        (ours * fx).sum().backward()
        (theirs * fx).sum().backward()
        torch.testing.assert_close(res.gain.grad, official.omega.grad, rtol=1e-6, atol=1e-5)
        res.gain.grad, official.omega.grad = None, None


def test_admin_profiling_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(0)
    build_model("admin", CFG)
    after_profile = torch.rand(3)
    torch.manual_seed(0)
    build_model("admin", CFG, omega_init="logn")
    torch.testing.assert_close(after_profile, torch.rand(3), rtol=0, atol=0)


@pytest.mark.parametrize("break_it, expected", [
    (lambda m: m.blocks[0].res_attn.gain.fill_(1.3), "blocks.0.res_attn: the first omega must be exactly 1"),
    (lambda m: m.blocks[3].res_mlp.gain.mul_(1.5), "blocks.3.res_mlp: omega"),
    (lambda m: m.blocks[2].res_attn.gain[5].fill_(0.0), "blocks.2.res_attn: omega must start as one value"),
    (lambda m: setattr(m.blocks[1].norm_mlp, "eps", 0.5),
     "blocks.1.norm_mlp: LayerNorm is not the identity-affine layernorm with eps 1e-05"),
])
def test_admin_check_init_names_each_broken_rule(break_it, expected: str) -> None:
    model = fresh("admin")
    with torch.no_grad():
        break_it(model)
    problems = model.baseline.check_init(model, ids())
    assert problems and problems[0].startswith(expected), problems


def test_admin_passes_on_a_real_batch_and_both_train() -> None:
    model = fresh("admin")
    assert model.baseline.check_init(model, ids(seed=7)) == []
    for name in ("admin", "deepnorm"):
        cfg = load_run_config(overrides=parse_set([
            f"baseline={name}", "model.d_model=32", "model.n_layers=2", "model.context_length=32",
            "data.batch_size=4", "data.val_windows=4", "train.steps=20", "train.warmup_steps=2",
            "train.eval_interval=10", "train.lr=0.003", "train.threads=1"]))
        result = train_one(cfg)
        assert not result.diverged and result.final_val_loss < result.l0, name  # learns past a uniform guess
