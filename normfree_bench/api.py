"""The baseline plugin API: one class whose hooks default to the standard pre-LN Transformer.

Usage::

    from normfree_bench import Baseline, register_baseline

    @register_baseline
    class MyNorm(Baseline):
        name = "mynorm"
        description = "RMSNorm at every site"
        paper = "https://arxiv.org/abs/1910.07467"

        def norm(self, dim, site, layer_idx, n_layers):
            return torch.nn.RMSNorm(dim)

A baseline overrides only what differs from pre-LN. The model (normfree_bench.model) names no
scheme: every block asks its baseline for the norm at each site (``attn``, ``mlp``, ``final``), the
residual combine of each branch, the MLP activation and the embedding scale, and the baseline then
initialises the built model, chooses its optimizer groups and clips its gradients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch
from timm.optim import param_groups_weight_decay
from torch import nn

from normfree_bench.errors import UserError
from normfree_bench.layers import Residual, make_norm

if TYPE_CHECKING:
    from normfree_bench.config import ModelConfig
    from normfree_bench.model import Transformer


class Baseline:
    """A normalization scheme. Subclass it, set the metadata, override hooks, decorate with
    `register_baseline`. One instance is made per model, so a baseline may keep per-model state
    (for example one gain shared by both branches of a layer)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    norm_free: ClassVar[bool] = False  # True: no LayerNorm or RMSNorm may remain in the model
    # "main" baselines run when a sweep names none; "ablation" ones only when named (suite ablation).
    group: ClassVar[str] = "main"
    hparams: ClassVar[dict[str, Any]] = {}  # named hyperparameters and their defaults

    def __init__(self, config: ModelConfig, **hparams: Any) -> None:
        unknown = sorted(set(hparams) - set(self.hparams))
        if unknown:
            valid = ", ".join(sorted(self.hparams)) or "(none)"
            raise UserError(f"unknown hyperparameter '{unknown[0]}' for baseline '{self.name}'; valid: {valid}")
        self.config = config
        self.hp: dict[str, Any] = {**self.hparams, **hparams}

    # ---- construction hooks, called by the model while it is built ---------------------------
    def norm(self, dim: int, site: str, layer_idx: int, n_layers: int) -> nn.Module:
        """The module at norm site ``site`` (attn, mlp or final; final has layer_idx == n_layers)."""
        return make_norm("layernorm", dim, bias=self.config.bias)

    def residual(self, dim: int, branch: str, layer_idx: int, n_layers: int) -> Residual:
        """The residual combine around branch ``branch`` (attn or mlp) of block ``layer_idx``."""
        return Residual()

    def activation(self) -> nn.Module:
        """The MLP's activation: GELU for the gelu MLP, SiLU for the SwiGLU gate."""
        return nn.SiLU() if self.config.mlp == "swiglu" else nn.GELU()

    def qk_norm(self, head_dim: int, which: str, layer_idx: int, n_layers: int) -> nn.Module:
        """The norm applied per head to queries (``which == "q"``) or keys (``"k"``) before the dot
        product; by default ``model.qk_norm`` (none, layernorm or rmsnorm over head_dim), so that any
        baseline can run the qk-layernorm ablation of Wortsman et al. 2023."""
        return make_norm(self.config.qk_norm, head_dim, bias=self.config.bias)

    def embedding_scale(self, dim: int) -> nn.Module:
        """Applied to the token (+ position) embedding before the first block."""
        return nn.Identity()

    # ---- hooks called on the built model ------------------------------------------------------
    def init_(self, model: Transformer) -> None:
        """Re-initialise after the model's default (GPT-2 style) init; runs under no_grad."""

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimizer groups. Default (timm rule): no weight decay on 1-D parameters and biases.
        A group may carry ``lr_scale``, a multiplier on the scheduled LR."""
        return param_groups_weight_decay(model, weight_decay=weight_decay)

    def clip_gradients(self, model: nn.Module, max_norm: float) -> torch.Tensor:
        """Clip gradients and return the global gradient norm before clipping."""
        params = [p for p in model.parameters() if p.grad is not None]
        if max_norm > 0:
            return torch.nn.utils.clip_grad_norm_(params, max_norm)
        return torch.nn.utils.get_total_norm([p.grad for p in params])

    def check_init(self, model: Transformer, batch: torch.Tensor) -> list[str]:
        """The scheme's invariants at init; return one message per violated invariant."""
        return []

    def learnable_scalars(self, model: nn.Module) -> dict[str, float]:
        """Every learnable scalar (numel == 1) parameter, by name, for diagnostics."""
        return {n: p.item() for n, p in model.named_parameters() if p.numel() == 1}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, hparams={self.hp})"
