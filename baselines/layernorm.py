"""Pre-LN Transformer: LayerNorm before attention, before the MLP and before the head (the reference).

Usage: ``normfree-bench train --baseline layernorm``

Paper: Xiong et al. 2020, "On Layer Normalization in the Transformer Architecture",
https://arxiv.org/abs/2002.04745 (pre-LN placement); LayerNorm: Ba et al. 2016,
https://arxiv.org/abs/1607.06450. Every hook is the API default: gamma = 1, beta = 0
(beta only with ``model.bias``), eps = 1e-5, GPT-2 init, no weight decay on 1-D parameters.
``affine`` (the gain/bias study after Xu et al. 2019, AdaNorm, https://arxiv.org/abs/1911.07013): ``both``
(default: ``elementwise_affine`` and, with ``model.bias``, the bias), ``gamma`` (the gain alone) or ``none``
(``elementwise_affine=False``).

``model.placement`` may move the LayerNorms (post: Vaswani et al. 2017's post-LN; res_post: Swin-V2's;
sandwich: Sandwich-LN / Peri-LN, with a second LayerNorm on each branch's output); every site is the same
LayerNorm wherever it sits.
``check_init``: every site is that LayerNorm, gamma = 1 and beta = 0, eps = 1e-5, on the batch's streams,
with exactly the gain and bias ``affine`` asks for.
"""

from typing import Literal

from torch import nn

from normfree_bench import Baseline, register_baseline
from normfree_bench.config import PLACEMENTS
from normfree_bench.core.invariants import affine_problems, sites_normalize
from normfree_bench.core.layers import affine_flags, make_norm

EPS = 1e-5  # the API default norm's (make_norm), PyTorch's and GPT-2's


@register_baseline
class LayerNorm(Baseline):
    name = "layernorm"
    description = "pre-LN Transformer: LayerNorm at the attention, MLP and final sites"
    paper = "https://arxiv.org/abs/2002.04745"
    hparams = {"affine": "both"}
    placements = PLACEMENTS  # pre (its own), post, res_post, sandwich: model.placement
    hparam_types = {"affine": Literal["both", "gamma", "none"]}

    def norm(self, dim, site, layer_idx, n_layers):
        gain, bias = affine_flags(self.hp["affine"], self.config.bias)
        return make_norm("layernorm", dim, bias=bias, eps=EPS, gain=gain)

    def check_init(self, model, batch):
        problems = [p for _, _, name, module in model.norm_sites() if isinstance(module, nn.LayerNorm)
                    for p in affine_problems(name, module, self.hp["affine"], self.config.bias)]
        return problems + sites_normalize(model, batch, "layernorm", eps=EPS)
