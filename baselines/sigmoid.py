"""DyT with a sigmoid: ``gamma * (2 * sigmoid(alpha * x) - 1) + beta`` at every norm site (ablation group).

Usage: ``normfree-bench train --baseline sigmoid``

Paper: Zhu, Chen, He, LeCun, Liu, "Transformers without Normalization", CVPR 2025,
https://arxiv.org/abs/2503.10622, §6.1 and Table 7 (squashing functions): tanh replaced by a
sigmoid trains, but ViT-B reaches 81.6% against 82.5% with tanh.

Faithful to the paper: everything but f is DyT's recipe (normfree_bench.core.pointwise.PointwiseBaseline):
one learnable scalar alpha per layer, per-channel gamma (1) and beta (0), all three sites replaced,
the sqrt(d) embedding scalar for LMs, DyT's alpha_0 rule (width table for LMs, 0.5 for ViTs).

Choices where the literature is ambiguous:
- Which sigmoid: the text we follow names the function only as "sigmoid" and does not say whether
  it was re-centred. We use the zero-centred ``2 * sigmoid(u) - 1``: it has tanh's range (-1, 1), is
  odd, and Derf (https://arxiv.org/abs/2512.10938, §3) finds zero-centredness necessary. The other
  common choice, ``sigmoid(u) - 1/2``, is the same curve halved (range (-1/2, 1/2)), which gamma
  would have to undo; the plain sigmoid adds a vertical offset of 1/2 to every channel.
- Note the identity ``2 * sigmoid(u) - 1 = tanh(u / 2)``: this plugin is DyT with alpha halved
  (slope 1/2 at 0 instead of 1), so it ablates the alpha scale, not the shape of the curve. A run
  with ``sigmoid.alpha_init: 2 * a`` computes exactly DyT with ``alpha_init: a``; the two then differ
  only through the optimizer (Adam's steps are about lr in size whatever the parametrisation, so a
  doubled alpha moves half as fast in relative terms). We keep DyT's alpha_0 unchanged, so that
  the plugin answers the paper's question: what happens when tanh is swapped, all else equal.
- No shift s (DyT has none); fp32 compute under autocast, as DyT.
"""

from normfree_bench import register_baseline
from normfree_bench.core.pointwise import CenteredSigmoid, PointwiseBaseline


@register_baseline
class Sigmoid(PointwiseBaseline):
    name = "sigmoid"
    description = "DyT with tanh replaced by 2*sigmoid(alpha x)-1 = tanh(alpha x / 2) (DyT Table 7)"
    paper = "https://arxiv.org/abs/2503.10622"
    group = "ablation"
    function = CenteredSigmoid
