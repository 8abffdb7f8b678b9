"""OP (Outlier-Protected) block: no norms inside the blocks except a LayerNorm before the first attention,
the final LayerNorm kept, QK-RMSNorm, and residual branches down-weighted by 0.2 (ablation group).

Usage: ``normfree-bench train --baseline op_block``   (``hparams: {op_block: {resid_gain: 0.1}}``)

Paper: He, Noci, Paliotta, Schlag, Hofmann, "Understanding and Minimising Outlier Features in
Transformer Training", NeurIPS 2024, https://arxiv.org/abs/2405.19279; official code
``bobby-he/simplified_transformers`` (``config/model/op.yaml`` on top of ``config/model/default.yaml``;
``simplified_transformers/model_utils.py``).

Faithful to the code:
- ``norm_type: none``: no norm before attention or before the MLP, EXCEPT a LayerNorm before the
  attention of the first block ("always use LN in first layer to normalise input activation
  norms"). The model's final LayerNorm is kept (the reference replaces only GPT-2's blocks, so its
  ``ln_f`` stays).
- ``qk_norm_type: rmsnorm``: queries and keys are RMS-normalised per head over head_dim before the
  dot product, one weight of shape (head_dim,) shared by all heads, separate for q and k, in every
  layer.
- ``attn_block_resid_gain = mlp_block_resid_gain = 0.2`` ("Change for different depths:
  O(1/sqrt(depth))"), skip gains 1: ``x <- x + 0.2 Attn(x)``, ``x <- x + 0.2 MLP(x)``.
- The gains are FIXED: ``trainable_attn_block_gains`` and ``trainable_mlp_block_gains`` are false in
  ``default.yaml`` and only commented out as "Optional" in ``op.yaml``; the hparam
  ``trainable_gains: true`` gives that option (one learnable scalar per branch, no weight decay).

Choices where the sources differ:
- The QK RMSNorm is ``nn.RMSNorm(head_dim, eps=1e-16)``: the reference's own RMSNorm divides by
  ``rms + 1e-8``, and eps inside torch's square root matches that when sqrt(eps) = 1e-8. The
  harness's usual eps 1e-5 would NOT do: with no norm before blocks 1.., q and k come straight from
  the GPT-2-initialised stream and have RMS of about 1e-3 at init in small models, so
  ``mean(q^2) ~ 1e-6 < 1e-5`` and the "norm" would barely normalise. The first-layer and final
  LayerNorms are the harness's (eps 1e-5, beta only with ``model.bias``).
- ``resid_gain`` is not scaled with depth automatically: 0.2 is the published value for the paper's
  GPT-2-small-sized models; set ``resid_gain`` (e.g. about 0.2 * sqrt(12 / n_layers)) for other depths.
- The QK-norm comes from ``qk_norm`` (an hparam, default rmsnorm), and ``model.qk_norm`` is IGNORED for
  this baseline, since QK-norm is part of the OP block; a Wortsman-style ``model.qk_norm`` sweep axis
  therefore does not change op_block runs.
- The rest of the reference's model (ReLU MLP, bias-free MLP linears, its own weight init) is the
  same there for every block type it compares; we keep the harness's model flavour and GPT-2 init
  for every scheme, so only the block-level changes above differ from ``layernorm``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from normfree_bench import Baseline, ModelView, register_baseline
from normfree_bench.core.layers import GatedResidual, Residual, make_norm

QK_EPS = 1e-16  # sqrt(eps) = 1e-8, the eps the reference adds to the RMS


@register_baseline
class OPBlock(Baseline):
    name = "op_block"
    description = "OP block: LN only before layer 0's attention and at the end, QK-RMSNorm, x + 0.2*F(x)"
    paper = "https://arxiv.org/abs/2405.19279"
    norm_free = False  # it keeps two LayerNorms and the QK-norms
    group = "ablation"
    hparams = {"resid_gain": 0.2, "trainable_gains": False, "qk_norm": "rmsnorm"}
    hparam_types = {"qk_norm": Literal["rmsnorm", "layernorm", "none"]}

    def norm(self, dim: int, site: str, layer_idx: int, n_layers: int) -> nn.Module:
        if site == "final" or (site == "attn" and layer_idx == 0):
            return make_norm("layernorm", dim, bias=self.config.bias)
        return nn.Identity()

    def qk_norm(self, head_dim: int, which: str, layer_idx: int, n_layers: int) -> nn.Module:
        return make_norm(self.hp["qk_norm"], head_dim, bias=self.config.bias, eps=QK_EPS)

    def residual(self, dim: int, branch: str, layer_idx: int, n_layers: int) -> Residual:
        gain = float(self.hp["resid_gain"])
        if self.hp["trainable_gains"]:
            return GatedResidual(nn.Parameter(torch.full((1,), gain)))
        return GatedResidual(torch.full((1,), gain))  # fixed: a buffer

    def check_init(self, model: ModelView, batch: torch.Tensor) -> list[str]:
        want = float(self.hp["resid_gain"])
        return [f"block {layer} {branch}: residual gain must start at {want:g}"
                for layer, branch, _, res in model.residual_sites()
                if not torch.allclose(res.gain, torch.full_like(res.gain, want))]
