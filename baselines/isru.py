"""DyT with ISRU: ``gamma * u / sqrt(1 + u^2) + beta`` with ``u = alpha * x`` at every norm site (ablation group).

Usage: ``normfree-bench train --baseline isru``

Papers: Stollenwerk, "On the Mathematical Relationship Between Layer Normalization and Dynamic
Activation Functions", https://arxiv.org/abs/2503.21708 (DyISRU, the exact element-wise
counterpart of RMSNorm); the recipe is DyT's (Zhu et al., CVPR 2025,
https://arxiv.org/abs/2503.10622); "isru" is also a Derf candidate function (Chen et al.,
https://arxiv.org/abs/2512.10938, Table 7: ViT-B 82.3% against 82.6% for tanh).

Faithful to the papers: DyISRU is ``y_i = sqrt(C) * x_i / sqrt(b + x_i^2)`` with one learnable scalar
b. Since ``x / sqrt(b + x^2) = u / sqrt(1 + u^2)`` with ``u = x / sqrt(b)``, it is exactly this
function with ``alpha = 1 / sqrt(b)``, the sqrt(C) factor absorbed into gamma. Everything else is
DyT's recipe (normfree_bench.core.pointwise.PointwiseBaseline): one learnable scalar alpha per layer,
per-channel gamma (1) and beta (0), all three sites replaced, the sqrt(d) embedding scalar for LMs.

Choices where the literature is ambiguous:
- The DyISRU paper reports no training runs, so it gives no alpha_0 (equivalently b_0). We use
  DyT's alpha_0 rule (width table for LMs, 0.5 for ViTs), so the plugin differs from DyT in f
  alone; ISRU has tanh's slope 1 at 0 and range (-1, 1) but saturates polynomially.
- We parametrise by alpha (as DyT), not by b: the same function class, but the gradient dynamics of
  alpha and b differ, and alpha > 0 is not enforced (nor is b > 0 in DyISRU).
- No shift s (DyT and DyISRU have none); fp32 compute under autocast, as DyT.
"""

from normfree_bench import register_baseline
from normfree_bench.core.pointwise import ISRU, PointwiseBaseline


@register_baseline
class DyISRU(PointwiseBaseline):
    name = "isru"
    description = "DyT with tanh replaced by ISRU u/sqrt(1+u^2), u = alpha x (= DyISRU)"
    paper = "https://arxiv.org/abs/2503.21708"
    group = "ablation"
    function = ISRU
