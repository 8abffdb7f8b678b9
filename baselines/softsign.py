"""DyT with softsign: ``gamma * u / (1 + |u|) + beta`` with ``u = alpha * x`` at every norm site (ablation group).

Usage: ``normfree-bench train --baseline softsign``

Papers: the recipe is DyT's (Zhu, Chen, He, LeCun, Liu, "Transformers without Normalization",
CVPR 2025, https://arxiv.org/abs/2503.10622, §6.1 ablates the squashing function); softsign is
one of the candidate functions of Derf (Chen et al., "Stronger Normalization-Free Transformers",
https://arxiv.org/abs/2512.10938, Table 7, "smoothsign": ViT-B 82.4% against 82.6% for tanh).

Faithful to the papers: everything but f is DyT's recipe (normfree_bench.core.pointwise.PointwiseBaseline):
one learnable scalar alpha per layer, per-channel gamma (1) and beta (0), all three sites replaced,
the sqrt(d) embedding scalar for LMs, DyT's alpha_0 rule (width table for LMs, 0.5 for ViTs).

Choices where the literature is ambiguous:
- f is ``torch.nn.Softsign``: bounded in (-1, 1), slope 1 at 0 like tanh, but it saturates only
  polynomially (1 - |f| ~ 1/|u|), so its gradient never vanishes as fast as tanh's.
- No shift s: Derf evaluated its candidates with its learnable shift; we run softsign in DyT's
  recipe (no shift) so that it differs from DyT in f alone.
- fp32 compute under autocast, as DyT.
"""

from torch import nn

from normfree_bench import register_baseline
from normfree_bench.core.pointwise import PointwiseBaseline


@register_baseline
class Softsign(PointwiseBaseline):
    name = "softsign"
    description = "DyT with tanh replaced by softsign u/(1+abs(u)), u = alpha x"
    paper = "https://arxiv.org/abs/2512.10938"
    group = "ablation"
    function = nn.Softsign
