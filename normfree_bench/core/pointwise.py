"""Point-wise replacements of normalization, ``gamma * f(alpha * x + s) + beta``: the shared recipe of DyT,
Derf and the squashing-function ablations.

Usage::

    from normfree_bench import register_baseline
    from normfree_bench.core.pointwise import Erf, PointwiseBaseline

    @register_baseline
    class Derf(PointwiseBaseline):
        name = "derf"
        function = Erf
        shift = True

`PointwiseBaseline` is not registered itself. It holds DyT's recipe (Zhu et al., "Transformers without
Normalization", CVPR 2025, https://arxiv.org/abs/2503.10622): one `PointwiseNorm` at every norm site
(before attention, before the MLP, final), alpha_0 per site ("attention" / "other") from the width
table, the learnable sqrt(d) scalar after the LM embedding, and the ``sites_with_layernorm``
ablation. A subclass sets the point-wise ``function`` (a zero-argument callable returning an
``nn.Module``, e.g. ``nn.Tanh``), whether a learnable scalar ``shift`` s exists (init 0, as Derf,
https://arxiv.org/abs/2512.10938), and may override `PointwiseBaseline.default_alphas`.

This module also holds the point-wise functions that torch has no module for: `Erf`, `CenteredSigmoid`
and `ISRU`. ``model.norm_impl`` picks how every `PointwiseNorm` runs (normfree_bench.core.norm_impl):
``eager`` (these modules), ``compiled`` (``torch.compile``) or ``fused`` (one autograd Function,
normfree_bench.core.fused) for f = tanh (DyT), erf (Derf) and the centred sigmoid; hardtanh, softsign,
ISRU and the identity have no fused form (cheap vectorised ops already: eager or compiled only).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from normfree_bench.config import PLACEMENTS, ModelConfig
from normfree_bench.core.baseline import Baseline, ModelView
from normfree_bench.core.invariants import affine_problems
from normfree_bench.core.layers import PointwiseNorm, Scale, affine_flags, make_norm

# width -> (alpha_0 before attention, alpha_0 elsewhere), DyT paper Table 11 (LLaMA, depth-independent).
ALPHA_BY_WIDTH: dict[int, tuple[float, float]] = {
    1024: (1.0, 1.0), 2048: (1.0, 0.5), 4096: (0.8, 0.2), 8192: (0.2, 0.05)}
VIT_ALPHA = 0.5  # DyT paper §4, the non-LLM default


def width_rule_alphas(width: int, task: str) -> tuple[float, float]:
    """DyT's alpha_0 (attention, other) for a model of this width and task.

    LM: the largest width in Table 11 that is <= ``width``. No value is published below 1024, so
    1.0 / 1.0 there is an EXTRAPOLATION of the table, not a documented value. ViT: 0.5 everywhere.
    """
    if task == "vit":
        return VIT_ALPHA, VIT_ALPHA
    listed = [w for w in sorted(ALPHA_BY_WIDTH) if w <= width] or [min(ALPHA_BY_WIDTH)]
    return ALPHA_BY_WIDTH[listed[-1]]


# ---- point-wise functions ----------------------------------------------------------------------
class Erf(nn.Module):
    """``erf(u) = 2/sqrt(pi) * integral_0^u exp(-t^2) dt`` (Derf)."""

    fused_form: ClassVar[str] = "erf"  # its fused autograd Function (normfree_bench.core.fused)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return torch.erf(u)


class CenteredSigmoid(nn.Module):
    """``2 * sigmoid(u) - 1``: the logistic sigmoid rescaled to (-1, 1). Equal to ``tanh(u / 2)``."""

    fused_form: ClassVar[str] = "sigmoid"

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return 2.0 * torch.sigmoid(u) - 1.0


class ISRU(nn.Module):
    """The inverse square root unit ``u / sqrt(1 + u^2)``."""

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u * torch.rsqrt(1.0 + u * u)


# ---- the baseline ------------------------------------------------------------------------------
class PointwiseBaseline(Baseline):
    """DyT's recipe with the point-wise function ``function`` and an optional learnable shift."""

    norm_free = True
    # model.placement: a point-wise layer takes any site a norm can (the DyT paper places it pre-norm only; the
    # other placements put the same layer where that placement puts LayerNorm, alpha_0 "attn" at the attention
    # branch's site and "other" elsewhere, sandwich's output sites included).
    placements: ClassVar[tuple[str, ...]] = PLACEMENTS
    function: ClassVar[Callable[[], nn.Module]] = nn.Tanh
    shift: ClassVar[bool] = False  # a learnable scalar s inside f, init 0 (Derf)
    hparams: ClassVar[dict[str, Any]] = {
        "alpha_init": None,  # one value for every site; None = the class's per-site default rule
        "alpha_init_attn": None,
        "alpha_init_other": None,
        "embed_scale": True,  # the learnable sqrt(d) scalar after the embedding (LM only)
        "sites_with_layernorm": [],  # ablation: keep LayerNorm at these sites, e.g. ["final"]
        "affine": "both",  # gamma and beta (beta only with model.bias), gamma alone, or neither (AdaNorm's study)
    }
    hparam_types: ClassVar[dict[str, Any]] = {
        "alpha_init": float | None, "alpha_init_attn": float | None, "alpha_init_other": float | None,
        "sites_with_layernorm": list[Literal["attn", "mlp", "final", "attn_out", "mlp_out"]],
        "affine": Literal["both", "gamma", "none"],
    }

    def __init__(self, config: ModelConfig, **hparams: Any) -> None:
        super().__init__(config, **hparams)
        self.norm_free = not self.hp["sites_with_layernorm"]
        attn, other = self.default_alphas(config)
        if self.hp["alpha_init"] is not None:
            attn = other = self.hp["alpha_init"]
        self.alpha: dict[str, float] = {
            "attn": attn if self.hp["alpha_init_attn"] is None else self.hp["alpha_init_attn"],
            "other": other if self.hp["alpha_init_other"] is None else self.hp["alpha_init_other"],
        }

    @classmethod
    def default_alphas(cls, config: ModelConfig) -> tuple[float, float]:
        """alpha_0 (before attention, elsewhere) when no hyperparameter sets it: DyT's width rule."""
        return width_rule_alphas(config.d_model, config.task)

    def norm(self, dim: int, site: str, layer_idx: int, n_layers: int) -> nn.Module:
        if site in self.hp["sites_with_layernorm"]:
            return make_norm("layernorm", dim, bias=self.config.bias)
        alpha = self.alpha["attn" if site == "attn" else "other"]
        gain, bias = affine_flags(self.hp["affine"], self.config.bias)
        return PointwiseNorm(dim, type(self).function(), alpha_init=alpha, bias=bias,
                             shift=0.0 if self.shift else None, gain=gain)

    def embedding_scale(self, dim: int) -> nn.Module:
        if self.config.task == "lm" and self.hp["embed_scale"]:
            return Scale(math.sqrt(dim), learnable=True)
        return nn.Identity()

    def check_init(self, model: ModelView, batch: torch.Tensor) -> list[str]:
        problems = []
        for _, site, name, module in model.norm_sites():
            if isinstance(module, PointwiseNorm):
                problems += affine_problems(name, module, self.hp["affine"], self.config.bias)
                if (module.weight is not None and not torch.all(module.weight == 1)) \
                        or (module.bias is not None and not torch.all(module.bias == 0)):
                    problems.append(f"{name}: gamma must start at 1 and beta at 0")
                if module.shift is not None and not torch.all(module.shift == 0):
                    problems.append(f"{name}: the shift s must start at 0")
                alpha = self.alpha["attn" if site == "attn" else "other"]
                if not math.isclose(module.alpha.item(), alpha, rel_tol=1e-6):
                    problems.append(f"{name}: alpha must start at alpha_0 = {alpha:g}, got {module.alpha.item():.4g}")
        scale = getattr(model, "embed_scale", None)
        if self.config.task == "lm" and self.hp["embed_scale"] and isinstance(scale, Scale):
            want = math.sqrt(self.config.d_model)
            if not math.isclose(scale.scale.item(), want, rel_tol=1e-6):
                problems.append(f"embed_scale must start at sqrt(d) = {want:.4g}, got {scale.scale.item():.4g}")
        return problems
