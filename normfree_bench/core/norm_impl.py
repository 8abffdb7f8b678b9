"""How a norm layer runs (``model.norm_impl``): its eager module, ``torch.compile`` of it, or a fused form.

Usage: ``implement(norm, "fused")`` (one module); ``apply_norm_impl(model, "compiled")`` (every norm site)

The implementation never changes the scheme: the parameters, their names and (within rounding) the function
stay the same, so a baseline plugin writes its ``norm`` hook once and every implementation follows.

- ``eager``: the module as the baseline built it.
- ``compiled``: ``module.compile()``, in place (``torch.compile`` of its forward; the state dict keeps its keys).
- ``fused``: the fastest single-kernel form available.
  `PointwiseNorm` with f = tanh (DyT), erf (Derf) or the centred sigmoid: the autograd Functions of
  normfree_bench.core.fused (a C++ kernel on CPU for the tanh forms, built when the model is built;
  Triton kernels on CUDA). ``nn.LayerNorm`` (timm's too): its eager module,
  which already runs torch's fused native layer-norm kernel on CPU and CUDA. ``nn.RMSNorm``: its eager
  module, whose ``F.rms_norm`` dispatches to ``torch._fused_rms_norm``, a fused kernel on CUDA (on CPU,
  torch 2.14's is a composite of element-wise ops and reductions, and torch has no faster one).
  ``nn.Identity`` (a site without norm), `Scale` and `Shift` (NF's and Fixup's final sites: one element-wise
  op): the module itself.
  Any other module (hardtanh, softsign, ISRU, identity-f PointwiseNorms; a plugin's own norm class)
  has no fused form: ``fused`` is a `UserError` raised when the model is built, before any training.

``model.norm_impl`` applies to the norm sites (before attention, before the MLP, final); the per-head
QK-norms of ``model.qk_norm`` stay eager.
"""

from __future__ import annotations

from torch import nn

from normfree_bench.config import NORM_IMPLS, unknown_choice
from normfree_bench.core.baseline import ModelView
from normfree_bench.core.fused import TANH_SCALE, cpu_kernel, fused_form
from normfree_bench.core.layers import PointwiseNorm, Scale, Shift
from normfree_bench.errors import UserError

# Modules whose eager forward is already one fused kernel (torch's native norms) or a single element-wise op
# (Fixup's scalar bias, NF's scalar at the final site) or nothing: their "fused" implementation is the module.
NATIVE_FUSED: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.RMSNorm, nn.Identity, Scale, Shift)


def available_impls(module: nn.Module) -> tuple[str, ...]:
    """The implementations ``module`` supports, in `NORM_IMPLS` order."""
    if isinstance(module, NATIVE_FUSED):
        return NORM_IMPLS
    if isinstance(module, PointwiseNorm) and fused_form(module.fn) is not None:
        return NORM_IMPLS
    return tuple(i for i in NORM_IMPLS if i != "fused")


def fused_is_eager(module: nn.Module) -> bool:
    """True when ``fused`` is ``module`` itself (torch's native kernel, one op or no norm): nothing to time apart."""
    return isinstance(module, NATIVE_FUSED)


def describe(module: nn.Module) -> str:
    if isinstance(module, PointwiseNorm):
        return f"PointwiseNorm(f={type(module.fn).__name__})"
    return type(module).__name__


def check_impl(module: nn.Module, impl: str, where: str) -> None:
    """A one-line `UserError` when ``module`` (named ``where``) cannot run as ``impl``."""
    if impl not in NORM_IMPLS:
        raise UserError(unknown_choice(impl, NORM_IMPLS, "model.norm_impl"))
    valid = available_impls(module)
    if impl not in valid:
        raise UserError(f"model.norm_impl '{impl}' is not available for {where} ({describe(module)} has no {impl} "
                        f"form); valid for it: {', '.join(valid)}")


def implement(module: nn.Module, impl: str, where: str = "this norm") -> nn.Module:
    """``module`` made to run as ``impl``, in place (the same object is returned)."""
    check_impl(module, impl, where)
    if impl == "eager" or isinstance(module, nn.Identity):
        return module
    if impl == "compiled":
        module.compile()
    elif isinstance(module, PointwiseNorm):
        module.fused_form = fused_form(module.fn)
        if module.fused_form in TANH_SCALE and module.alpha.device.type == "cpu":
            cpu_kernel()  # built (or found built) now: a build failure stops before any training
    return module


def apply_norm_impl(model: ModelView, impl: str) -> None:
    """Every norm site of ``model`` made to run as ``impl``; every site is checked before any changes."""
    sites = [(name, module) for _, _, name, module in model.norm_sites()]
    for name, module in sites:
        check_impl(module, impl, f"baseline '{model.baseline.name}' at {name}")
    for name, module in sites:
        implement(module, impl, name)
