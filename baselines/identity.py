"""DyT with no squashing: ``gamma * (alpha * x) + beta`` at every norm site (ablation group; expected to fail).

Usage: ``normfree-bench train --baseline identity``

Paper: Zhu, Chen, He, LeCun, Liu, "Transformers without Normalization", CVPR 2025,
https://arxiv.org/abs/2503.10622, §6.1 and Table 7: replacing tanh by the identity (alpha kept)
makes ViT-S and ViT-B training diverge. This is the negative control of the point-wise family:
the only thing left at a norm site is a learnable affine map, so nothing bounds the activations.

Faithful to the paper: everything but f is DyT's recipe (normfree_bench.core.pointwise.PointwiseBaseline):
one learnable scalar alpha per layer, per-channel gamma (1) and beta (0), all three sites replaced,
the sqrt(d) embedding scalar for LMs, DyT's alpha_0 rule (width table for LMs, 0.5 for ViTs).

Choices:
- alpha is kept although ``gamma * alpha`` is over-parametrised (the paper's ablation keeps it).
- ``norm_free`` stays True: there is no normalization anywhere, which is the point of the control.
- The divergence guard decides whether a run diverged; nothing here stabilises it.
"""

from torch import nn

from normfree_bench import register_baseline
from normfree_bench.core.pointwise import PointwiseBaseline


@register_baseline
class Identity(PointwiseBaseline):
    name = "identity"
    description = "DyT with tanh removed: gamma*(alpha x)+beta, no squashing (DyT Table 7; diverges there)"
    paper = "https://arxiv.org/abs/2503.10622"
    group = "ablation"
    function = nn.Identity
