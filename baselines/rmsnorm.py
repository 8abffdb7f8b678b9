"""Pre-norm Transformer with RMSNorm at every site (the LLaMA recipe's norm).

Usage: ``normfree-bench train --baseline rmsnorm``

Paper: Zhang & Sennrich 2019, "Root Mean Square Layer Normalization",
https://arxiv.org/abs/1910.07467. ``y = gamma * x / sqrt(mean(x^2) + eps)``: no mean subtraction and
no beta. eps = 1e-6 as HF ``LlamaRMSNorm`` (the DyT efficiency benchmark's baseline); ``torch.nn.RMSNorm``.
``model.placement`` may move the RMSNorms (post, res_post, sandwich), each site the same RMSNorm.
``check_init``: every site is that RMSNorm, gamma = 1, eps = 1e-6, on the batch's streams.
"""

from torch import nn

from normfree_bench import Baseline, register_baseline
from normfree_bench.config import PLACEMENTS
from normfree_bench.core.invariants import sites_normalize

EPS = 1e-6


@register_baseline
class RMSNorm(Baseline):
    name = "rmsnorm"
    description = "pre-norm Transformer with RMSNorm at the attention, MLP and final sites"
    paper = "https://arxiv.org/abs/1910.07467"
    placements = PLACEMENTS  # pre (its own), post, res_post, sandwich: model.placement

    def norm(self, dim: int, site: str, layer_idx: int, n_layers: int) -> nn.Module:
        return nn.RMSNorm(dim, eps=EPS)

    def check_init(self, model, batch):
        return sites_normalize(model, batch, "rmsnorm", eps=EPS)
