"""SkipInit: no normalization; a learnable scalar gain at the end of every residual branch, init 0.

Usage: ``normfree-bench train --baseline skipinit``

Paper: De & Smith, "Batch Normalization Biases Residual Blocks Towards the Identity Function in Deep
Networks", NeurIPS 2020, https://arxiv.org/abs/2002.10444; reference code by the same group:
``google-deepmind/deepmind-research:nfnets/skipinit_resnet.py``
(``out * get_parameter('skip_gain', (), init=zeros) + shortcut``).

Choices:
- One scalar gain per *branch* (attention and MLP separately), unlike ReZero's one per layer.
  ``gain_init`` may be set to a small constant (the paper allows <~ 1/sqrt(depth)); default 0.
- No norm at any site, including the final one (the reference network has no normalization).
- The head is zero-initialised, as the reference ResNet's classifier (``fc_init=jnp.zeros``).
- The rest of the network (``model.init: paper``): the reference builds every layer with Haiku's
  default, a normal of std 1/sqrt(fan_in) cut at +-2 std without rescaling (variance 0.774/fan_in) for
  convolutions and linears with zero biases, and ``hk.Embed``'s std-1 truncated normal for embeddings:
  the ``lecun`` rule of normfree_bench.core.inits (no SkipInit Transformer exists; this is the same
  group's init applied to this Transformer). ``model.init: shared`` gives the harness's GPT-2 init instead.
"""

import torch
from torch import nn

from normfree_bench import Baseline, register_baseline
from normfree_bench.core.invariants import gains_start_at
from normfree_bench.core.layers import GatedResidual, Residual


@register_baseline
class SkipInit(Baseline):
    name = "skipinit"
    description = "no norms; x + g*F(x) with a scalar gain per branch, init 0"
    paper = "https://arxiv.org/abs/2002.10444"
    norm_free = True
    hparams = {"gain_init": 0.0, "zero_head": True}

    def norm(self, dim: int, site: str, layer_idx: int, n_layers: int) -> nn.Module:
        return nn.Identity()

    def network_init(self) -> str:
        return "lecun"

    def residual(self, dim: int, branch: str, layer_idx: int, n_layers: int) -> Residual:
        return GatedResidual(nn.Parameter(torch.full((1,), float(self.hp["gain_init"]))))

    def init_(self, model) -> None:
        if self.hp["zero_head"]:
            nn.init.zeros_(model.head.weight)
            if model.head.bias is not None:
                nn.init.zeros_(model.head.bias)

    def check_init(self, model, batch):
        return gains_start_at(model, batch, self.hp["gain_init"])
