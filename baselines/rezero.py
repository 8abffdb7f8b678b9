"""ReZero: no normalization anywhere; each layer's branches are scaled by one learnable alpha, init 0.

Usage: ``normfree-bench train --baseline rezero``

Paper: Bachlechner et al., "ReZero is All You Need: Fast Convergence at Large Depth", UAI 2021,
https://arxiv.org/abs/2003.04887; official code ``majumderb/rezero`` (``rezero/transformer/rztx.py``).

Choices, following the official code:
- ``x <- x + alpha * Attn(x)``; ``x <- x + alpha * MLP(x)`` with ONE alpha per layer shared by both
  branches (``self.resweight``). ``per_branch: true`` gives the common re-implementation with one
  alpha per branch instead.
- No LayerNorm anywhere, including no final norm (the README's ``nn.TransformerEncoder(norm=None)``).
- Other weights keep the harness's default init; alpha gets no weight decay (1-D rule).
"""

import torch
from torch import nn

from normfree_bench import Baseline, register_baseline
from normfree_bench.core.invariants import branches_are_silent
from normfree_bench.core.layers import GatedResidual, Residual


@register_baseline
class ReZero(Baseline):
    name = "rezero"
    description = "no norms; x + alpha*F(x) with one alpha per layer, init 0"
    paper = "https://arxiv.org/abs/2003.04887"
    norm_free = True
    hparams = {"alpha_init": 0.0, "per_branch": False}

    def __init__(self, config, **hparams) -> None:
        super().__init__(config, **hparams)
        self._layer_alpha: dict[int, nn.Parameter] = {}

    def norm(self, dim: int, site: str, layer_idx: int, n_layers: int) -> nn.Module:
        return nn.Identity()

    def residual(self, dim: int, branch: str, layer_idx: int, n_layers: int) -> Residual:
        if self.hp["per_branch"]:
            return GatedResidual(nn.Parameter(torch.full((1,), float(self.hp["alpha_init"]))))
        if layer_idx not in self._layer_alpha:
            self._layer_alpha[layer_idx] = nn.Parameter(torch.full((1,), float(self.hp["alpha_init"])))
        return GatedResidual(self._layer_alpha[layer_idx])

    def check_init(self, model, batch):
        return branches_are_silent(model, batch) if self.hp["alpha_init"] == 0 else []
