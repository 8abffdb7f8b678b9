"""DyT, Dynamic Tanh: ``gamma * tanh(alpha * x) + beta`` replaces every normalization layer.

Usage: ``normfree-bench train --baseline dyt``   (ablation: ``hparams: {dyt: {sites_with_layernorm: [final]}}``)

Paper: Zhu, Chen, He, LeCun, Liu, "Transformers without Normalization", CVPR 2025,
https://arxiv.org/abs/2503.10622; official code ``jiachenzhu/DyT`` (``dynamic_tanh.py``,
``other_tasks/LLaMA/fms_fsdp/models/llama.py``).

Faithful to the paper:
- alpha is ONE learnable scalar per DyT layer; gamma (init 1) and beta (init 0) are per channel.
- All three sites are replaced: before attention, before the MLP and the final norm (for the ViT
  head, the post-pooling ``fc_norm``). The residual structure stays pre-norm.
- LM only: a learnable scalar after the embedding, initialised to sqrt(d) (paper App. A;
  ``shared_scale`` in the official LLaMA code). Without it early training stalls.
- alpha_0 per site: "attention" for the DyT before attention, "other" for the MLP and final
  sites (paper Table 10/11, official LLaMA commands). Width rule (Table 11): 1024 -> 1.0/1.0,
  2048 -> 1.0/0.5, 4096 -> 0.8/0.2, 8192 -> 0.2/0.05; the largest listed width <= d_model is used.
  No value is published below width 1024, so 1.0/1.0 there is an EXTRAPOLATION. ViT: 0.5 (paper §4).

Choices where the sources differ:
- beta exists only with ``model.bias`` (GPT-2 flavour), mirroring LayerNorm; the LLaMA flavour has
  no beta, like the official LLaMA DyT that mirrors RMSNorm.
- tanh is computed in fp32 under autocast, for parity with RMSNorm's upcast (schemes §9.8).
- No weight decay on alpha, gamma, beta or the embedding scalar (the harness's 1-D rule, as the
  official ViT code; the official LLaMA recipe decays everything).
- ``alpha_init`` overrides both site values (for alpha_0 sweeps); ``sites_with_layernorm: [final]``
  keeps a LayerNorm at the final site (any subset of attn, mlp, final may be listed).

The recipe lives in normfree_bench.core.pointwise.PointwiseBaseline, shared with Derf and the squashing
ablations (hardtanh, sigmoid, softsign, isru, identity); DyT is that recipe with f = tanh and no shift.
"""

from torch import nn

from normfree_bench import register_baseline
from normfree_bench.core.pointwise import PointwiseBaseline


@register_baseline
class DyT(PointwiseBaseline):
    name = "dyt"
    description = "Dynamic Tanh gamma*tanh(alpha x)+beta at every norm site, sqrt(d) embedding scalar"
    paper = "https://arxiv.org/abs/2503.10622"
    function = nn.Tanh
    shift = False
