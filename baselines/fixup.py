"""Fixup: no normalization; depth-scaled init, zero-initialised last layers, scalar biases and multipliers.

Usage: ``normfree-bench train --baseline fixup``

Paper: Zhang, Dauphin, Ma, "Fixup Initialization: Residual Learning Without Normalization",
ICLR 2019, https://arxiv.org/abs/1901.09321; official re-implementation ``hongyi-zhang/Fixup``
(Transformer: ``fairseq/fairseq/models/transformer_zero.py``, ``multihead_attention_zero.py``,
``fairseq/run.sh``).

The Transformer rules of the official code, with L = the number of residual branches:
- attention: Q, K, V Xavier-uniform on the fused (3d, d) matrix (as the code's ``in_proj_weight``)
  x L^(-1/6); the output projection is 0.
- MLP: fc1 (both SwiGLU inputs) Xavier-uniform x L^(-1/2); fc2 is 0.
- a scalar bias (init 0) before each branch input and around the activation; a scalar
  multiplier (init 1) on each branch output: ``x + scale * F(x + b_in)``.
- no norm at any site; the decoder's final LayerNorm is replaced by one scalar bias (``shift0``,
  init 0) before the output projection, which is zero-initialised (the untied ``embed_out``).
- the code's scalar biases replace the linear biases (which stay 0 here when ``model.bias`` is on,
  since every baseline shares the model flavour).
- token embeddings N(0, d^-1/2) times a fixed sqrt(d) (fairseq ``embed_scale``), so the tokens start at
  unit variance; the positions are added after the scaling, unscaled (fairseq's default sinusoids have
  RMS 1/sqrt(2); this model's learned positions get fairseq's learned-position init N(0, d^-1/2)).
- one Adam group: ``run.sh`` trains the scalars at the same LR as the weights (``scalar_lr_scale: 1.0``);
  the LR/10 for the scalars is the ResNet scripts' rule (``'lr': base_lr/10`` in ``cifar_train.py``),
  available as ``scalar_lr_scale: 0.1``.

Choices: L = 2 n_layers (attention and MLP branches of a decoder-only model; the encoder-decoder code
counts 2 N_enc + 3 N_dec, its cross-attention included, and has no decoder-only formula); no weight
decay on the scalars (the harness's 1-D rule for every scheme; fairseq decays every parameter with
decoupled wd 1e-4); warmup is the harness's shared warmup (the official script keeps 4,000 warmup
steps too). Fixup's own init resets every weight the network init would set, so ``model.init`` (paper
or shared) changes only the construction-time defaults it leaves: none that matter.
"""

import math

from torch import nn

from normfree_bench import Baseline, register_baseline
from normfree_bench.core.invariants import branches_are_silent
from normfree_bench.core.layers import Residual, Scale, Shift


class FixupResidual(Residual):
    """``x + scale * F(x + bias)`` with scalar bias (init 0) and scalar scale (init 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = Shift(0.0)
        self.scale = Scale(1.0, learnable=True)

    def branch_input(self, x):
        return self.shift(x)

    def combine(self, x, y):
        return x + self.scale(y)


@register_baseline
class Fixup(Baseline):
    name = "fixup"
    description = "no norms; L-scaled init, zero last layers and head, scalar biases/multipliers, final shift0"
    paper = "https://arxiv.org/abs/1901.09321"
    norm_free = True
    hparams = {"scalar_lr_scale": 1.0}
    scale_positions = False  # fairseq adds its positions after scaling the token embedding

    def norm(self, dim, site, layer_idx, n_layers):
        return Shift(0.0) if site == "final" else nn.Identity()  # the decoder's shift0

    def residual(self, dim, branch, layer_idx, n_layers):
        return FixupResidual()

    def activation(self):
        act = nn.SiLU() if self.config.mlp == "swiglu" else nn.GELU()
        return nn.Sequential(Shift(0.0), act, Shift(0.0))

    def embedding_scale(self, dim):
        return Scale(math.sqrt(dim), learnable=False)

    def init_(self, model) -> None:
        n_branches = 2 * model.config.n_layers
        for _, role, linear in model.branch_linears():
            if role in ("attn_out", "mlp_out"):
                nn.init.zeros_(linear.weight)
            else:
                nn.init.xavier_uniform_(linear.weight)
                linear.weight.mul_(n_branches ** (-1 / 6) if role == "qkv" else n_branches ** (-1 / 2))
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)
        for emb in model.embeddings():  # tokens (scaled by sqrt(d) in the forward pass), positions (not)
            weight = emb if isinstance(emb, nn.Parameter) else emb.weight
            nn.init.normal_(weight, std=model.config.d_model ** -0.5)
        nn.init.zeros_(model.head.weight)
        if model.head.bias is not None:
            nn.init.zeros_(model.head.bias)

    def param_groups(self, model, lr, weight_decay):
        scalars = {id(m.bias) for m in model.modules() if isinstance(m, Shift)}
        scalars |= {id(m.scale) for m in model.modules() if isinstance(m, Scale) and isinstance(m.scale, nn.Parameter)}
        groups = super().param_groups(model, lr, weight_decay)
        for group in groups:
            group["params"] = [p for p in group["params"] if id(p) not in scalars]
        scalar_params = [p for p in model.parameters() if id(p) in scalars]
        groups.append({"params": scalar_params, "weight_decay": 0.0, "lr_scale": self.hp["scalar_lr_scale"]})
        return [g for g in groups if g["params"]]

    def check_init(self, model, batch):
        problems = branches_are_silent(model, batch)
        for i, role, linear in model.branch_linears():
            if role in ("attn_out", "mlp_out") and linear.weight.abs().max() != 0:
                problems.append(f"block {i} {role} must be zero-initialised")
        for name, module in model.named_modules():  # the scalars at their init: biases 0, multipliers 1
            if isinstance(module, Shift) and module.bias.item() != 0.0:
                problems.append(f"{name}: the scalar bias must start at 0, got {module.bias.item():.3g}")
            if isinstance(module, FixupResidual) and module.scale.scale.item() != 1.0:
                problems.append(f"{name}: the scalar multiplier must start at 1, got {module.scale.scale.item():.3g}")
        if model.head.weight.abs().max() != 0:
            problems.append("the head must be zero-initialised")
        if model.config.task == "lm":  # the stream starts at unit variance: tokens 1, positions 1/d
            var = model.embed(batch).var().item()
            if not 0.8 <= var <= 1.25:
                problems.append(f"the embedded stream has variance {var:.3f}, not about 1")
        return problems
