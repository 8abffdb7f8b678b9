"""DyT with hardtanh: ``gamma * clip(alpha * x, -1, 1) + beta`` at every norm site (ablation group).

Usage: ``normfree-bench train --baseline hardtanh``

Paper: Zhu, Chen, He, LeCun, Liu, "Transformers without Normalization", CVPR 2025,
https://arxiv.org/abs/2503.10622, §6.1 and Table 7 (squashing functions): tanh replaced by
hardtanh trains, but ViT-B reaches 82.2% against 82.5% with tanh.

Faithful to the paper: everything but f is DyT's recipe (normfree_bench.core.pointwise.PointwiseBaseline):
one learnable scalar alpha per layer, per-channel gamma (1) and beta (0), all three sites replaced,
the sqrt(d) embedding scalar for LMs, DyT's alpha_0 rule (width table for LMs, 0.5 for ViTs).

Choices where the literature is ambiguous:
- hardtanh is ``torch.nn.Hardtanh()``, i.e. clip to [-1, 1] with slope 1 inside, the same range and
  slope at 0 as tanh; Derf's Table 7 calls this function "linearclip". Its gradient is exactly 0 for
  |alpha x| > 1, so a saturated entry passes no gradient at all (tanh passes a little).
- alpha_0 follows DyT's LM width rule (1.0/1.0 below width 1024 is an extrapolation); the paper's
  ablation was run on ViTs with alpha_0 = 0.5, which is what this plugin uses for ``task: vit``.
- No shift s (DyT has none); fp32 compute under autocast, as DyT.
"""

from torch import nn

from normfree_bench import register_baseline
from normfree_bench.core.pointwise import PointwiseBaseline


@register_baseline
class HardTanh(PointwiseBaseline):
    name = "hardtanh"
    description = "DyT with tanh replaced by hardtanh: gamma*clip(alpha x, -1, 1)+beta (DyT Table 7)"
    paper = "https://arxiv.org/abs/2503.10622"
    group = "ablation"
    function = nn.Hardtanh
