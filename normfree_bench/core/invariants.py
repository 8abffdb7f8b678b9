"""Checks that baselines declare about their model at init (used by ``Baseline.check_init``).

Usage: ``problems = branches_are_silent(model, batch)  # [] when every block is the identity``;
``problems = gains_start_at(model, batch, 0.0)  # ReZero's / SkipInit's residual gains at their init``;
``problems = sites_normalize(model, batch, "rmsnorm", eps=1e-6)  # [] when every site is that norm at init``
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from normfree_bench.core.baseline import ModelView
from normfree_bench.core.layers import affine_flags


@torch.no_grad()
def block_streams(model: ModelView, batch: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream before the first block and after every block."""
    x = model.embed(batch)
    streams = [x]
    for block in model.blocks:
        x = block(x)
        streams.append(x)
    return streams


def branches_are_silent(model: ModelView, batch: torch.Tensor, atol: float = 0.0) -> list[str]:
    """Every residual branch contributes nothing at init: each block returns its input."""
    streams = block_streams(model, batch)
    return [
        f"block {i} changes the residual stream at init (max |delta| = {(b - a).abs().max().item():.3g})"
        for i, (a, b) in enumerate(zip(streams, streams[1:]))
        if not torch.allclose(a, b, rtol=0.0, atol=atol)
    ]


def gains_start_at(model: ModelView, batch: torch.Tensor, value: float) -> list[str]:
    """Every residual gate ``x + gain * F(x)`` starts at ``value``: for 0, every block is the identity on
    ``batch`` (`branches_are_silent`, which also catches a branch that leaks past its gate); otherwise each
    site's gain equals ``value``."""
    if value == 0:
        return branches_are_silent(model, batch)
    return [f"{name}: alpha must start at {value:g}" for _, _, name, res in model.residual_sites()
            if not torch.all(res.gain == value)]


@torch.no_grad()
def sites_normalize(model: ModelView, batch: torch.Tensor, kind: str, eps: float | None = None,
                    atol: float = 1e-4) -> list[str]:
    """Every norm site (attn and mlp of each block, final) is the per-token normalisation ``kind`` with an
    identity affine map at init: on ``batch``, its output equals ``(x - mean) / sqrt(var + eps)``
    (``layernorm``) or ``x / sqrt(mean(x^2) + eps)`` (``rmsnorm``) of its input over the channels, ``eps``
    being the documented one (None: the module's own). A site that is missing, of another kind, with
    gamma != 1 or beta != 0, or with another eps fails (where that eps shows at the batch's scale)."""
    if kind not in ("layernorm", "rmsnorm"):
        raise ValueError(f"unknown norm kind {kind!r}; valid: layernorm, rmsnorm")
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    sites = list(model.norm_sites())

    def keep(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            seen.setdefault(name, (args[0].detach(), out.detach()))  # first call: the site's own input
        return hook

    hooks = [module.register_forward_hook(keep(name)) for _, _, name, module in sites]
    try:
        model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    problems = []
    for _, _, name, module in sites:
        if name not in seen:
            problems.append(f"{name}: the norm site is not on the forward path")
            continue
        x, y = (t.double() for t in seen[name])
        site_eps = eps if eps is not None else getattr(module, "eps", None)
        site_eps = torch.finfo(seen[name][0].dtype).eps if site_eps is None else site_eps
        if kind == "layernorm":
            x = x - x.mean(dim=-1, keepdim=True)
        want = x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + site_eps)
        if y.shape != want.shape or not torch.allclose(y, want, rtol=0.0, atol=atol):
            err = (y - want).abs().max().item() if y.shape == want.shape else float("nan")
            problems.append(f"{name}: {type(module).__name__} is not the identity-affine {kind} with eps {site_eps:g} "
                            f"at init (max |output - expected| = {err:.3g})")
    return problems


def affine_problems(name: str, module: nn.Module, affine: str, model_bias: bool) -> list[str]:
    """The norm ``module`` at site ``name`` has the gain and bias ``affine`` asks for (`affine_flags`), no more."""
    gain, bias = affine_flags(affine, model_bias)
    problems = []
    if (getattr(module, "weight", None) is not None) != gain:
        problems.append(f"{name}: affine '{affine}' {'needs a' if gain else 'takes no'} gain gamma")
    if (getattr(module, "bias", None) is not None) != bias:
        problems.append(f"{name}: affine '{affine}' with model.bias={model_bias} {'needs a' if bias else 'takes no'} "
                        "bias beta")
    return problems
