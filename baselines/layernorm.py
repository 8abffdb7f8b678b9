"""Pre-LN Transformer: LayerNorm before attention, before the MLP and before the head (the reference).

Usage: ``normfree-bench train --baseline layernorm``

Paper: Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
https://arxiv.org/abs/2002.04745 (pre-LN placement); LayerNorm: Ba et al. 2016,
https://arxiv.org/abs/1607.06450. Every hook is the API default: gamma = 1, beta = 0
(beta only with ``model.bias``), eps = 1e-5, GPT-2 init, no weight decay on 1-D parameters.
"""

from normfree_bench import Baseline, register_baseline


@register_baseline
class LayerNorm(Baseline):
    name = "layernorm"
    description = "pre-LN Transformer: LayerNorm at the attention, MLP and final sites"
    paper = "https://arxiv.org/abs/2002.04745"
