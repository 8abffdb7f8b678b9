"""Derf, Dynamic erf: ``gamma * erf(alpha * x + s) + beta`` replaces every normalization layer (ablation group).

Usage: ``normfree-bench train --baseline derf``   (alpha_0 sweeps over the paper's LM grids: see the choices below)

Paper: Chen, Lu, Zhu, Sun, Liu, "Stronger Normalization-Free Transformers", CVPR 2026,
https://arxiv.org/abs/2512.10938; official code ``zlab-princeton/Derf`` (``ViT/dynamic_erf.py``,
``language model/model_derf.patch``).

Faithful to the paper (§5 eq. 10):
- alpha is ONE learnable scalar per layer, init 0.5; s is ONE learnable scalar shift per layer,
  init 0 (a per-channel s made "no significant impact", Table 15, so the paper uses a scalar);
  gamma (init 1) and beta (init 0) are per channel.
- All three sites are replaced one-to-one: before attention, before the MLP and the final norm.
- LM only: the learnable scalar after the embedding, init sqrt(d), as in the official GPT-2 patch
  (``(tok_emb + pos_emb) * shared_scale``).
- Everything else is DyT's recipe (normfree_bench.core.pointwise.PointwiseBaseline): fp32 compute, no
  weight decay on the scalars and 1-D parameters, beta only with ``model.bias``, the
  ``alpha_init`` / ``alpha_init_attn`` / ``alpha_init_other`` / ``sites_with_layernorm`` hparams.

Choices where the literature is ambiguous:
- LM alpha_0 is NOT published: for GPT-2 the paper swept attention in {0.5, 1, 2, 4} and other
  (MLP and final) in {0.1, 0.3, 0.5, 1} and reports only the best run (App. C). We use 0.5 at every
  site for every task: the one published alpha_0, and a point of both LM grids. We do not carry
  DyT's width table over: it was tuned for tanh, and mapping it through erf(u) ~ tanh(1.205 u)
  would land between grid points. Sweep ``derf.alpha_init_attn`` / ``derf.alpha_init_other`` over
  the paper's grids to tune it.
- The shift s sits inside erf (a horizontal shift), as eq. 10 and the official module; it gets no
  weight decay, like alpha.
"""

from normfree_bench import register_baseline
from normfree_bench.config import ModelConfig
from normfree_bench.core.pointwise import Erf, PointwiseBaseline

DERF_ALPHA = 0.5  # paper §5 eq. 10 and the official ViT module: alpha init 0.5


@register_baseline
class Derf(PointwiseBaseline):
    name = "derf"
    description = "Dynamic erf gamma*erf(alpha x + s)+beta at every norm site, sqrt(d) embedding scalar"
    paper = "https://arxiv.org/abs/2512.10938"
    group = "ablation"
    function = Erf
    shift = True

    @classmethod
    def default_alphas(cls, config: ModelConfig) -> tuple[float, float]:
        return DERF_ALPHA, DERF_ALPHA
