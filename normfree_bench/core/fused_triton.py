"""Triton kernels of the fused point-wise norms, for CUDA tensors: one forward and one backward kernel.

Usage: ``TritonPointwise.apply(x, alpha, weight, bias, shift, "tanh")``  (normfree_bench.core.fused calls it
for CUDA tensors when ``AVAILABLE``)

Forward: one pass, reads x and writes ``y = gamma * f(alpha x + s) + beta`` (f in fp32, y in x's dtype).
Backward: one pass over (BLOCK_M x BLOCK_D) tiles, reads dy and x, recomputes f and f', writes dx, and
writes per-tile partial sums of dgamma, dbeta (per channel) and dalpha, ds (scalars) that torch then adds
up (a few KB). Only x is saved between the two, so the layer moves the minimum the speed suite counts:
2N elements forward and 3N backward.

Importing this module never fails: without Triton, ``AVAILABLE`` is False and nothing else is defined
that needs it. The kernels are exercised on a GPU by ``normfree-bench speed`` and ``norm_impl: fused``;
CPU-only CI never runs them (tests/test_fused_norms.py runs them under Triton's interpreter,
``TRITON_INTERPRET=1``, when Triton is installed).
"""

from typing import Any

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - torch's CPU wheels and some platforms have no Triton
    triton = None
    tl = None

AVAILABLE = triton is not None
FORM_IDS = {"tanh": 0, "sigmoid": 1, "erf": 2}
BLOCK = 1024  # forward: elements per program
BLOCK_M = 32  # backward: rows per tile

if AVAILABLE:

    @triton.jit
    def _f_and_slope(u, FORM: tl.constexpr):
        """f(u) and f'(u) in fp32."""
        if FORM == 0:  # tanh(u) = 2 sigmoid(2u) - 1, tanh' = 1 - tanh^2
            f = 2.0 * tl.sigmoid(2.0 * u) - 1.0
            slope = 1.0 - f * f
        elif FORM == 1:  # 2 sigmoid(u) - 1, slope (1 - f^2) / 2
            f = 2.0 * tl.sigmoid(u) - 1.0
            slope = 0.5 * (1.0 - f * f)
        else:  # erf, erf' = 2 / sqrt(pi) exp(-u^2)
            f = tl.erf(u)
            slope = 1.1283791670955126 * tl.exp(-u * u)
        return f, slope

    @triton.jit
    def _forward_kernel(X, Y, ALPHA, SHIFT, W, B, N, D, FORM: tl.constexpr, HAS_SHIFT: tl.constexpr,
                        HAS_BIAS: tl.constexpr, BLOCK_SIZE: tl.constexpr):
        offs = tl.program_id(0) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offs < N
        col = offs % D
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(ALPHA) * x
        if HAS_SHIFT:
            u += tl.load(SHIFT)
        f, _ = _f_and_slope(u, FORM)
        y = tl.load(W + col, mask=mask, other=0.0) * f
        if HAS_BIAS:
            y += tl.load(B + col, mask=mask, other=0.0)
        tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _backward_kernel(X, DY, DX, ALPHA, SHIFT, W, DW_PART, DB_PART, DA_PART, DS_PART, M, D,
                         FORM: tl.constexpr, HAS_SHIFT: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):
        pm, pd = tl.program_id(0), tl.program_id(1)
        rows = pm * BM + tl.arange(0, BM)
        cols = pd * BD + tl.arange(0, BD)
        col_ok = cols < D
        mask = (rows[:, None] < M) & col_ok[None, :]
        offs = rows[:, None] * D + cols[None, :]
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + offs, mask=mask, other=0.0).to(tl.float32)  # 0 outside: no contribution below
        alpha = tl.load(ALPHA)
        u = alpha * x
        if HAS_SHIFT:
            u += tl.load(SHIFT)
        f, slope = _f_and_slope(u, FORM)
        w = tl.load(W + cols, mask=col_ok, other=0.0)
        tl.store(DW_PART + pm * D + cols, tl.sum(dy * f, axis=0), mask=col_ok)
        tl.store(DB_PART + pm * D + cols, tl.sum(dy, axis=0), mask=col_ok)
        du = dy * w[None, :] * slope
        tl.store(DX + offs, (du * alpha).to(DX.dtype.element_ty), mask=mask)
        tile = pm * tl.num_programs(1) + pd
        tl.store(DA_PART + tile, tl.sum(tl.sum(du * x, axis=1), axis=0))
        tl.store(DS_PART + tile, tl.sum(tl.sum(du, axis=1), axis=0))


class TritonPointwise(torch.autograd.Function):
    """``gamma * f(alpha x + s) + beta`` with Triton kernels; x contiguous, parameters in fp32."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                shift: torch.Tensor | None, form: str) -> torch.Tensor:
        y = torch.empty_like(x)
        n, d = x.numel(), x.shape[-1]
        _forward_kernel[(triton.cdiv(n, BLOCK),)](
            x, y, alpha, shift if shift is not None else alpha, weight, bias if bias is not None else weight, n, d,
            FORM=FORM_IDS[form], HAS_SHIFT=shift is not None, HAS_BIAS=bias is not None, BLOCK_SIZE=BLOCK)
        ctx.save_for_backward(x, alpha, weight, shift if shift is not None else alpha)
        ctx.form, ctx.has_bias, ctx.has_shift = form, bias is not None, shift is not None
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, alpha, weight, shift = ctx.saved_tensors
        dy = dy.contiguous()
        d = x.shape[-1]
        m = x.numel() // d
        bd = min(triton.next_power_of_2(d), 128)
        grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(d, bd))
        dx = torch.empty_like(x)
        f32 = {"device": x.device, "dtype": torch.float32}
        dw_part, db_part = torch.empty(grid[0], d, **f32), torch.empty(grid[0], d, **f32)
        da_part, ds_part = torch.empty(grid[0] * grid[1], **f32), torch.empty(grid[0] * grid[1], **f32)
        _backward_kernel[grid](x, dy, dx, alpha, shift, weight, dw_part, db_part, da_part, ds_part, m, d,
                               FORM=FORM_IDS[ctx.form], HAS_SHIFT=ctx.has_shift, BM=BLOCK_M, BD=bd)
        dalpha = da_part.sum().reshape(alpha.shape).to(alpha.dtype)
        dgamma = dw_part.sum(0).to(weight.dtype)
        dbeta = db_part.sum(0).to(weight.dtype) if ctx.has_bias else None
        dshift = ds_part.sum().reshape(1).to(alpha.dtype) if ctx.has_shift else None
        return dx, dalpha, dgamma, dbeta, dshift, None
