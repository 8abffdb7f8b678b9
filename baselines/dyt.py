"""DyT, Dynamic Tanh: ``gamma * tanh(alpha * x) + beta`` replaces every normalization layer.

Usage: ``normfree-bench train --baseline dyt``   (ablation: ``hparams: {dyt: {final: layernorm}}``)

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
- ``alpha_init`` overrides both site values (for alpha_0 sweeps); ``final: layernorm`` keeps a
  LayerNorm at the final site, and ``sites_with_layernorm`` generalises that ablation.
"""

import math

import torch
from torch import nn

from normfree_bench import Baseline, register_baseline
from normfree_bench.errors import UserError
from normfree_bench.layers import SITES, PointwiseNorm, Scale, make_norm

# width -> (alpha_0 before attention, alpha_0 elsewhere), DyT paper Table 11.
ALPHA_BY_WIDTH = {1024: (1.0, 1.0), 2048: (1.0, 0.5), 4096: (0.8, 0.2), 8192: (0.2, 0.05)}
VIT_ALPHA = 0.5


def default_alphas(width: int, task: str) -> tuple[float, float]:
    """alpha_0 (attention, other) for a model of this width and task."""
    if task == "vit":
        return VIT_ALPHA, VIT_ALPHA
    listed = [w for w in sorted(ALPHA_BY_WIDTH) if w <= width] or [min(ALPHA_BY_WIDTH)]
    return ALPHA_BY_WIDTH[listed[-1]]


@register_baseline
class DyT(Baseline):
    name = "dyt"
    description = "Dynamic Tanh gamma*tanh(alpha x)+beta at every norm site, sqrt(d) embedding scalar"
    paper = "https://arxiv.org/abs/2503.10622"
    norm_free = True
    hparams = {
        "alpha_init": None,  # one value for every site; None = the per-site width rule
        "alpha_init_attn": None,
        "alpha_init_other": None,
        "embed_scale": True,  # the learnable sqrt(d) scalar after the embedding (LM only)
        "sites_with_layernorm": [],  # ablation: keep LayerNorm at these sites, e.g. ["final"]
    }

    def __init__(self, config, **hparams) -> None:
        super().__init__(config, **hparams)
        bad = sorted(set(self.hp["sites_with_layernorm"]) - set(SITES))
        if bad:
            raise UserError(f"dyt: unknown site '{bad[0]}' in sites_with_layernorm; valid: {', '.join(SITES)}")
        self.norm_free = not self.hp["sites_with_layernorm"]
        attn, other = default_alphas(config.d_model, config.task)
        if self.hp["alpha_init"] is not None:
            attn = other = self.hp["alpha_init"]
        self.alpha = {
            "attn": attn if self.hp["alpha_init_attn"] is None else self.hp["alpha_init_attn"],
            "other": other if self.hp["alpha_init_other"] is None else self.hp["alpha_init_other"],
        }

    def norm(self, dim: int, site: str, layer_idx: int, n_layers: int) -> nn.Module:
        if site in self.hp["sites_with_layernorm"]:
            return make_norm("layernorm", dim, bias=self.config.bias)
        alpha = self.alpha["attn" if site == "attn" else "other"]
        return PointwiseNorm(dim, nn.Tanh(), alpha_init=alpha, bias=self.config.bias)

    def embedding_scale(self, dim: int) -> nn.Module:
        if self.config.task == "lm" and self.hp["embed_scale"]:
            return Scale(math.sqrt(dim), learnable=True)
        return nn.Identity()

    def check_init(self, model, batch) -> list[str]:
        problems = []
        for name, module in model.named_modules():
            if isinstance(module, PointwiseNorm):
                if not torch.all(module.weight == 1) or (module.bias is not None and not torch.all(module.bias == 0)):
                    problems.append(f"{name}: gamma must start at 1 and beta at 0")
        return problems
