"""Pre-LN Transformer: LayerNorm before attention, before the MLP and before the head (the reference).

Usage: ``normfree-bench train --baseline layernorm``

Paper: Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
https://arxiv.org/abs/2002.04745 (pre-LN placement); LayerNorm: Ba et al. 2016,
https://arxiv.org/abs/1607.06450. Every hook is the API default: gamma = 1, beta = 0
(beta only with ``model.bias``), eps = 1e-5, GPT-2 init, no weight decay on 1-D parameters.
``check_init``: every site is that LayerNorm, gamma = 1 and beta = 0, eps = 1e-5, on the batch's streams.
"""

from normfree_bench import Baseline, register_baseline
from normfree_bench.core.invariants import sites_normalize

EPS = 1e-5  # the API default norm's (make_norm), PyTorch's and GPT-2's


@register_baseline
class LayerNorm(Baseline):
    name = "layernorm"
    description = "pre-LN Transformer: LayerNorm at the attention, MLP and final sites"
    paper = "https://arxiv.org/abs/2002.04745"

    def check_init(self, model, batch):
        return sites_normalize(model, batch, "layernorm", eps=EPS)
