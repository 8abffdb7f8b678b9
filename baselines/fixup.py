"""Fixup: no normalization; depth-scaled init, zero-initialised last layers, scalar biases and multipliers.

Usage: ``normfree-bench train --baseline fixup``

Paper: Zhang, Dauphin, Ma, "Fixup Initialization: Residual Learning Without Normalization",
ICLR 2019, https://arxiv.org/abs/1901.09321; official re-implementation ``hongyi-zhang/Fixup``
(Transformer: ``fairseq/fairseq/models/transformer_zero.py``, ``multihead_attention_zero.py``).

The Transformer rules of the official code, with L = the number of residual branches (2 per block):
- attention: Q, K, V Xavier-uniform x L^(-1/6); the output projection is 0.
- MLP: fc1 (both SwiGLU inputs) Xavier-uniform x L^(-1/2); fc2 is 0.
- a scalar bias (init 0) before each branch input and around the activation; a scalar
  multiplier (init 1) on each branch output: ``x + scale * F(x + b_in)``.
- no norm at any site; the code's scalar biases replace the linear biases (which stay 0 here when
  ``model.bias`` is on, since every baseline shares the model flavour).
- embeddings N(0, d^-1/2) times a fixed sqrt(d) (fairseq ``embed_scale``); learned positions get
  the same init, so the scaled sum has unit variance like fairseq's sinusoidal positions.
- the scalar biases and multipliers train at LR/10 (``'lr': base_lr/10`` in the official scripts).

Choices: the head is zero-initialised (Fixup rule 1, "initialize the classification layer to 0");
no weight decay on the scalars (the harness's 1-D rule, applied to every scheme); warmup is the
harness's shared warmup (the official Transformer script keeps 4000 warmup steps too).
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
    description = "no norms; L-scaled init, zero last layers, scalar biases/multipliers at LR/10"
    paper = "https://arxiv.org/abs/1901.09321"
    norm_free = True
    hparams = {"scalar_lr_scale": 0.1}

    def norm(self, dim, site, layer_idx, n_layers):
        return nn.Identity()

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
        for emb in model.embeddings():
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
        return problems
