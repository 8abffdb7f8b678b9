"""Small building blocks that baselines hand to the model: residual combines, point-wise norms, scalars.

Usage: ``res = GatedResidual(nn.Parameter(torch.zeros(1)))``; ``y = res.combine(x, branch(res.branch_input(x)))``
"""

from __future__ import annotations

import torch
from torch import nn

from normfree_bench.core.fused import fused_pointwise

Site = str  # one of SITES
SITES: tuple[Site, ...] = ("attn", "mlp", "final", "attn_out", "mlp_out")  # the last two: sandwich placement only
BRANCHES: tuple[Site, ...] = ("attn", "mlp")


class Residual(nn.Module):
    """The standard residual: the branch sees ``x`` and the block returns ``x + y``."""

    def branch_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def combine(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + y


class _GainResidual(Residual):
    """A residual with a gain. A Parameter gain is learnable (the same Parameter may be shared by several
    branches); a plain tensor is a fixed buffer. Shape (1,) for a scalar, (C,) for a per-channel gain."""

    def __init__(self, gain: torch.Tensor) -> None:
        super().__init__()
        if isinstance(gain, nn.Parameter):
            self.gain = gain
        else:
            self.register_buffer("gain", gain)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.gain.shape)}, learnable={isinstance(self.gain, nn.Parameter)}"


class GatedResidual(_GainResidual):
    """``x + gain * y``: the branch is scaled (ReZero, SkipInit, LayerScale, the OP block)."""

    def combine(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + self.gain * y


class SkipScaledResidual(_GainResidual):
    """``gain * x + y``: the skip, not the branch, is scaled (DeepNet's ``x * alpha + F(x)``, Admin's
    ``omega * x + F(x)``)."""

    def combine(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.gain * x + y


class Scale(nn.Module):
    """Multiply by a scalar: learnable (a Parameter) or fixed (a buffer)."""

    def __init__(self, value: float, learnable: bool = True) -> None:
        super().__init__()
        tensor = torch.full((1,), float(value))
        if learnable:
            self.scale = nn.Parameter(tensor)
        else:
            self.register_buffer("scale", tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"value={self.scale.item():.4g}, learnable={isinstance(self.scale, nn.Parameter)}"


class Shift(nn.Module):
    """Add a learnable scalar bias (Fixup's scalar biases), initialised to ``value``."""

    def __init__(self, value: float = 0.0) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.full((1,), float(value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class PointwiseNorm(nn.Module):
    """``gamma * f(alpha * x + s) + beta`` with a scalar alpha: DyT (f = tanh) and its relatives.

    ``s`` is an optional learnable scalar shift (Derf's); ``shift=None`` creates no parameter, so a
    DyT state dict has exactly ``alpha``, ``weight`` and ``bias``; ``gain=False`` drops gamma (``weight``) and
    ``bias=False`` beta, for the affine study (``hparams.<scheme>.affine``). Computed in fp32 and cast back, as
    the official DyT module does (its 1-element fp32 alpha promotes bf16 activations) and RMSNorm upcasts.

    ``fused_form`` (None: the eager ops below) selects the fused autograd Function of
    normfree_bench.core.fused, e.g. ``"tanh"``; `normfree_bench.core.norm_impl.implement` sets it for
    ``model.norm_impl: fused``. The parameters and state dict are the same either way.
    """

    def __init__(self, dim: int, fn: nn.Module, alpha_init: float, bias: bool = True,
                 shift: float | None = None, fused_form: str | None = None, gain: bool = True) -> None:
        super().__init__()
        self.fn = fn
        self.alpha = nn.Parameter(torch.full((1,), float(alpha_init)))
        self.weight = nn.Parameter(torch.ones(dim)) if gain else None
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None
        self.shift = nn.Parameter(torch.full((1,), float(shift))) if shift is not None else None
        self.fused_form = fused_form

    def squash(self, x: torch.Tensor) -> torch.Tensor:
        """``f(alpha * x + s)`` in fp32, before gamma and beta (for saturation diagnostics: the share of
        entries with ``|squash(x)| > 0.99``)."""
        u = self.alpha.float() * x.float()
        if self.shift is not None:
            u = u + self.shift.float()
        return self.fn(u)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_form is not None:
            weight = self.weight if self.weight is not None else torch.ones(x.shape[-1], device=x.device)
            return fused_pointwise(x, self.alpha, weight, self.bias, self.shift, self.fused_form)
        y = self.squash(x)
        if self.weight is not None:
            y = y * self.weight.float()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        shift = "" if self.shift is None else f", shift_init={self.shift.item():.4g}"
        fused = "" if self.fused_form is None else f", fused={self.fused_form}"
        return (f"alpha_init={self.alpha.item():.4g}, gain={self.weight is not None}, bias={self.bias is not None}"
                f"{shift}{fused}")


# A norm's learnable affine map (``hparams.<scheme>.affine``): gain and bias, gain only, or neither.
AFFINES = ("both", "gamma", "none")


def affine_flags(affine: str, model_bias: bool) -> tuple[bool, bool]:
    """(gain, bias) of a norm site under ``affine``; the bias only where the model has biases
    (``model.bias``, as every linear layer): ``both`` in the LLaMA flavour is a gain alone."""
    return affine != "none", model_bias and affine == "both"


def make_norm(kind: str, dim: int, bias: bool, eps: float = 1e-5, gain: bool = True) -> nn.Module:
    """``make_norm("layernorm" | "rmsnorm" | "none", dim, bias)``: the standard norm modules (``gain=False``:
    LayerNorm without its affine map, ``elementwise_affine=False``)."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, elementwise_affine=gain, bias=bias and gain)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=eps)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm kind {kind!r}; valid: layernorm, rmsnorm, none")
