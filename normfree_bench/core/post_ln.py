"""The fairseq post-LN recipe that DeepNorm and Admin share: ``LN(skip(x) + F(x))`` after every sublayer.

Usage::

    from normfree_bench import register_baseline
    from normfree_bench.core.post_ln import FairseqPostLN

    @register_baseline
    class DeepNorm(FairseqPostLN):
        name = "deepnorm"
        def residual(self, dim, branch, layer_idx, n_layers): ...  # the scheme's own skip
        def init_(self, model): ...                                # and its own init on top

`FairseqPostLN` is not registered itself. Both stabilisers' official code is fairseq's Transformer
(``microsoft/torchscale``, ``LiyuanLucasLiu/Transformer-Clinic``), so both share: post-LN as the only
``model.placement`` (no final LayerNorm), LayerNorm with fairseq's eps `LN_EPS` at every site, the `fairseq`
network init, and the token embedding times a fixed sqrt(d) with the positions added after it
(``scale_positions = False``); a ViT gets no embedding scale. Both are ``ablation``-group baselines: a sweep
runs them when named (the post-ln suite does).
"""

from __future__ import annotations

import math

from torch import nn

from normfree_bench.core.baseline import Baseline
from normfree_bench.core.layers import Scale, make_norm

LN_EPS = 1e-5  # fairseq's (and torchscale's layernorm_eps) LayerNorm eps


class FairseqPostLN(Baseline):
    placements = ("post",)
    group = "ablation"  # named explicitly (the post-ln suite runs them); the default sweep keeps its seven
    scale_positions = False  # fairseq adds its positions after scaling the token embedding

    def norm(self, dim: int, site: str, layer_idx: int | None, n_layers: int) -> nn.Module:
        return make_norm("layernorm", dim, bias=self.config.bias, eps=LN_EPS)

    def network_init(self) -> str:
        return "fairseq"

    def embedding_scale(self, dim: int) -> nn.Module:
        if self.config.task == "lm":
            return Scale(math.sqrt(dim), learnable=False)
        return nn.Identity()
