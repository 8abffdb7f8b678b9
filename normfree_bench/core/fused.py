"""Fused point-wise norms: ``gamma * f(alpha * x + s) + beta`` as one ``torch.autograd.Function`` per f.

Usage: ``y = fused_pointwise(x, alpha, weight, bias, shift, form="tanh")``  (``bias``/``shift`` may be None)

What the model's ``norm_impl: fused`` runs at a DyT, Derf or centred-sigmoid norm site
(normfree_bench.core.norm_impl picks the form from the site's point-wise function). Each form has a forward
that computes the whole layer with as few passes over the tensor as torch's primitives allow and keeps
what the backward needs, and a backward that returns dx, dalpha, dgamma, dbeta and ds together (no
autograd graph of four element-wise ops):

- ``tanh`` (DyT) and ``sigmoid`` (the centred ``2 sigmoid(u) - 1``): both are ``2 sigmoid(k u) - 1``, with
  k = 2 for tanh (tanh(u) = 2 sigmoid(2u) - 1) and k = 1 for the centred sigmoid. On CPU torch.sigmoid is
  several times faster than torch.tanh (about 0.5 ms against 3 ms on 1M fp32 on the 2-core reference
  machine: torch.tanh is not vectorised there). Forward: z = k(alpha x + s) (one pass, ``addcmul``),
  sigmoid in place, then ``out = 2 gamma sigma + (beta - gamma)`` (one ``addcmul``): three passes.
  Saved: x (for dalpha) and sigma; f'(u) = 2k sigma (1 - sigma), so tanh's ``alpha (1 - y^2) gamma``
  comes from torch's fused ``sigmoid_backward`` kernel (one pass).
  That is the float64 form (what ``torch.autograd.gradcheck`` checks) and the form on any device without
  the compiled path below.
- **CPU, fp32/bf16/fp16, tanh and centred sigmoid: compiled.** ``2 sigmoid(u) - 1 = tanh(u / 2)``, so both
  forms are ``gamma * tanh(c (alpha x + s)) + beta`` (c = 1 for tanh, 1/2 for the centred sigmoid). torch.tanh
  is not vectorised on CPU and inductor's tanh and sigmoid still cost several times LayerNorm's kernel, so
  tanh is the rational minimax approximation that Eigen and XLA use for float tanh (odd degree-13 numerator,
  even degree-6 denominator on [-7.905, 7.905]; beyond it, +-1 is within 3e-7 of tanh); coefficients
  `TANH_NUM`, `TANH_DEN` from Eigen's ``generic_fast_tanh_float``,
  https://gitlab.com/libeigen/eigen/-/blob/master/Eigen/src/Core/MathFunctionsImpl.h): only multiply-adds
  and one division, which inductor vectorises. Measured against float64 tanh over [-30, 30] in fp32: at most
  3.5e-7 relative and absolute error (tests/test_fused_norms.py). Forward and backward are each one
  ``torch.compile``d function (one kernel each): the forward reads x and writes y; the backward reads dy
  and x, recomputes tanh, writes dx and reduces dalpha, dgamma, dbeta and ds in the same kernel.
  Compiled once per shape and dtype (inductor's C++ backend, as ``norm_impl: compiled``).
- ``erf`` (Derf): no cheaper primitive than torch.erf exists. Saved: x, u = alpha x + s and erf(u);
  f'(u) = 2 / sqrt(pi) exp(-u^2).

Computed in fp32 (or fp64 for fp64 inputs, so that ``torch.autograd.gradcheck`` can run in float64) and
cast back to x's dtype, as `PointwiseNorm`'s eager forward. Precision against the eager module (torch.tanh,
torch.erf; tests/test_fused_norms.py holds these): ``2 sigma - 1`` has an absolute error of a few fp32
ulps of 1 (about 1e-7) where torch.tanh's is relative, so fp32 outputs and dx agree within ``FP32_ATOL``
x their largest magnitude plus ``FP32_RTOL`` x each value; bf16 ones within one bf16 rounding
(``BF16_ATOL``, ``BF16_RTOL``); parameter gradients, sums over all tokens in another order, within
``SUM_RTOL`` x their largest magnitude.

On CUDA, when Triton imports (it ships with torch's CUDA wheels), the forward and backward are single
Triton kernels instead (normfree_bench.core.fused_triton: forward reads x and writes y; backward reads
dy and x and writes dx, recomputing f, the parameter gradients reduced from per-tile partial sums).
That module is imported only for CUDA tensors, so nothing here needs Triton or a GPU.

Not fused (eager or compiled only; `fused_form` returns None): hardtanh, softsign, ISRU and the identity.
Their eager forms are already one or two cheap element-wise ops with vectorised CPU kernels (clamp, abs,
rsqrt), so a hand-written Function would save little; ``torch.compile`` fuses them where it matters.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

FORMS: dict[str, float] = {"tanh": 2.0, "sigmoid": 1.0, "erf": 0.0}  # form -> k of 2 sigmoid(k u) - 1 (0: erf)
TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
# Agreement with the eager module (tests/test_fused_norms.py), element-wise for outputs and dx:
# |fused - eager| <= ATOL * max|eager| + RTOL * |eager|.
FP32_ATOL, FP32_RTOL = 1e-6, 1e-5  # measured: <= 2e-7 * max|y| (the sigmoid identity's absolute error)
BF16_ATOL, BF16_RTOL = 2**-8, 2**-7  # one bf16 rounding either way (8 significant bits)
# Parameter gradients are sums over every token, added in another order: |fused - eager| <= SUM_RTOL * max|eager|.
SUM_RTOL = 1e-4  # measured: <= 4e-5 over 1M fp32 elements


def fused_form(fn: nn.Module) -> str | None:
    """The fused form of a point-wise function module: ``"tanh"`` for ``nn.Tanh``, else its ``fused_form``
    attribute (``Erf``: ``"erf"``, ``CenteredSigmoid``: ``"sigmoid"``); None when it has none."""
    if type(fn) is nn.Tanh:
        return "tanh"
    form = getattr(fn, "fused_form", None)
    return form if form in FORMS else None


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as (rows, channels), for per-channel sums."""
    return t.reshape(-1, t.shape[-1])


def _dbeta(ctx: Any, g: torch.Tensor) -> torch.Tensor | None:
    return _rows(g).sum(0) if ctx.has_bias and ctx.needs_input_grad[3] else None


def _dshift(ctx: Any, du: torch.Tensor) -> torch.Tensor | None:
    """ds = sum dL/du, when there is a shift and it needs a gradient."""
    return du.sum().reshape(1) if ctx.has_shift and ctx.needs_input_grad[4] else None


def _through_u(ctx: Any, du: torch.Tensor, x: torch.Tensor,
               alpha: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(dx, dalpha) from dL/du with u = alpha x + s: dalpha = sum du x, dx = alpha du (du reused in place)."""
    dalpha = None
    if ctx.needs_input_grad[1]:
        dalpha = torch.dot(du.reshape(-1), x.reshape(-1).to(du.dtype)).reshape(alpha.shape)
    dx = du.mul_(alpha).to(x.dtype) if ctx.needs_input_grad[0] else None
    return dx, dalpha


class _SigmoidForm(torch.autograd.Function):
    """``gamma * (2 sigmoid(k (alpha x + s)) - 1) + beta``: tanh (k = 2) and the centred sigmoid (k = 1)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                shift: torch.Tensor | None, k: float) -> torch.Tensor:
        ka = alpha * k
        # z = k (alpha x + s), promoted to the compute dtype of the parameters in the same pass.
        z = torch.addcmul(shift * k, x, ka) if shift is not None else torch.mul(x, ka)
        sig = z.sigmoid_()
        offset = bias - weight if bias is not None else -weight
        out = torch.addcmul(offset, sig, 2 * weight, out=torch.empty_like(x))  # gamma (2 sigma - 1) + beta
        ctx.save_for_backward(x, sig, alpha, weight)
        ctx.k, ctx.has_bias, ctx.has_shift = k, bias is not None, shift is not None
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, sig, alpha, weight = ctx.saved_tensors
        g = dout.to(sig.dtype)
        dgamma = None
        if ctx.needs_input_grad[2]:
            # sum_t g (2 sigma - 1) = -sum_t (g - 2 g sigma): one addcmul and one sum.
            dgamma = _rows(torch.addcmul(g, g, sig, value=-2.0)).sum(0).neg_()
        dbeta = _dbeta(ctx, g)
        # dL/du = 2 k gamma g sigma (1 - sigma), sigma (1 - sigma) from torch's fused sigmoid_backward.
        du = torch.ops.aten.sigmoid_backward(g, sig).mul_(2 * ctx.k * weight)
        dshift = _dshift(ctx, du)  # before _through_u reuses du in place
        return (*_through_u(ctx, du, x, alpha), dgamma, dbeta, dshift, None)


class _ErfForm(torch.autograd.Function):
    """``gamma * erf(alpha x + s) + beta`` (Derf)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                shift: torch.Tensor | None, k: float) -> torch.Tensor:
        u = torch.addcmul(shift, x, alpha) if shift is not None else torch.mul(x, alpha)
        y = torch.erf(u)
        out = torch.empty_like(x)
        if bias is not None:
            torch.addcmul(bias, y, weight, out=out)
        else:
            torch.mul(y, weight, out=out)
        ctx.save_for_backward(x, u, y, alpha, weight)
        ctx.has_bias, ctx.has_shift = bias is not None, shift is not None
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, u, y, alpha, weight = ctx.saved_tensors
        g = dout.to(u.dtype)
        dgamma = _rows(torch.mul(g, y)).sum(0) if ctx.needs_input_grad[2] else None
        dbeta = _dbeta(ctx, g)
        # dL/du = gamma g 2/sqrt(pi) exp(-u^2)
        du = torch.square(u).neg_().exp_().mul_(g).mul_(TWO_OVER_SQRT_PI * weight)
        dshift = _dshift(ctx, du)  # before _through_u reuses du in place
        return (*_through_u(ctx, du, x, alpha), dgamma, dbeta, dshift, None)


# tanh(u) ~ u P(u^2) / Q(u^2) for |u| <= TANH_CLAMP (Eigen's generic_fast_tanh_float; see the module docstring).
TANH_CLAMP = 7.90531110763549805
TANH_NUM = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
            -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16)
TANH_DEN = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06)
TANH_SCALE = {"tanh": 1.0, "sigmoid": 0.5}  # form -> c of gamma tanh(c (alpha x + s)) + beta
COMPILED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
RATIONAL_TANH_ERR = 4e-7  # |rational_tanh - tanh| in fp32 (measured: 3.5e-7 at the clamp)


def rational_tanh(u: torch.Tensor) -> torch.Tensor:
    """tanh(u) from multiply-adds and one division (Horner in u^2); within `RATIONAL_TANH_ERR` in fp32."""
    u = u.clamp(-TANH_CLAMP, TANH_CLAMP)
    u2 = u * u
    num = TANH_NUM[-1]
    for coef in reversed(TANH_NUM[:-1]):
        num = num * u2 + coef
    den = TANH_DEN[-1]
    for coef in reversed(TANH_DEN[:-1]):
        den = den * u2 + coef
    return u * num / den


def _rational_forward(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      shift: torch.Tensor | None, c: float) -> torch.Tensor:
    u = alpha * x.float()
    if shift is not None:
        u = u + shift
    y = weight * rational_tanh(c * u)
    if bias is not None:
        y = y + bias
    return y.to(x.dtype)


def _rational_backward(g: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor,
                       shift: torch.Tensor | None, c: float) -> tuple[torch.Tensor, ...]:
    """(dx, dalpha, dgamma, dbeta, ds) for 2-D g and x: dv = dL/d(alpha x + s) = c gamma g (1 - t^2)."""
    xf, gf = x.float(), g.float()
    u = alpha * xf
    if shift is not None:
        u = u + shift
    t = rational_tanh(c * u)
    dv = gf * (weight * c) * (1 - t * t)
    return ((dv * alpha).to(x.dtype), (dv * xf).sum().reshape(1), column_sums(gf * t), column_sums(gf),
            dv.sum().reshape(1))


COLUMN_BLOCK = 8  # rows summed first in `column_sums` (the fastest of 2, 4, ..., 32 at width 1024 here)


def column_sums(t: torch.Tensor) -> torch.Tensor:
    """``t.sum(0)`` of a (rows, channels) tensor, as sums over blocks of `COLUMN_BLOCK` rows, then over the
    blocks. Compiled for a CPU, a plain ``sum(0)`` walks all rows for each 16-channel vector, one row (and at
    width 1024 one 4 KiB page) per step; the blocked form walks 8 rows at a time across the channels. On the
    2-core reference machine, fp32, 4096 rows: the two column sums of the fused backward (with tanh recomputed)
    3.4 -> 1.4 ms at width 1024, unchanged at 256; the whole fused forward+backward about 6.6 -> 5.1 ms at 1024.
    A row count that is not a multiple of the block sums plainly."""
    rows, channels = t.shape
    if rows % COLUMN_BLOCK:
        return t.sum(0)
    return t.view(rows // COLUMN_BLOCK, COLUMN_BLOCK, channels).sum(1).sum(0)


_compiled: dict[str, Any] = {}


def _compiled_fn(name: str) -> Any:
    """``torch.compile`` of `_rational_forward` or `_rational_backward`, made on first use."""
    if name not in _compiled:
        _compiled[name] = torch.compile(_rational_forward if name == "forward" else _rational_backward)
    return _compiled[name]


class _CompiledTanhForm(torch.autograd.Function):
    """``gamma * tanh(c (alpha x + s)) + beta`` on CPU: one compiled forward kernel, one compiled backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                shift: torch.Tensor | None, c: float) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2, alpha, weight, shift)
        ctx.c, ctx.has_bias, ctx.has_shift, ctx.shape = c, bias is not None, shift is not None, x.shape
        return _compiled_fn("forward")(x2, alpha, weight, bias, shift, c).reshape(x.shape)

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, alpha, weight, shift = ctx.saved_tensors
        g = dout.reshape(-1, dout.shape[-1])
        dx, dalpha, dgamma, dbeta, dshift = _compiled_fn("backward")(g, x2, alpha, weight, shift, ctx.c)
        need = ctx.needs_input_grad
        return (dx.reshape(ctx.shape) if need[0] else None, dalpha if need[1] else None,
                dgamma if need[2] else None, dbeta if ctx.has_bias and need[3] else None,
                dshift if ctx.has_shift and need[4] else None, None)


def _use_compiled(x: torch.Tensor, form: str) -> bool:
    """The compiled rational-tanh path: CPU tensors of fp32, bf16 or fp16, forms tanh and centred sigmoid."""
    return x.device.type == "cpu" and x.dtype in COMPILED_DTYPES and form in TANH_SCALE


def _use_triton(x: torch.Tensor) -> bool:
    """Triton for CUDA tensors of fp32, bf16 or fp16 (fp64 takes the torch form: the kernels sum in fp32)."""
    if not x.is_cuda or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    from normfree_bench.core import fused_triton  # imported for CUDA tensors only

    return fused_triton.AVAILABLE


def fused_pointwise(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    shift: torch.Tensor | None = None, form: str = "tanh") -> torch.Tensor:
    """``gamma * f(alpha * x + s) + beta`` over the last dimension of ``x``, f = ``form`` (a key of `FORMS`),
    in one fused forward and one fused backward; the result has x's dtype and shape."""
    if form not in FORMS:
        raise ValueError(f"unknown fused form {form!r}; valid: {', '.join(FORMS)}")
    ct = torch.promote_types(x.dtype, torch.float32)
    alpha, weight = alpha.to(ct), weight.to(ct)
    bias = bias.to(ct) if bias is not None else None
    shift = shift.to(ct) if shift is not None else None
    if _use_triton(x):
        from normfree_bench.core.fused_triton import TritonPointwise

        return TritonPointwise.apply(x.contiguous(), alpha, weight, bias, shift, form)
    if _use_compiled(x, form):
        return _CompiledTanhForm.apply(x, alpha, weight, bias, shift, TANH_SCALE[form])
    if form == "erf":
        return _ErfForm.apply(x, alpha, weight, bias, shift, 0.0)
    return _SigmoidForm.apply(x, alpha, weight, bias, shift, FORMS[form])
