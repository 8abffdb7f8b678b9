"""Usage: ``with simulated_quantization(model, "int8", "int8_token"): loss = evaluate(model)``.

Tensor functions for numerical-stability analysis of a trained model: how heavy-tailed its
activations are, whether it grows LLM.int8()-style outlier feature dimensions, and how much it
suffers when its matmuls are run in int8 or fp8.

Conventions, shared by every function here:

- Inputs may be any floating dtype on any device; they are detached and upcast with ``.float()``.
  Statistics accumulate in float64 so that fourth moments of millions of elements stay accurate.
- Statistics return Python ``float``/``int``/``list``; the fake quantizers return a tensor of the
  input's shape and dtype holding the dequantized values.
- Undefined statistics (empty input, zero variance, zero RMS) are ``nan``, never an exception, so
  that a diagnostic logger can record them as they are.

Fake quantization is *simulated*: values are rounded onto the int8 / fp8 grid and mapped straight
back to floats, so the matmul itself still runs in floating point.  Gradients through the rounding
are zero; the quantizers and :func:`simulated_quantization` are meant for evaluation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ACTIVATION_MODES",
    "FP8_MAX",
    "INT8_MAX",
    "WEIGHT_MODES",
    "cast_fp8",
    "excess_kurtosis",
    "fp8_supported",
    "max_over_rms",
    "outlier_dims",
    "pearson",
    "quantize_int8",
    "rms",
    "saturation_fraction",
    "simulated_quantization",
    "token_mean_and_spread",
]

INT8_MAX = 127
"""Largest int8 level of the symmetric quantizer (-128 is not used, so the grid is symmetric)."""

FP8_MAX = 448.0
"""Largest finite value of float8 e4m3fn."""

WEIGHT_MODES = ("none", "int8", "fp8")
"""Valid ``weights`` of :func:`simulated_quantization`."""

ACTIVATION_MODES = ("none", "int8_tensor", "int8_token", "fp8")
"""Valid ``activations`` of :func:`simulated_quantization`."""


def _f64(x: Tensor) -> Tensor:
    """Detached float64 copy of ``x`` for accurate reductions (exact for every narrower float dtype)."""
    return x.detach().float().double()


# --------------------------------------------------------------------------------------------------
# Distribution statistics
# --------------------------------------------------------------------------------------------------


def rms(x: Tensor) -> float:
    """Root mean square ``sqrt(mean(x**2))`` over all elements; ``nan`` for an empty tensor."""
    v = _f64(x)
    if v.numel() == 0:
        return math.nan
    return math.sqrt(float(v.square().mean()))


def excess_kurtosis(x: Tensor) -> float:
    """Fisher excess kurtosis ``E[(x - mu)^4] / var^2 - 3`` over all elements of ``x``.

    Uses population moments (divide by n, no bias correction).  Reference values: Gaussian 0,
    uniform -1.2, Laplace 3; large positive values mean heavy tails (rare, very large entries).
    Returns ``nan`` when ``x`` is empty or has zero variance (a constant tensor), where kurtosis is
    undefined, and ``nan`` when ``x`` holds non-finite values.
    """
    v = _f64(x).flatten()
    if v.numel() == 0:
        return math.nan
    d = v - v.mean()
    var = float(d.square().mean())
    if not math.isfinite(var) or var == 0.0:
        return math.nan
    m4 = float(d.square().square().mean())
    return m4 / (var * var) - 3.0


def max_over_rms(x: Tensor) -> float:
    """``max|x| / rms(x)`` over all elements: 1 for a constant-magnitude tensor, about 5 for 1e6 Gaussian samples.

    Returns ``nan`` for an empty or all-zero tensor.
    """
    v = _f64(x)
    if v.numel() == 0:
        return math.nan
    r = math.sqrt(float(v.square().mean()))
    if r == 0.0:
        return math.nan
    return float(v.abs().max()) / r


def outlier_dims(
    layer_acts: Sequence[Tensor],
    threshold: float = 6.0,
    min_layer_frac: float = 0.25,
    min_token_frac: float = 0.06,
) -> list[int]:
    """Hidden dimensions that are outlier features in the sense of LLM.int8().

    Dettmers et al. 2022, "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale"
    (https://arxiv.org/abs/2208.07339), section 4.1: a hidden dimension is an outlier feature if its
    magnitude is at least 6 in at least 25% of the layers and in at least 6% of the sequence
    dimensions (tokens).

    Each element of ``layer_acts`` is one layer's activations of shape ``(..., d)``, flattened to
    ``(tokens, d)``; layers may have different token counts but must share ``d``.  Dimension ``j``
    *hits* a layer when ``count(|x[:, j]| >= threshold) / tokens >= min_token_frac``; it is returned
    when ``layers_hit / len(layer_acts) >= min_layer_frac``.  All three comparisons are ``>=``, and
    the fractions are computed from integer counts in float64, so e.g. 6 tokens of 100 meet 0.06.

    Returns the sorted list of such dimensions (``[]`` when ``layer_acts`` is empty).  Raises
    ``ValueError`` when the layers disagree on ``d`` or a layer is a 0-d tensor.
    """
    if len(layer_acts) == 0:
        return []
    dims = {int(a.shape[-1]) if a.dim() > 0 else -1 for a in layer_acts}
    if -1 in dims:
        raise ValueError("outlier_dims: every layer's activations need a hidden dimension (shape (..., d))")
    if len(dims) != 1:
        raise ValueError(f"outlier_dims: layers disagree on the hidden size d: {sorted(dims)}")
    (d,) = dims
    layers_hit = torch.zeros(d, dtype=torch.int64)
    for acts in layer_acts:
        flat = acts.detach().float().reshape(-1, d)
        tokens = flat.shape[0]
        if tokens == 0:
            continue
        counts = (flat.abs() >= threshold).sum(dim=0).cpu()
        frac = counts.double() / tokens
        layers_hit += (frac >= min_token_frac).long()
    layer_frac = layers_hit.double() / len(layer_acts)
    return [int(j) for j in torch.nonzero(layer_frac >= min_layer_frac).flatten().tolist()]


def saturation_fraction(y: Tensor, level: float = 0.99) -> float:
    """Fraction of elements with ``|y| > level`` (strict), e.g. of a tanh output; ``nan`` if ``y`` is empty."""
    v = y.detach().float()
    if v.numel() == 0:
        return math.nan
    return float((v.abs() > level).double().mean())


def token_mean_and_spread(x: Tensor) -> tuple[float, float]:
    """Split a residual stream into its token-shared part and the per-token variation around it.

    ``x`` has shape ``(B, T, d)`` (a ``(T, d)`` tensor is treated as ``B = 1``).  For each sequence
    ``b`` let ``m_b = mean_t x[b, t, :]`` (a d-vector).  Returns ``(mean, spread)`` with

    - ``mean = mean_b sqrt(mean_c m_b[c]**2)``: RMS over channels of the token mean, averaged over
      the batch;
    - ``spread = mean_b sqrt(mean_{t,c} (x[b, t, c] - m_b[c])**2)``: RMS of the per-token deviations
      from that mean, averaged over the batch.

    A large ``mean / spread`` ratio means that every token carries the same large vector.  A
    point-wise normalization such as DyT (``tanh(alpha * x)``) sees that shared component on every
    token and can saturate on it, squashing the per-token signal that rides on top; LayerNorm, which
    normalizes each token over channels, does not remove it either but never saturates.
    """
    v = _f64(x)
    if v.dim() == 2:
        v = v.unsqueeze(0)
    if v.dim() != 3:
        raise ValueError(f"token_mean_and_spread: expected shape (B, T, d) or (T, d), got {tuple(x.shape)}")
    if v.numel() == 0:
        return math.nan, math.nan
    m = v.mean(dim=1, keepdim=True)  # (B, 1, d)
    mean = m.square().mean(dim=(1, 2)).sqrt().mean()
    spread = (v - m).square().mean(dim=(1, 2)).sqrt().mean()
    return float(mean), float(spread)


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Pearson correlation of two equally long sequences of numbers.

    Returns ``nan`` for fewer than 2 points, when either sequence has zero variance, or when a value
    is non-finite; raises ``ValueError`` when the lengths differ.  The result is clipped to [-1, 1].
    """
    if len(xs) != len(ys):
        raise ValueError(f"pearson: sequences differ in length ({len(xs)} vs {len(ys)})")
    n = len(xs)
    if n < 2:
        return math.nan
    fx = [float(v) for v in xs]
    fy = [float(v) for v in ys]
    if not all(math.isfinite(v) for v in fx + fy):
        return math.nan
    mx = math.fsum(fx) / n
    my = math.fsum(fy) / n
    dx = [v - mx for v in fx]
    dy = [v - my for v in fy]
    sxx = math.fsum(a * a for a in dx)
    syy = math.fsum(b * b for b in dy)
    if sxx == 0.0 or syy == 0.0:
        return math.nan
    r = math.fsum(a * b for a, b in zip(dx, dy)) / math.sqrt(sxx * syy)
    return max(-1.0, min(1.0, r))


# --------------------------------------------------------------------------------------------------
# Fake quantization
# --------------------------------------------------------------------------------------------------


def quantize_int8(x: Tensor, dim: int | None = None) -> Tensor:
    """Symmetric absmax int8 fake quantization: round onto the int8 grid and dequantize.

    ``scale = absmax / 127``, ``q = clamp(round(x / scale), -127, 127)`` (``torch.round``: half to
    even), result ``q * scale`` in the dtype and shape of ``x``; arithmetic is in fp32.

    ``dim`` is the dimension *reduced over* to find the absmax (kept as size 1 and broadcast):

    - ``None``: one scale for the whole tensor (per tensor);
    - a weight ``(out, in)`` per output channel: ``dim=1`` (or ``-1``), one scale per row;
    - activations ``(..., d)`` per token: ``dim=-1``, one scale per token.

    A slice whose absmax is 0 gets scale 1 and comes back as zeros (no NaN).  Values of the form
    ``k * s`` with integer ``|k| <= 127``, ``max |k| = 127`` and every ``k * s`` exact in fp32 (e.g.
    any ``s`` with at most 17 significant bits) round-trip exactly; for other inputs the error per
    element is at most ``scale / 2`` (plus fp32 rounding).  Non-finite inputs give non-finite output.
    """
    if x.numel() == 0:
        return x.clone()
    v = x.float()
    if dim is None:
        absmax = v.abs().amax()
    else:
        absmax = v.abs().amax(dim=dim, keepdim=True)
    scale = torch.where(absmax > 0, absmax / INT8_MAX, torch.ones_like(absmax))
    q = torch.round(v / scale).clamp(-INT8_MAX, INT8_MAX)
    return (q * scale).to(x.dtype)


@functools.lru_cache(maxsize=1)
def fp8_supported() -> bool:
    """Whether this torch build has ``torch.float8_e4m3fn`` and can cast to and from it on CPU."""
    if not hasattr(torch, "float8_e4m3fn"):
        return False
    try:
        probe = torch.tensor([1.0, -0.5, 448.0]).to(torch.float8_e4m3fn).float()
    except (RuntimeError, TypeError, NotImplementedError):
        return False
    return bool(torch.equal(probe, torch.tensor([1.0, -0.5, 448.0])))


def cast_fp8(x: Tensor, scaled: bool = True) -> Tensor | None:
    """Fake-quantize ``x`` to float8 e4m3fn (round to nearest even) and back, in ``x``'s dtype and shape.

    With ``scaled=True`` one per-tensor scale maps ``max|x|`` to 448 (the largest e4m3fn value)
    before the cast and is divided out after it, so the whole e4m3 range is used; an all-zero tensor
    uses scale 1.  With ``scaled=False`` the values are cast as they are.  Either way magnitudes are
    first clamped to 448 (saturating, like hardware ``satfinite`` casts) and values below the
    smallest subnormal (2**-9) flush towards 0.  NaN stays NaN.

    Returns ``None`` when this torch build lacks float8 e4m3fn (see :func:`fp8_supported`).
    """
    if not fp8_supported():
        return None
    v = x.float()
    scale = None
    if scaled:
        absmax = v.abs().amax() if v.numel() else torch.zeros((), device=v.device)
        scale = torch.where(absmax > 0, FP8_MAX / absmax, torch.ones_like(absmax))
        v = v * scale
    y = v.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()
    if scale is not None:
        y = y / scale
    return y.to(x.dtype)


def _fp8_or_raise(x: Tensor) -> Tensor:
    out = cast_fp8(x, scaled=True)
    if out is None:  # guarded at context entry; kept for safety
        raise RuntimeError("float8 e4m3fn is not supported by this torch build")
    return out


def _identity(x: Tensor) -> Tensor:
    return x


_WEIGHT_QUANT: dict[str, Callable[[Tensor], Tensor]] = {
    "none": _identity,
    "int8": lambda w: quantize_int8(w, dim=-1),  # per output channel: absmax over the input dim
    "fp8": _fp8_or_raise,
}

_ACT_QUANT: dict[str, Callable[[Tensor], Tensor]] = {
    "none": _identity,
    "int8_tensor": lambda x: quantize_int8(x, dim=None),
    "int8_token": lambda x: quantize_int8(x, dim=-1),  # per token: absmax over the features
    "fp8": _fp8_or_raise,
}


def _quantized_forward(
    module: nn.Linear, wq: Callable[[Tensor], Tensor], aq: Callable[[Tensor], Tensor]
) -> Callable[[Tensor], Tensor]:
    def forward(input: Tensor) -> Tensor:
        return F.linear(aq(input), wq(module.weight), module.bias)

    return forward


_MISSING = object()


@contextmanager
def simulated_quantization(model: nn.Module, weights: str = "none", activations: str = "none") -> Iterator[nn.Module]:
    """While active, every ``nn.Linear`` in ``model`` computes with fake-quantized weights and/or inputs.

    ``weights``: ``"none"``, ``"int8"`` (per output channel, see :func:`quantize_int8` with
    ``dim=-1``) or ``"fp8"`` (per-tensor scaled e4m3, see :func:`cast_fp8`).
    ``activations`` (the Linear's input): ``"none"``, ``"int8_tensor"`` (one scale per tensor),
    ``"int8_token"`` (one scale per row over the last dim) or ``"fp8"`` (per-tensor scaled e4m3).
    The bias is never quantized.  Weights are quantized afresh on every call, so they track any
    update made inside the block.

    Implementation: each Linear (including subclasses) gets an instance-level ``forward`` that
    calls ``F.linear`` on the quantized tensors; on exit, normal or by exception, the previous
    instance attribute is put back (or removed), in reverse order.  Parameters and buffers are
    never written, so they are bitwise unchanged afterwards.  Code that reads ``linear.weight``
    without calling the module (e.g. ``nn.MultiheadAttention``'s fused path) is not affected.
    Nesting works: the innermost context wins while it is active.

    Raises ``ValueError`` (listing the valid names) for an unknown mode, and ``RuntimeError`` for
    ``"fp8"`` when this torch build lacks float8 e4m3fn.  Yields ``model``.
    """
    if weights not in _WEIGHT_QUANT:
        raise ValueError(f"simulated_quantization: unknown weights mode {weights!r}; valid: {list(WEIGHT_MODES)}")
    if activations not in _ACT_QUANT:
        raise ValueError(
            f"simulated_quantization: unknown activations mode {activations!r}; valid: {list(ACTIVATION_MODES)}"
        )
    if "fp8" in (weights, activations) and not fp8_supported():
        raise RuntimeError("simulated_quantization: float8 e4m3fn is not supported by this torch build")
    wq = _WEIGHT_QUANT[weights]
    aq = _ACT_QUANT[activations]
    saved: list[tuple[nn.Linear, object]] = []
    try:
        for module in model.modules():
            if isinstance(module, nn.Linear):
                saved.append((module, module.__dict__.get("forward", _MISSING)))
                module.forward = _quantized_forward(module, wq, aq)  # type: ignore[method-assign]
        yield model
    finally:
        for module, previous in reversed(saved):
            if previous is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.__dict__["forward"] = previous
