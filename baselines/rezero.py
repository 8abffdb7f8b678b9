"""ReZero: no normalization anywhere; each layer's branches are scaled by one learnable alpha, init 0.

Usage: ``normfree-bench train --baseline rezero``

Paper: Bachlechner et al., "ReZero is All You Need: Fast Convergence at Large Depth", UAI 2021,
https://arxiv.org/abs/2003.04887; official code ``majumderb/rezero`` (``rezero/transformer/rztx.py``).

Choices, following the official code:
- ``x <- x + alpha * Attn(x)``; ``x <- x + alpha * MLP(x)`` with ONE alpha per layer shared by both
  branches (``self.resweight``). ``per_branch: true`` gives the common re-implementation with one
  alpha per branch instead.
- No LayerNorm anywhere, including no final norm (the README's ``nn.TransformerEncoder(norm=None)``).
- The rest of the network (``model.init: paper``): ``rztx.py`` has no init code of its own, so the
  official Transformer LM is the one of the ReZero tutorial (``tbachlechner/ReZero-examples``,
  ``ReZero-Deep_Fast_Transformer.ipynb``, ``TransformerModel``): Xavier-uniform on every weight matrix
  (``_reset_parameters``; the fused q/k/v matrix as one, as ``nn.MultiheadAttention``'s
  ``in_proj_weight``), Linear biases at PyTorch's default, the token embedding and the head
  U(-0.1, 0.1) with a zero head bias (``init_weights``), and the embedding multiplied by a fixed
  sqrt(d) before the positions are added (``self.encoder(src) * math.sqrt(self.ninp)``): the
  ``xavier`` rule of normfree_bench.core.inits and a fixed sqrt(d) scale on the tokens only. The
  tutorial's positions are fixed sinusoids; this model's are learned, N(0, 0.02), and not scaled.
  (The README route of ``rztx.py``, ``nn.TransformerEncoder``, would start every layer as a copy of
  one PyTorch-default layer; the tutorial is the recipe its authors trained an LM with.)
  ``model.init: shared`` gives the harness's GPT-2 init and no embedding scale instead.
- Optimizer: the harness's AdamW with one group rule for all schemes (the tutorial trains with
  Adagrad, lr 0.01, clip 0.5); alpha gets no weight decay (1-D rule).
"""

import math

import torch
from torch import nn

from normfree_bench import Baseline, register_baseline
from normfree_bench.core.invariants import gains_start_at
from normfree_bench.core.layers import GatedResidual, Residual, Scale


@register_baseline
class ReZero(Baseline):
    name = "rezero"
    description = "no norms; x + alpha*F(x) with one alpha per layer, init 0"
    paper = "https://arxiv.org/abs/2003.04887"
    norm_free = True
    hparams = {"alpha_init": 0.0, "per_branch": False}
    scale_positions = False  # the tutorial adds its positions after scaling the token embedding

    def __init__(self, config, **hparams) -> None:
        super().__init__(config, **hparams)
        self._layer_alpha: dict[int, nn.Parameter] = {}

    def norm(self, dim: int, site: str, layer_idx: int, n_layers: int) -> nn.Module:
        return nn.Identity()

    def network_init(self) -> str:
        return "xavier"

    def embedding_scale(self, dim: int) -> nn.Module:
        if self.config.init == "paper" and self.config.task == "lm":
            return Scale(math.sqrt(dim), learnable=False)
        return nn.Identity()

    def residual(self, dim: int, branch: str, layer_idx: int, n_layers: int) -> Residual:
        if self.hp["per_branch"]:
            return GatedResidual(nn.Parameter(torch.full((1,), float(self.hp["alpha_init"]))))
        if layer_idx not in self._layer_alpha:
            self._layer_alpha[layer_idx] = nn.Parameter(torch.full((1,), float(self.hp["alpha_init"])))
        return GatedResidual(self._layer_alpha[layer_idx])

    def check_init(self, model, batch):
        return gains_start_at(model, batch, self.hp["alpha_init"])
