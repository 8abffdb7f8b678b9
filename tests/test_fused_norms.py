"""The norm implementations (``model.norm_impl``: eager, compiled, fused) and the speed suite's new columns.

Usage: ``.venv/bin/python -m pytest tests/test_fused_norms.py -q``  (``-m slow``: torch.compile, Triton)

The fused point-wise Functions (normfree_bench.core.fused) are checked by ``torch.autograd.gradcheck`` in
float64, against the exact formula, and against the eager modules (torch.tanh, torch.erf) in fp32 and bf16
within the tolerances documented in that module; a short training run with ``norm_impl: fused`` follows
the eager run's loss curve. The speed suite's floor columns and ratios are recomputed here from its rows.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

from normfree_bench import build_model
from normfree_bench.config import ModelConfig, RunConfig, config_hash, load_run_config, parse_set
from normfree_bench.core import fused
from normfree_bench.core.fused import fused_pointwise
from normfree_bench.core.layers import PointwiseNorm
from normfree_bench.core.norm_impl import available_impls, implement
from normfree_bench.core.pointwise import CenteredSigmoid, Erf
from normfree_bench.errors import UserError
from normfree_bench.tools.norm_share import attribute
from normfree_bench.tools.speed import SpeedSettings, add_ratios, run_speed
from tests.conftest import cli, private_cache, without_later_keys, write_word_corpus

REPO = Path(__file__).resolve().parents[1]
FORMS = {"tanh": torch.tanh, "sigmoid": lambda u: 2 * torch.sigmoid(u) - 1, "erf": torch.erf}
MODULES = {"tanh": nn.Tanh, "sigmoid": CenteredSigmoid, "erf": Erf}


def params(d: int, bias: bool, shift: bool, dtype: torch.dtype = torch.float64, seed: int = 0) -> list:
    gen = torch.Generator().manual_seed(seed)
    out = [torch.tensor([0.7], dtype=dtype), torch.randn(d, generator=gen, dtype=dtype),
           torch.randn(d, generator=gen, dtype=dtype) if bias else None,
           torch.tensor([0.3], dtype=dtype) if shift else None]
    return [p.requires_grad_() if p is not None else None for p in out]


# ---- the fused Functions -------------------------------------------------------------------------
def gradcheck_fused(fn, bias: bool, shift: bool, width: int = 11) -> tuple:
    """``torch.autograd.gradcheck`` of ``fn(x, alpha, weight, beta, s)`` in float64 (beta and s may be None,
    then not passed to gradcheck), and its output against ``gamma f(alpha x + s) + beta`` written out."""
    x = (2 * torch.randn(3, 4, width, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    x.requires_grad_()
    alpha, weight, beta, s = params(width, bias, shift)
    inputs = tuple(t for t in (x, alpha, weight, beta, s) if t is not None)

    def call(*ts: torch.Tensor) -> torch.Tensor:
        it = iter(ts)
        xx, a, w = next(it), next(it), next(it)
        return fn(xx, a, w, next(it) if bias else None, next(it) if shift else None)

    assert gradcheck(call, inputs)
    return call(*inputs), (x, alpha, weight, beta, s)


@pytest.mark.parametrize("form, save_tanh", [("tanh", True), ("tanh", False), ("sigmoid", True),
                                              ("sigmoid", False), ("erf", False)])
@pytest.mark.parametrize("bias, shift", [(True, True), (False, False), (True, False), (False, True)])
def test_fused_function_passes_gradcheck_in_float64(monkeypatch, form: str, save_tanh: bool, bias: bool,
                                                    shift: bool) -> None:
    """What ``norm_impl: fused`` runs on CPU: the C++ kernel for tanh and the centred sigmoid (its fp64 code,
    with tanh kept and recomputed; width 11 is one whole 8-lane vector and a tail), the erf Function."""
    monkeypatch.setattr(fused, "SAVE_TANH_MAX_ELEMENTS", 10**9 if save_tanh else 0)
    assert fused.uses_kernel(torch.empty(1, dtype=torch.float64), form) is (form != "erf")
    out, (x, alpha, weight, beta, s) = gradcheck_fused(
        lambda *ts: fused_pointwise(*ts, form=form), bias, shift)
    # gradcheck compares the backward with the forward; the forward against the formula itself:
    expected = weight * FORMS[form](alpha * x + (s if shift else 0)) + (beta if bias else 0)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("form", ["tanh", "sigmoid"])
@pytest.mark.parametrize("bias, shift", [(True, True), (False, False)])
def test_the_sigmoid_form_for_devices_without_a_kernel_passes_gradcheck(form: str, bias: bool, shift: bool) -> None:
    out, (x, alpha, weight, beta, s) = gradcheck_fused(
        lambda *ts: fused._SigmoidForm.apply(*ts, fused.FORMS[form]), bias, shift)
    expected = weight * FORMS[form](alpha * x + (s if shift else 0)) + (beta if bias else 0)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)


def test_fused_function_skips_gradients_nobody_needs() -> None:
    x = torch.randn(8, 4, requires_grad=True)
    alpha, weight, beta, s = (p.detach().float() for p in params(4, True, True))
    (dx,) = torch.autograd.grad(fused_pointwise(x, alpha, weight, beta, s, "tanh").sum(), [x])
    assert dx.shape == x.shape and alpha.grad is None


def close_enough(got: torch.Tensor, want: torch.Tensor, atol: float, rtol: float) -> None:
    """|got - want| <= atol * max|want| + rtol * |want|, element-wise (the documented tolerance)."""
    got, want = got.float(), want.float()
    bound = atol * want.abs().max() + rtol * want.abs()
    excess = ((got - want).abs() - bound).max().item()
    assert excess <= 0, f"off by {excess:.3g} beyond the tolerance"


def test_the_kernels_tanh_is_within_its_documented_error_of_float64_tanh() -> None:
    u = torch.linspace(-30, 30, 600_001)
    want = torch.tanh(u.double())
    one, none = torch.ones(1), torch.empty(0)
    got, _ = fused.cpu_kernel().forward(u.reshape(1, -1), one, none, torch.ones(u.numel()), none, 1.0, False)
    err = (got.reshape(-1).double() - want).abs()
    assert err.max().item() <= fused.KERNEL_TANH_ERR  # absolute, and relative where |tanh| >= 1e-3:
    big = want.abs() >= 1e-3
    assert (err[big] / want[big].abs()).max().item() <= fused.KERNEL_TANH_ERR
    edge, _ = fused.cpu_kernel().forward(torch.tensor([[math.nan, math.inf, -math.inf, 0.0]]), one, none,
                                         torch.ones(4), none, 1.0, False)
    assert math.isnan(edge[0, 0]) and edge[0, 1:].tolist() == pytest.approx([1.0, -1.0, 0.0], abs=3e-7)


@pytest.mark.parametrize("dtype, device, form, kernel", [
    (torch.float32, "cpu", "tanh", True), (torch.bfloat16, "cpu", "sigmoid", True),
    (torch.float64, "cpu", "tanh", True), (torch.float32, "cpu", "erf", False),
    (torch.float32, "meta", "tanh", False)])
def test_the_kernel_path_is_taken_exactly_on_cpu_for_the_tanh_forms(dtype, device, form, kernel) -> None:
    assert fused.uses_kernel(torch.empty(2, 3, dtype=dtype, device=device), form) is kernel


@pytest.mark.parametrize("form", ["tanh", "sigmoid"])
@pytest.mark.parametrize("width", [16, 100, 5])  # whole 16-lane blocks, a tail after them, a tail alone
@pytest.mark.parametrize("bias, shift", [(True, True), (False, False)])
@pytest.mark.parametrize("save_tanh", [True, False])
def test_the_kernel_matches_float64_autograd_of_the_formula(monkeypatch, form, width, bias, shift, save_tanh) -> None:
    """Output and all five gradients of the C++ kernel against float64 autograd of gamma f(alpha x + s) + beta,
    with the forward's tanh kept for the backward and recomputed there."""
    monkeypatch.setattr(fused, "SAVE_TANH_MAX_ELEMENTS", 10**9 if save_tanh else 0)
    gen = torch.Generator().manual_seed(width)
    x = 3 * torch.randn(2, 70, width, generator=gen)  # 140 rows: chunks of 2 and 3 rows
    dy = torch.randn(2, 70, width, generator=gen)
    ps64 = params(width, bias, shift, seed=width)
    ps32 = [p.detach().float().requires_grad_() if p is not None else None for p in ps64]
    x32, x64 = x.clone().requires_grad_(), x.double().requires_grad_()
    y32 = fused_pointwise(x32, *ps32, form=form)
    alpha, weight, beta, s = ps64
    y64 = weight * FORMS[form](alpha * x64 + (s if shift else 0)) + (beta if bias else 0)
    close_enough(y32, y64, fused.FP32_ATOL, fused.FP32_RTOL)
    ins32 = [x32] + [p for p in ps32 if p is not None]
    ins64 = [x64] + [p for p in ps64 if p is not None]
    got, want = torch.autograd.grad(y32, ins32, dy), torch.autograd.grad(y64, ins64, dy.double())
    close_enough(got[0], want[0], fused.FP32_ATOL, fused.FP32_RTOL)  # dx
    for g, w in zip(got[1:], want[1:]):  # dalpha, dgamma, dbeta, ds: sums over tokens
        assert g.shape == w.shape
        close_enough(g, w, fused.SUM_RTOL, 0.0)


def test_the_kernels_parameter_gradients_do_not_depend_on_the_thread_count() -> None:
    gen = torch.Generator().manual_seed(0)
    x, dy = torch.randn(4096, 48, generator=gen), torch.randn(4096, 48, generator=gen)
    ps = [p.detach().float().requires_grad_() for p in params(48, True, True)]
    threads = torch.get_num_threads()
    grads = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            xx = x.clone().requires_grad_()
            grads.append(torch.autograd.grad(fused_pointwise(xx, *ps, form="tanh"), [xx, *ps], dy))
    finally:
        torch.set_num_threads(threads)
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_module_agrees_with_eager_within_documented_tolerance(form: str, dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    eager = PointwiseNorm(64, MODULES[form](), alpha_init=0.7, bias=True, shift=0.1)
    with torch.no_grad():
        eager.weight.normal_()
        eager.bias.normal_()
    x = (3 * torch.randn(512, 64)).to(dtype).requires_grad_()  # |alpha x| up to ~8: saturation covered
    dy = torch.randn(512, 64).to(dtype)
    fast = implement(PointwiseNorm(64, MODULES[form](), alpha_init=0.7, bias=True, shift=0.1), "fused")
    fast.load_state_dict(eager.state_dict())
    assert fast.fused_form == form
    outs, grads = [], []
    for m in (fast, eager):
        y = m(x)
        assert y.dtype == dtype
        outs.append(y)
        grads.append(torch.autograd.grad(y, [x, m.alpha, m.weight, m.bias, m.shift], dy))
    atol, rtol = (fused.FP32_ATOL, fused.FP32_RTOL) if dtype == torch.float32 else (fused.BF16_ATOL, fused.BF16_RTOL)
    close_enough(outs[0], outs[1], atol, rtol)
    close_enough(grads[0][0], grads[1][0], atol, rtol)  # dx
    for got, want in zip(grads[0][1:], grads[1][1:]):  # dalpha, dgamma, dbeta, ds: sums over tokens
        close_enough(got, want, fused.SUM_RTOL, 0.0)


def test_fused_under_autocast_matches_eager_and_returns_the_input_dtype() -> None:
    torch.manual_seed(0)
    eager = PointwiseNorm(32, nn.Tanh(), alpha_init=1.0)
    fast = implement(PointwiseNorm(32, nn.Tanh(), alpha_init=1.0), "fused")
    x = torch.randn(64, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_fast, y_eager = fast(x), eager(x)
    assert y_fast.dtype == y_eager.dtype == torch.float32
    close_enough(y_fast, y_eager, fused.FP32_ATOL, fused.FP32_RTOL)


def test_eager_dyt_under_bf16_autocast_computes_in_fp32_as_the_official_module() -> None:
    """The official DynamicTanh (facebookresearch/DyT) computes ``tanh(alpha * x) * weight + bias`` with fp32
    parameters: alpha, a 1-element fp32 tensor, promotes a bf16 x to fp32, so the squashing runs in fp32 under
    autocast. Ours does too, and returns x's dtype (the next Linear casts to bf16 under autocast anyway)."""
    torch.manual_seed(0)
    m = PointwiseNorm(32, nn.Tanh(), alpha_init=0.7)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    x = (3 * torch.randn(64, 32)).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = m(x)
        official = torch.tanh(m.alpha * x) * m.weight + m.bias
    assert official.dtype == torch.float32 and ours.dtype == torch.bfloat16
    assert torch.equal(ours, official.to(torch.bfloat16))


# ---- model.norm_impl -----------------------------------------------------------------------------
def test_norm_impl_is_validated_with_one_line_listing_the_choices(tmp_path, capsys) -> None:
    with pytest.raises(UserError, match=r"^invalid model.norm_impl 'fast'; valid: eager, compiled, fused$"):
        ModelConfig(norm_impl="fast")
    with pytest.raises(UserError, match=r"^invalid config.model.norm_impl 'fast'; valid: eager, compiled, fused$"):
        load_run_config(overrides=parse_set(["model.norm_impl=fast"]))
    rc, _, err = cli(["train", "--set", "model.norm_impl=fast", "--out", str(tmp_path / "t")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "valid: eager, compiled, fused" in err
    assert load_run_config(overrides=parse_set(["model.norm_impl=fused"])).model.norm_impl == "fused"


def test_a_scheme_without_a_fused_form_is_refused_when_the_model_is_built(tmp_path, capsys) -> None:
    with pytest.raises(UserError) as info:
        build_model("hardtanh", ModelConfig(d_model=16, n_layers=1, n_heads=2, norm_impl="fused"))
    msg = str(info.value)
    assert "\n" not in msg and "'fused'" in msg and "baseline 'hardtanh'" in msg
    assert msg.endswith("valid for it: eager, compiled")
    with private_cache(tmp_path):
        corpus = write_word_corpus(tmp_path / "corpus.txt")
        out = tmp_path / "t"
        rc, _, err = cli(["train", "--baseline", "softsign", "--steps", "2", "--out", str(out), "--set",
                          "model.norm_impl=fused", "--set", f"data.corpus={corpus}", "--set", "train.warmup_steps=0"],
                         capsys)
    assert rc == 2 and "baseline 'softsign'" in err and len(err.strip().splitlines()) == 1
    assert not (out / "metrics.json").exists()


def test_the_cpu_kernel_is_built_and_cached_per_cpu() -> None:
    """-march=native builds for the host: CPUs with other instruction sets get other build folders (an AVX-512
    build run on an AVX2 CPU dies on an illegal instruction), the same CPU the same one."""
    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
    avx512 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw\n"
    arm = "processor\t: 0\nFeatures\t: fp asimd sve\n"
    tags = {fused.cpu_build_tag(text) for text in (avx2, avx512, arm)}
    assert len(tags) == 3 and all(len(t) == 8 for t in tags)
    assert fused.cpu_build_tag(avx2) == fused.cpu_build_tag(avx2.replace("avx avx2", "avx2 avx"))
    assert fused.cpu_kernel().__name__ == f"normfree_bench_fused_cpu_{fused.cpu_build_tag()}"


def test_a_cpu_kernel_that_cannot_be_built_is_one_line_before_training(tmp_path, capsys, monkeypatch) -> None:
    """No compiler: a fresh extensions folder and a compiler that fails; the fused DyT model is refused."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setenv("CXX", "/bin/false")
    fused.cpu_kernel.cache_clear()
    try:
        with private_cache(tmp_path):
            corpus = write_word_corpus(tmp_path / "corpus.txt")
            out = tmp_path / "t"
            rc, _, err = cli(["train", "--baseline", "dyt", "--steps", "2", "--out", str(out),
                              "--set", "model.norm_impl=fused", "--set", f"data.corpus={corpus}",
                              "--set", "train.warmup_steps=0"], capsys)
    finally:
        fused.cpu_kernel.cache_clear()  # the next caller builds (or finds) the real kernel again
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "builds a C++ kernel" in err and "valid without them: eager" in err
    assert not (out / "metrics.json").exists()


@pytest.mark.parametrize("name", ["layernorm", "rmsnorm", "rezero", "fixup", "nf", "dyt", "derf", "sigmoid"])
def test_every_main_scheme_and_each_fused_point_wise_one_builds_fused(name: str) -> None:
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, context_length=8)
    torch.manual_seed(0)
    eager = build_model(name, cfg)
    torch.manual_seed(0)
    fast = build_model(name, replace(cfg, norm_impl="fused"))
    assert list(fast.state_dict()) == list(eager.state_dict())
    for (_, _, _, a), (_, _, _, b) in zip(eager.norm_sites(), fast.norm_sites()):
        assert type(a) is type(b) and "fused" in available_impls(a)
        if isinstance(b, PointwiseNorm):
            assert b.fused_form is not None and a.fused_form is None
    ids = torch.randint(0, 256, (2, 8))
    torch.testing.assert_close(fast(ids), eager(ids), atol=1e-5, rtol=1e-5)


def test_the_default_implementation_keeps_the_config_hash() -> None:
    cfg = RunConfig()
    assert cfg.config_hash() == config_hash(without_later_keys(cfg.to_dict()))  # old runs still resume
    fused_cfg = load_run_config(overrides=parse_set(["model.norm_impl=fused"]))
    assert fused_cfg.config_hash() != cfg.config_hash() and fused_cfg.sweep_hash() != cfg.sweep_hash()


@pytest.mark.parametrize("name", ["dyt", "derf"])
def test_a_short_training_run_fused_follows_the_eager_loss_curve(tmp_path, name: str) -> None:
    """30 steps of fp32 training on CPU, same seed: the train losses agree within 1e-4 nats at every logged
    step (measured: 1e-6; the fused forms round differently, about 1e-7 per element, and Adam carries that
    along)."""
    from normfree_bench.training.train import train_one

    with private_cache(tmp_path):
        corpus = write_word_corpus(tmp_path / "corpus.txt")
        curves = {}
        for impl in ("eager", "fused"):
            cfg = load_run_config(overrides=parse_set([
                f"baseline={name}", f"data.corpus={corpus}", "data.batch_size=8", "data.val_windows=4",
                "model.d_model=32", "model.n_layers=2", "model.n_heads=4", "model.context_length=32",
                f"model.norm_impl={impl}", "train.steps=30", "train.warmup_steps=3", "train.eval_interval=30",
                "train.log_interval=5", "train.lr=0.003", "train.diagnostics=false", "train.threads=1"]))
            result = train_one(cfg)
            curves[impl] = [(p["step"], p["train_loss"]) for p in result.curve if not math.isnan(p["train_loss"])]
    assert [s for s, _ in curves["eager"]] == [s for s, _ in curves["fused"]] and len(curves["eager"]) >= 6
    first, last = curves["eager"][0][1], curves["eager"][-1][1]
    assert last < first - 0.1  # it learned something, so the comparison is not of two flat lines
    for (step, a), (_, b) in zip(curves["eager"], curves["fused"]):
        assert abs(a - b) <= 1e-4, f"step {step}: eager {a:.5f} vs fused {b:.5f}"


# ---- the speed suite -----------------------------------------------------------------------------
def test_tiny_speed_run_has_consistent_floor_and_ratio_columns(tmp_path) -> None:
    s = SpeedSettings(baselines=["layernorm", "dyt"], widths=[32], tokens=64,
                      model_sizes=[{"d_model": 16, "n_layers": 1, "n_heads": 2, "context_length": 8}], batch_size=2,
                      dtypes=["fp32", "bf16"], compile=False, impls=["eager", "compiled", "fused"], min_run_time=0.01)
    rows = run_speed(s, tmp_path)
    layer = [r for r in rows if r["bench"] == "layer"]
    # --no-compile: no compiled rows; layernorm's fused form is its eager kernel, so it is not timed twice
    assert {(r["baseline"], r["impl"]) for r in layer} == {("layernorm", "eager"), ("dyt", "eager"), ("dyt", "fused")}
    for r in layer:
        elem = 4 if r["dtype"] == "fp32" else 2
        n = 64 * 32
        assert r["min_bytes"] == (2 if r["mode"] == "fwd" else 5) * n * elem
        assert 0 < r["copy_ms"] < r["time_ms"]  # a copy is the cheapest pass there is
        assert r["floor_ms"] == pytest.approx(r["copy_ms"] * r["min_bytes"] / (2 * n * elem))
        assert r["vs_floor"] == pytest.approx(r["time_ms"] / r["floor_ms"])
        assert r["gb_per_s"] == pytest.approx(r["min_bytes"] / (r["time_ms"] / 1e3) / 1e9)
        same = [q for q in layer
                if q["baseline"] == "layernorm" and q["dtype"] == r["dtype"] and q["mode"] == r["mode"]]
        assert r["vs_layernorm_best"] == pytest.approx(r["time_ms"] / min(q["time_ms"] for q in same))
        # per implementation: against layernorm's eager, which is its fused kernel too
        assert r["time_vs_layernorm"] == pytest.approx(r["time_ms"] / same[0]["time_ms"])
    # one copy floor per dtype in the run
    assert len({(r["dtype"], r["copy_ms"]) for r in layer}) == 2
    model = [r for r in rows if r["bench"] == "model"]
    assert {(r["baseline"], r["impl"]) for r in model} == {("layernorm", "eager"), ("dyt", "eager"), ("dyt", "fused")}
    assert all(0 < r["norm_share_pct"] < 100 and r["norm_ms"] > 0 for r in model)
    md = (tmp_path / "speed.md").read_text()
    for column in ("impl", "copy_ms", "min_bytes", "vs_floor", "vs_layernorm_best", "norm_share_pct"):
        assert column in md
    assert "floor_ms" in (tmp_path / "speed.csv").read_text().splitlines()[0]


def test_ratios_use_layernorms_fastest_implementation() -> None:
    def row(name: str, impl: str, t: float) -> dict:
        return {"bench": "layer", "baseline": name, "width": 8, "dtype": "fp32", "impl": impl,
                "compiled": impl == "compiled", "mode": "fwd", "time_ms": t}

    rows = [row("layernorm", "eager", 2.0), row("layernorm", "compiled", 1.0), row("dyt", "eager", 4.0),
            row("dyt", "fused", 1.5), row("dyt", "compiled", 3.0),
            {**row("layernorm", "eager", 9.0), "dtype": "bf16"}]
    add_ratios(rows)
    assert [r["vs_layernorm_best"] for r in rows[:5]] == [2.0, 1.0, 4.0, 1.5, 3.0]
    assert [r["time_vs_layernorm"] for r in rows[:5]] == [1.0, 1.0, 2.0, 0.75, 3.0]  # fused vs layernorm eager
    assert rows[5]["vs_layernorm_best"] == 1.0  # bf16 compared with bf16 only
    models = [{"bench": "model", "baseline": "layernorm", "d_model": 8, "n_layers": 1, "dtype": "fp32",
               "impl": impl, "compiled": whole, "train_tokens_per_s": tps, "infer_tokens_per_s": 1.0}
              for impl, whole, tps in (("eager", False, 100.0), ("eager", True, 200.0))]
    models.append({**models[0], "baseline": "dyt", "impl": "fused", "train_tokens_per_s": 150.0})
    add_ratios(models)
    assert models[2]["train_vs_layernorm"] == 1.5 and models[2]["train_vs_layernorm_best"] == 0.75


class _Event:
    def __init__(self, name: str, self_us: float, seq: int = -1, parent: _Event | None = None) -> None:
        self.name, self.self_cpu_time_total, self.sequence_nr, self.cpu_parent = name, self_us, seq, parent


def test_norm_time_is_attributed_by_range_and_by_sequence_number() -> None:
    norm = _Event("norm_site", 1.0)
    fwd = [norm, _Event("aten::mul", 10.0, 7, norm), _Event("aten::tanh", 20.0, 8, norm),
           _Event("aten::empty", 4.0, -1, norm), _Event("aten::linear", 100.0, 9)]
    bwd_norm = _Event("autograd::engine::evaluate_function: TanhBackward0", 2.0, 8)
    bwd_other = _Event("autograd::engine::evaluate_function: AddmmBackward0", 3.0, 9)
    accumulate = _Event("autograd::engine::evaluate_function: torch::autograd::AccumulateGrad", 5.0, -1)
    events = [*fwd, bwd_norm, _Event("aten::tanh_backward", 30.0, -1, bwd_norm), bwd_other,
              _Event("aten::mm", 200.0, -1, bwd_other), accumulate, _Event("Optimizer.step", 50.0)]
    norm_us, total_us = attribute(events, cuda=False)
    assert norm_us == 1 + 10 + 20 + 4 + 2 + 30 and total_us == sum(e.self_cpu_time_total for e in events)


def test_speed_cli_refuses_an_unknown_implementation(tmp_path, capsys) -> None:
    rc, _, err = cli(["speed", "--impls", "eager,turbo", "--out", str(tmp_path / "s")], capsys)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "--impls" in err and "eager, compiled, fused" in err
    assert not (tmp_path / "s").exists()


# ---- slow: torch.compile, Triton's interpreter -----------------------------------------------------
@pytest.mark.slow
def test_compiled_norms_match_eager_and_keep_the_state_dict() -> None:
    cfg = ModelConfig(d_model=16, n_layers=2, n_heads=2, context_length=8)
    torch.manual_seed(0)
    eager = build_model("dyt", cfg)
    torch.manual_seed(0)
    compiled = build_model("dyt", replace(cfg, norm_impl="compiled"))
    assert list(compiled.state_dict()) == list(eager.state_dict())
    ids = torch.randint(0, 256, (2, 8))
    torch.testing.assert_close(compiled(ids), eager(ids), atol=1e-5, rtol=1e-5)


TRITON_CHECK = """
import torch
from normfree_bench.core.fused import fused_pointwise
from normfree_bench.core.fused_triton import TritonPointwise
for form in ("tanh", "sigmoid", "erf"):
    for bias, shift in ((True, True), (False, False)):
        g = torch.Generator().manual_seed(0)
        x = (2 * torch.randn(70, 40, generator=g)).requires_grad_()
        ps = [torch.tensor([0.7]), torch.randn(40, generator=g), torch.randn(40, generator=g) if bias else None,
              torch.tensor([0.3]) if shift else None]
        ps = [p.requires_grad_() if p is not None else None for p in ps]
        ins = [t for t in (x, *ps) if t is not None]
        dy = torch.randn(70, 40, generator=g)
        y1 = TritonPointwise.apply(x, *ps, form)
        y2 = fused_pointwise(x, *ps, form)
        torch.testing.assert_close(y1, y2, atol=2e-6, rtol=1e-5)
        for a, b in zip(torch.autograd.grad(y1, ins, dy), torch.autograd.grad(y2, ins, dy)):
            torch.testing.assert_close(a, b, atol=1e-4 * float(b.abs().max()), rtol=1e-4)
print("ok")
"""


@pytest.mark.slow
def test_triton_kernels_agree_with_the_cpu_form_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    proc = subprocess.run([sys.executable, "-c", TRITON_CHECK], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
