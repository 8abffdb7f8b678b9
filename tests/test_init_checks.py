"""Each baseline's ``check_init`` fails when the one invariant a condition guards is broken.

tests/test_baselines.py and tests/test_recipe.py show that correctly built models pass their checks; this
file builds each model correctly, perturbs exactly the thing one condition of ``check_init`` guards (a
zero-initialised last layer, a skip gain, NF's 1/beta, an MLP gain, gamma, beta, a shift, ...) and asserts
that the check names it, with the exact list of problems where it is deterministic; at the documented
tolerances it checks both sides. It also checks what ``op_block``'s ``norm`` and ``qk_norm`` hooks build.

Usage: ``.venv/bin/python -m pytest -q tests/test_init_checks.py``
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from normfree_bench import ModelConfig, Transformer, build_model, get_baseline
from normfree_bench.core.invariants import branches_are_silent
from normfree_bench.core.layers import PointwiseNorm, Scale
from normfree_bench.models.contract import tiny_batch, tiny_config

PRESETS = ["gpt2", "llama"]
SILENT = "changes the residual stream at init"  # branches_are_silent's message, after "block {i} "


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The models are tiny: one thread is faster than two fighting over busy cores (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fresh(name: str, preset: str = "gpt2", **hparams: Any) -> tuple[Transformer, torch.Tensor]:
    """A correctly built tiny model of baseline ``name`` (seed 0) and its batch."""
    config = tiny_config(preset)
    torch.manual_seed(0)
    return build_model(name, config, **hparams), tiny_batch(config)


def problems_of(model: Transformer, batch: torch.Tensor) -> list[str]:
    return model.baseline.check_init(model, batch)


def silent(block: int) -> str:
    return f"block {block} {SILENT}"


# ---- the unperturbed models pass --------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name, hparams", [
    ("fixup", {}), ("rezero", {}), ("rezero", {"per_branch": True}), ("skipinit", {}), ("nf", {}),
    ("dyt", {}), ("derf", {}), ("op_block", {}), ("op_block", {"trainable_gains": True}),
])
def test_correctly_built_models_pass(name: str, hparams: dict[str, Any], preset: str) -> None:
    model, batch = fresh(name, preset, **hparams)
    assert problems_of(model, batch) == []


# ---- Fixup ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("block", [0, 1])
@pytest.mark.parametrize("role", ["attn_out", "mlp_out"])
def test_fixup_catches_one_nonzero_entry_in_a_last_layer(role: str, block: int, preset: str) -> None:
    """One nonzero entry in a zero-init output projection; the branch's multiplier is set to 0 so that
    the block stays silent and only the zero-init condition can report it."""
    model, batch = fresh("fixup", preset)
    blk = model.blocks[block]
    linear, res = (blk.attn.proj, blk.res_attn) if role == "attn_out" else (blk.mlp.fc2, blk.res_mlp)
    with torch.no_grad():
        linear.weight[0, 0] = 1e-3
        res.scale.scale.fill_(0.0)
    branch = "attn" if role == "attn_out" else "mlp"
    assert problems_of(model, batch) == [f"block {block} {role} must be zero-initialised",
                                         f"blocks.{block}.res_{branch}: the scalar multiplier must start at 1, got 0"]


def test_fixup_reports_a_nonzero_last_layer_and_the_block_it_wakes() -> None:
    model, batch = fresh("fixup")
    with torch.no_grad():
        model.blocks[1].mlp.fc2.weight.normal_(std=1e-3)
    problems = problems_of(model, batch)
    assert len(problems) == 2 and problems[0].startswith(silent(1)), problems
    assert problems[1] == "block 1 mlp_out must be zero-initialised"


@pytest.mark.parametrize("value", [1e-7, 1e-3])
@pytest.mark.parametrize("block", [0, 1])
@pytest.mark.parametrize("which", ["attn", "mlp"])
def test_fixup_catches_a_branch_that_is_not_silent(which: str, block: int, value: float) -> None:
    """A nonzero output bias (the weights stay zero): only the silence condition sees it, at any size."""
    model, batch = fresh("fixup")  # gpt2: the linears have biases
    linear = model.blocks[block].attn.proj if which == "attn" else model.blocks[block].mlp.fc2
    with torch.no_grad():
        linear.bias[0] = value
    problems = problems_of(model, batch)
    assert len(problems) == 1 and problems[0].startswith(silent(block)), problems


def _fixup_with_embedding_variance(preset: str, target: float) -> tuple[Transformer, torch.Tensor]:
    """Token and position embeddings scaled by one factor, so that the embedded stream has variance target."""
    model, batch = fresh("fixup", preset)
    factor = math.sqrt(target / model.embed(batch).var().item())
    with torch.no_grad():
        for emb in model.embeddings():
            (emb if isinstance(emb, nn.Parameter) else emb.weight).mul_(factor)
    assert model.embed(batch).var().item() == pytest.approx(target, rel=1e-5)
    return model, batch


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("target, ok", [(0.79, False), (0.805, True), (1.245, True), (1.26, False),
                                        (0.25, False), (4.0, False)])
def test_fixup_embedded_stream_variance_band(preset: str, target: float, ok: bool) -> None:
    """The LM's embedded stream must have variance in [0.8, 1.25]; just inside passes, outside fails."""
    model, batch = _fixup_with_embedding_variance(preset, target)
    problems = problems_of(model, batch)
    if ok:
        assert problems == []
    else:
        assert problems == [f"the embedded stream has variance {target:.3f}, not about 1"]


def test_fixup_vit_does_not_check_the_embedding_variance() -> None:
    """The unit-variance rule is the LM's (token table times sqrt(d)); a ViT's patch stream is not held to it."""
    config = ModelConfig(task="vit", d_model=32, n_layers=2, n_heads=4, image_size=8, patch_size=2)
    torch.manual_seed(0)
    model = build_model("fixup", config)
    images = torch.randn(4, config.in_chans, config.image_size, config.image_size)
    assert not 0.8 <= model.embed(images).var().item() <= 1.25  # it would fail the LM rule
    assert problems_of(model, images) == []


def _fixup_scalar(model: Transformer, which: str) -> torch.Tensor:
    block = model.blocks[0]
    return {"branch bias": block.res_mlp.shift.bias, "multiplier": block.res_attn.scale.scale,
            "activation bias": block.mlp.act[0].bias, "shift0": model.norm_final.bias,
            "head": model.head.weight}[which]


# Fixup's scalar biases (0), multipliers (1), final shift0 (0) and zero head: documented init values that the
# zero last layers would hide from the silence check, so check_init compares each with its init.
@pytest.mark.parametrize("which", ["branch bias", "multiplier", "activation bias", "shift0", "head"])
def test_fixup_catches_a_scalar_or_head_off_its_init(which: str) -> None:
    model, batch = fresh("fixup")
    with torch.no_grad():
        _fixup_scalar(model, which).add_(0.5)
    assert problems_of(model, batch)


# ---- ReZero and SkipInit ----------------------------------------------------------------------------
@pytest.mark.parametrize("value", [1e-6, 0.1, -1.0])
@pytest.mark.parametrize("block", [0, 1])
def test_rezero_catches_a_nonzero_layer_alpha(block: int, value: float) -> None:
    model, batch = fresh("rezero")
    res = model.blocks[block].res_attn
    assert res.gain is model.blocks[block].res_mlp.gain  # one alpha per layer
    with torch.no_grad():
        res.gain.fill_(value)
    problems = problems_of(model, batch)
    assert len(problems) == 1 and problems[0].startswith(silent(block)), problems


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("branch", ["attn", "mlp"])
def test_rezero_per_branch_catches_one_nonzero_alpha(branch: str, preset: str) -> None:
    model, batch = fresh("rezero", preset, per_branch=True)
    with torch.no_grad():
        getattr(model.blocks[1], f"res_{branch}").gain.fill_(0.1)
    problems = problems_of(model, batch)
    assert len(problems) == 1 and problems[0].startswith(silent(1)), problems


@pytest.mark.parametrize("value", [1e-6, 0.1])
@pytest.mark.parametrize("block", [0, 1])
@pytest.mark.parametrize("branch", ["attn", "mlp"])
def test_skipinit_catches_one_nonzero_gain(branch: str, block: int, value: float) -> None:
    model, batch = fresh("skipinit")
    res = getattr(model.blocks[block], f"res_{branch}")
    assert res.gain is not getattr(model.blocks[block], "res_mlp" if branch == "attn" else "res_attn").gain
    with torch.no_grad():
        res.gain.fill_(value)
    problems = problems_of(model, batch)
    assert len(problems) == 1 and problems[0].startswith(silent(block)), problems


def test_skipinit_reports_every_block_that_is_not_silent() -> None:
    model, batch = fresh("skipinit", "llama")
    with torch.no_grad():
        model.blocks[0].res_mlp.gain.fill_(0.1)
        model.blocks[1].res_attn.gain.fill_(0.1)
    problems = problems_of(model, batch)
    assert len(problems) == 2 and problems[0].startswith(silent(0)) and problems[1].startswith(silent(1))


@pytest.mark.parametrize("name, hparams", [("rezero", {"alpha_init": 0.1}),
                                           ("rezero", {"alpha_init": 0.1, "per_branch": True}),
                                           ("skipinit", {"gain_init": 0.1}), ("nf", {"skip_gain_init": 0.5})])
def test_a_nonzero_gain_init_is_not_held_to_silent_branches(name: str, hparams: dict[str, Any]) -> None:
    """With a nonzero documented init the branches speak at init, and the silence check is skipped."""
    model, batch = fresh(name, **hparams)
    assert len(branches_are_silent(model, batch)) == 2  # every block changes the stream
    assert problems_of(model, batch) == []


# With a nonzero documented init, check_init compares every gain with that init.
@pytest.mark.parametrize("name, hparams", [("rezero", {"alpha_init": 0.1}), ("skipinit", {"gain_init": 0.1})])
def test_a_gain_off_its_nonzero_init_is_caught(name: str, hparams: dict[str, Any]) -> None:
    model, batch = fresh(name, **hparams)
    with torch.no_grad():
        model.blocks[1].res_mlp.gain.fill_(0.5)
    assert problems_of(model, batch)


# ---- NF -----------------------------------------------------------------------------------------------
def _skip_gains(model: Transformer) -> list[torch.Tensor]:
    return [res.skip_gain.detach().clone() for _, _, _, res in model.residual_sites()]


@pytest.mark.parametrize("init", [0.0, 0.5])
def test_nf_catches_a_skip_gain_that_is_not_zero_and_restores_the_gains(init: float) -> None:
    model, batch = fresh("nf", skip_gain_init=init)
    with torch.no_grad():
        model.blocks[1].res_mlp.skip_gain.fill_(0.1)
    before = _skip_gains(model)
    problems = problems_of(model, batch)
    if init == 0.0:
        assert len(problems) == 1 and problems[0].startswith(silent(1)), problems
    else:
        assert problems == []
    after = _skip_gains(model)  # the check sets every gain to 1 for its measurement, then restores them
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert [g.item() for g in after] == pytest.approx([init, init, init, 0.1])


def _nf_mlp_variance(model: Transformer, block: int) -> float:
    """Block ``block``'s MLP output variance on the unit-variance input the check draws for it (one
    generator seeded 0, one draw per block in order)."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(block + 1):
        z = torch.randn(64, 16, model.config.d_model, generator=generator)
    with torch.no_grad():
        return model.blocks[block].mlp(z).var().item()


@pytest.mark.parametrize("preset, block, target, ok", [
    ("gpt2", 0, 0.69, False), ("gpt2", 0, 0.705, True), ("gpt2", 0, 1.395, True), ("gpt2", 0, 1.41, False),
    ("gpt2", 1, 0.25, False), ("llama", 1, 0.705, True), ("llama", 1, 1.41, False), ("llama", 0, 2.25, False),
])
def test_nf_mlp_variance_band(preset: str, block: int, target: float, ok: bool) -> None:
    """Scaled WS + scaled activation must map unit variance to [0.7, 1.4]: one MLP's fc2 Scaled-WS gain
    is scaled so that its output variance is ``target``; just inside passes, just outside fails."""
    model, batch = fresh("nf", preset)
    fc2 = model.blocks[block].mlp.fc2
    with torch.no_grad():
        fc2.parametrizations.weight[0].gain.mul_(math.sqrt(target / _nf_mlp_variance(model, block)))
    assert _nf_mlp_variance(model, block) == pytest.approx(target, rel=1e-5)
    problems = problems_of(model, batch)
    if ok:
        assert problems == []
    else:
        assert problems == [f"block {block} MLP maps unit variance to {target:.2f}"]


def _nf_ratios(model: Transformer, batch: torch.Tensor) -> list[float]:
    """Stream variance entering each block and the final site, over its NF schedule, with skip gains at 1."""
    gains = [res.skip_gain for _, _, _, res in model.residual_sites()]
    saved = [g.detach().clone() for g in gains]
    with torch.no_grad():
        for g in gains:
            g.fill_(1.0)
        x, streams = model.embed(batch), []
        streams.append(x)
        for block in model.blocks:
            x = block(x)
            streams.append(x)
        for g, s in zip(gains, saved):
            g.copy_(s)
    schedule = model.baseline.expected_variances(model)
    return [s.var().item() / schedule[2 * i] for i, s in enumerate(streams)]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("target, ok", [(1.14, True), (1.16, False)])
def test_nf_stream_above_its_schedule_at_the_embedding(preset: str, target: float, ok: bool) -> None:
    """The stream entering block 0 scaled (a fixed scalar after the embedding) to ``target`` times sigma_0^2:
    up to 1.15x passes, above fails and names block 0."""
    model, batch = fresh("nf", preset)
    ratio0 = _nf_ratios(model, batch)[0]
    model.embed_scale = Scale(math.sqrt(target / ratio0), learnable=False)
    ratios = _nf_ratios(model, batch)
    assert ratios[0] == pytest.approx(target, rel=1e-4)
    assert max(ratios[1:]) < 1.14  # only block 0's stream is near or over the tolerance
    problems = problems_of(model, batch)
    if ok:
        assert problems == []
    else:
        assert problems == [f"stream variance before block 0 is {target:.2f}x its NF schedule (above it)"]


@pytest.mark.parametrize("preset", PRESETS)
def test_nf_stream_above_its_schedule_after_the_blocks(preset: str) -> None:
    """Every branch fed 3x its 1/beta: the streams after block 0 and after block 1 (entering the final site,
    schedule entry 2L) both outgrow the schedule; the stream entering block 0 does not move."""
    model, batch = fresh("nf", preset)
    with torch.no_grad():
        for _, _, _, res in model.residual_sites():
            res.inv_beta.mul_(3.0)
    ratios = _nf_ratios(model, batch)
    assert ratios[0] < 1.0 and min(ratios[1:]) > 1.2
    assert problems_of(model, batch) == [
        f"stream variance before block {i} is {ratios[i]:.2f}x its NF schedule (above it)" for i in (1, 2)]


@pytest.mark.parametrize("preset", PRESETS)
def test_nf_stream_below_its_schedule_passes(preset: str) -> None:
    """The schedule is an upper bound: a stream well below it (branches fed 1/3 of 1/beta) passes."""
    model, batch = fresh("nf", preset)
    with torch.no_grad():
        for _, _, _, res in model.residual_sites():
            res.inv_beta.mul_(1 / 3)
    assert max(_nf_ratios(model, batch)[1:]) < 1.0
    assert problems_of(model, batch) == []


# ---- the point-wise recipe (DyT, Derf, ...) ------------------------------------------------------------
SITES = ["blocks.0.norm_attn", "blocks.1.norm_mlp", "norm_final"]
GAMMA_BETA = "gamma must start at 1 and beta at 0"


def _site(model: Transformer, name: str) -> PointwiseNorm:
    module = model.get_submodule(name)
    assert isinstance(module, PointwiseNorm)
    return module


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("name", ["dyt", "derf", "softsign"])
def test_pointwise_catches_one_gamma_entry_off_one(name: str, site: str, preset: str) -> None:
    model, batch = fresh(name, preset)
    with torch.no_grad():
        _site(model, site).weight[3] = 1.0 + 2.0**-20  # the smallest visible step: no tolerance
    assert problems_of(model, batch) == [f"{site}: {GAMMA_BETA}"]


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("name", ["dyt", "derf"])
def test_pointwise_catches_one_beta_entry_off_zero(name: str, site: str) -> None:
    model, batch = fresh(name, "gpt2")  # beta exists with model.bias
    with torch.no_grad():
        _site(model, site).bias[3] = 1e-6
    assert problems_of(model, batch) == [f"{site}: {GAMMA_BETA}"]


def test_pointwise_gamma_and_beta_wrong_at_one_site_is_one_problem() -> None:
    model, batch = fresh("dyt")
    with torch.no_grad():
        _site(model, "norm_final").weight.fill_(1.5)
        _site(model, "norm_final").bias.fill_(0.1)
    assert problems_of(model, batch) == [f"norm_final: {GAMMA_BETA}"]


def test_pointwise_reports_every_wrong_site() -> None:
    model, batch = fresh("dyt", "llama")
    with torch.no_grad():
        for site in SITES:
            _site(model, site).weight.fill_(0.5)
    assert problems_of(model, batch) == [f"{site}: {GAMMA_BETA}" for site in SITES]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("site", SITES)
def test_derf_catches_a_shift_off_zero(site: str, preset: str) -> None:
    model, batch = fresh("derf", preset)
    with torch.no_grad():
        _site(model, site).shift.fill_(1e-6)
    assert problems_of(model, batch) == [f"{site}: the shift s must start at 0"]


def test_pointwise_layernorm_sites_are_not_checked_as_pointwise() -> None:
    """``sites_with_layernorm`` sites are LayerNorms: they have no alpha or shift, and the check skips them."""
    model, batch = fresh("derf", sites_with_layernorm=["attn", "final"])
    assert isinstance(model.norm_final, nn.LayerNorm) and isinstance(model.blocks[0].norm_attn, nn.LayerNorm)
    with torch.no_grad():
        _site(model, "blocks.1.norm_mlp").shift.fill_(0.5)
    assert problems_of(model, batch) == ["blocks.1.norm_mlp: the shift s must start at 0"]


# The recipe's alpha_0 per site and the sqrt(d) embedding scalar are checked against their init values too.
def test_pointwise_catches_a_wrong_alpha_0() -> None:
    model, batch = fresh("dyt")
    with torch.no_grad():
        _site(model, "blocks.0.norm_attn").alpha.fill_(0.1)
    assert any("blocks.0.norm_attn" in p and "alpha" in p for p in problems_of(model, batch))


def test_pointwise_catches_a_wrong_embedding_scalar() -> None:
    model, batch = fresh("dyt")
    with torch.no_grad():
        model.embed_scale.scale.fill_(1.0)
    assert problems_of(model, batch)


# ---- OP block: its norm and qk_norm hooks and its gains -----------------------------------------------
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("site, layer, is_norm", [
    ("attn", 0, True), ("mlp", 0, False), ("attn", 1, False), ("mlp", 1, False), ("attn", 2, False),
    ("final", 3, True),
])
def test_op_block_norm_hook(preset: str, site: str, layer: int, is_norm: bool) -> None:
    """LayerNorm (eps 1e-5, gamma 1, beta 0 only with model.bias) before layer 0's attention and at the final
    site; no norm anywhere else."""
    config = tiny_config(preset)
    module = get_baseline("op_block")(config).norm(24, site, layer, 3)
    if not is_norm:
        assert type(module) is nn.Identity
        return
    assert type(module) is nn.LayerNorm
    assert module.normalized_shape == (24,) and module.eps == 1e-5
    assert torch.equal(module.weight, torch.ones(24))
    if config.bias:
        assert module.bias is not None and torch.equal(module.bias, torch.zeros(24))
    else:
        assert module.bias is None


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("option, kind", [("rmsnorm", nn.RMSNorm), ("layernorm", nn.LayerNorm),
                                          ("none", nn.Identity)])
def test_op_block_qk_norm_hook(preset: str, option: str, kind: type[nn.Module]) -> None:
    """The ``qk_norm`` hparam: a fresh norm over head_dim with eps 1e-16 per call (q, k, every layer)."""
    config = tiny_config(preset)
    baseline = get_baseline("op_block")(config, qk_norm=option)
    q, k = baseline.qk_norm(8, "q", 1, 2), baseline.qk_norm(8, "k", 1, 2)
    assert type(q) is kind and type(k) is kind and q is not k
    if option == "none":
        return
    assert q.normalized_shape == (8,) and q.eps == 1e-16
    assert torch.equal(q.weight, torch.ones(8)) and q.weight is not k.weight
    if option == "layernorm":
        assert (q.bias is not None) == config.bias
        if config.bias:
            assert torch.equal(q.bias, torch.zeros(8))


@pytest.mark.parametrize("option, kind", [("rmsnorm", nn.RMSNorm), ("layernorm", nn.LayerNorm),
                                          ("none", nn.Identity)])
def test_op_block_model_uses_the_qk_norm_hparam_not_model_qk_norm(option: str, kind: type[nn.Module]) -> None:
    config = ModelConfig.from_preset("gpt2", d_model=32, n_layers=2, n_heads=4, context_length=16,
                                     qk_norm="layernorm" if option != "layernorm" else "none")
    model = build_model("op_block", config, qk_norm=option)
    norms = [n for block in model.blocks for n in (block.attn.q_norm, block.attn.k_norm)]
    assert all(type(n) is kind for n in norms) and len({id(n) for n in norms}) == 4
    if option != "none":
        assert all(n.normalized_shape == (config.head_dim,) and n.eps == 1e-16 for n in norms)


def test_op_block_qk_rmsnorm_normalises_tiny_queries() -> None:
    """With eps 1e-16, q of RMS 1e-3 (as at init) comes out at RMS 1; eps 1e-5 would leave it near 0.3."""
    q_norm = get_baseline("op_block")(tiny_config()).qk_norm(8, "q", 0, 2)
    q = 1e-3 * torch.randn(2, 4, 16, 8, generator=torch.Generator().manual_seed(0))
    rms = q_norm(q).square().mean(dim=-1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-4)


@pytest.mark.parametrize("trainable", [False, True])
@pytest.mark.parametrize("block, branch", [(0, "attn"), (1, "mlp")])
def test_op_block_catches_a_residual_gain_off_its_value(block: int, branch: str, trainable: bool) -> None:
    model, batch = fresh("op_block", trainable_gains=trainable)
    with torch.no_grad():
        getattr(model.blocks[block], f"res_{branch}").gain.fill_(0.21)
    assert problems_of(model, batch) == [f"block {block} {branch}: residual gain must start at 0.2"]


def test_op_block_gain_is_checked_against_the_resid_gain_hparam() -> None:
    model, batch = fresh("op_block", resid_gain=0.1)
    assert problems_of(model, batch) == []
    with torch.no_grad():
        model.blocks[1].res_attn.gain.fill_(0.2)
    assert problems_of(model, batch) == ["block 1 attn: residual gain must start at 0.1"]
