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
  That is the form on any device without the C++ kernel below or a Triton kernel (CUDA's float64 too).
- **CPU, tanh and centred sigmoid: a C++ kernel** (fused_cpu.cpp, built for the host on
  first use: `cpu_kernel`). ``2 sigmoid(u) - 1 = tanh(u / 2)``, so both forms are
  ``gamma * tanh(c (alpha x + s)) + beta`` (c = 1 for tanh, 1/2 for the centred sigmoid). torch.tanh is not
  vectorised on CPU, and ``torch.compile`` of any form of the layer costs a guard check and an autograd
  graph around two generated kernels whose column sums (dgamma, dbeta) walk every row per 16 channels; the
  kernel instead evaluates tanh as the rational minimax approximation that Eigen and XLA use for float tanh
  (multiply-adds and one reciprocal, 16 lanes at a time; within `KERNEL_TANH_ERR` of float64 tanh,
  tests/test_fused_norms.py). Forward: one pass that reads x and writes y, and also tanh when x has at most
  `SAVE_TANH_MAX_ELEMENTS` elements. Backward: one pass that reads dy and x (and the saved tanh, else it
  recomputes it), writes dx and sums dalpha, dgamma, dbeta and ds per fixed chunk of rows (so the sums do
  not depend on the thread count). bf16 and fp16 inputs are converted to fp32 around the kernel. fp64 runs
  the same code with exact tanh (std::tanh per lane): what ``torch.autograd.gradcheck`` checks.
- ``erf`` (Derf): no cheaper primitive than torch.erf exists. Saved: x, u = alpha x + s and erf(u);
  f'(u) = 2 / sqrt(pi) exp(-u^2).

Computed in fp32 (or fp64 for fp64 inputs, so that ``torch.autograd.gradcheck`` can run in float64) and
cast back to x's dtype, as `PointwiseNorm`'s eager forward. Precision against the eager module (torch.tanh,
torch.erf; tests/test_fused_norms.py holds these): ``2 sigma - 1`` and the kernel's rational tanh have an
absolute error of a few fp32 ulps of 1 (up to 3e-7) where torch.tanh's is relative, so fp32 outputs and dx
agree within ``FP32_ATOL`` x their largest magnitude plus ``FP32_RTOL`` x each value; bf16 ones within one bf16 rounding
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

import functools
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import torch
from torch import nn

from normfree_bench.errors import UserError

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


TANH_SCALE = {"tanh": 1.0, "sigmoid": 0.5}  # form -> c of gamma tanh(c (alpha x + s)) + beta
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
KERNEL_TANH_ERR = 4e-7  # |the kernel's tanh - tanh| in fp32 (measured over [-30, 30]: 2.8e-7 AVX-512, 3.3e-7 AVX2)
# The forward keeps tanh for the backward up to this many elements (8 MiB of fp32) and the backward recomputes
# it beyond: on the 2-core reference machine (32 MiB L3), fp32 4096 tokens, forward+backward with tanh kept
# against recomputed, two probe runs of two rounds: 0.36-0.38 against 0.44-0.45 ms at width 256 (the arithmetic
# saved; first rounds of 1.6-2.0 ms left out), 2.8-8.3 against 2.3-2.7 ms at 1024 (an extra tensor written and
# read from memory costs more than the arithmetic).
SAVE_TANH_MAX_ELEMENTS = 2**21


CPU_KERNEL_SOURCE = Path(__file__).with_name("fused_cpu.cpp")
CPU_KERNEL_FLAGS = ["-O3", "-march=native", "-ffp-contract=fast", "-fopenmp"]


def cpu_features(cpuinfo: str | None = None) -> list[str]:
    """The CPU's instruction-set flags: the ``flags`` (x86) or ``Features`` (Arm) line of ``cpuinfo`` (default:
    /proc/cpuinfo); empty where there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return []
    line = next((ln for ln in cpuinfo.splitlines() if ln.split(":")[0].strip() in ("flags", "Features")), None)
    return line.split(":", 1)[1].split() if line else []


def cpu_build_tag(cpuinfo: str | None = None) -> str:
    """8 hex digits naming this CPU's instruction sets: the kernel's build folder and module are named with it,
    because ``-march=native`` builds for the host and torch's build cache does not know the host (a home
    folder shared by machines with different CPUs, as on a cluster sharing one study, would otherwise run
    an AVX-512 build on a CPU without AVX-512). From `cpu_features`, else the platform's processor name."""
    features = " ".join(sorted(cpu_features(cpuinfo))) or platform.processor()
    return hashlib.sha256(f"{platform.machine()} {features}".encode()).hexdigest()[:8]


@functools.cache
def cpu_kernel() -> Any:
    """The tanh forms' CPU kernel (fused_cpu.cpp: ``forward``, ``backward``), built for this machine on first use.

    Built with ``torch.utils.cpp_extension.load``: a C++ compiler (as ``torch.compile``'s CPU backend needs)
    and ninja (the ``ninja`` package is a dependency; its script folder is put on PATH when ninja is not
    there). Flags ``-O3 -march=native`` (the host's vector width: AVX-512 where it has it) and OpenMP, whose
    runtime is the one torch already loaded (torch's ``libgomp.so.1``), so ``at::parallel_for`` uses torch's
    threads. torch caches the build (``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``), one
    per CPU (`cpu_build_tag`), and rebuilds it when the source or the flags change: about 25 s on the 2-core
    reference machine, once.
    A failed build is a `UserError` naming what is missing, raised when a model with ``norm_impl: fused`` is
    built on CPU (normfree_bench.core.norm_impl), before any training."""
    # Importing torch's extension builder logs a warning about CUDA_HOME on a machine without CUDA; this
    # kernel is CPU-only, so that warning is silenced.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.cpp_extension import load

    scripts = sysconfig.get_path("scripts")  # where pip put the `ninja` dependency, off PATH in an unactivated venv
    if shutil.which("ninja") is None and shutil.which("ninja", path=scripts):
        os.environ["PATH"] = os.pathsep.join([scripts, os.environ.get("PATH", "")])

    try:
        return load(name=f"normfree_bench_fused_cpu_{cpu_build_tag()}", sources=[str(CPU_KERNEL_SOURCE)],
                    extra_cflags=CPU_KERNEL_FLAGS, extra_ldflags=["-fopenmp"], verbose=False)
    except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"model.norm_impl 'fused' on CPU builds a C++ kernel, and the build failed ({reason}); "
                        "it needs a C++ compiler and ninja; valid without them: eager") from err


class _KernelTanhForm(torch.autograd.Function):
    """``gamma * tanh(c (alpha x + s)) + beta`` on CPU: the C++ kernel's forward and backward (fused_cpu.cpp)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                shift: torch.Tensor | None, c: float) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1]).to(weight.dtype).contiguous()  # fp32, or fp64 for fp64
        empty = x2.new_empty(0)
        shift_, bias_ = (shift if shift is not None else empty), (bias if bias is not None else empty)
        y, t = cpu_kernel().forward(x2, alpha, shift_, weight, bias_, c, x2.numel() <= SAVE_TANH_MAX_ELEMENTS)
        ctx.save_for_backward(x2, t, alpha, weight, shift_)
        ctx.c, ctx.has_bias, ctx.has_shift = c, bias is not None, shift is not None
        ctx.shape, ctx.dtype = x.shape, x.dtype
        return y.to(x.dtype).reshape(x.shape)

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, t, alpha, weight, shift = ctx.saved_tensors
        g = dout.reshape(x2.shape).to(x2.dtype).contiguous()
        dx, dalpha, dgamma, dbeta, dshift = cpu_kernel().backward(g, x2, t, alpha, shift, weight, ctx.c)
        need = ctx.needs_input_grad
        return (dx.to(ctx.dtype).reshape(ctx.shape) if need[0] else None,
                dalpha.reshape(alpha.shape) if need[1] else None, dgamma if need[2] else None,
                dbeta if ctx.has_bias and need[3] else None,
                dshift.reshape(shift.shape) if ctx.has_shift and need[4] else None, None)


def uses_kernel(x: torch.Tensor, form: str) -> bool:
    """The C++ kernel's path: CPU tensors of fp32, bf16, fp16 or fp64, forms tanh and centred sigmoid."""
    return x.device.type == "cpu" and x.dtype in KERNEL_DTYPES and form in TANH_SCALE


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
    if uses_kernel(x, form):
        return _KernelTanhForm.apply(x, alpha, weight, bias, shift, TANH_SCALE[form])
    if form == "erf":
        return _ErfForm.apply(x, alpha, weight, bias, shift, 0.0)
    return _SigmoidForm.apply(x, alpha, weight, bias, shift, FORMS[form])
