"""DeepNorm (DeepNet): post-LN with an up-weighted skip, ``LN(alpha * x + F(x))``, and a beta-scaled init.

Usage: ``normfree-bench train --baseline deepnorm``   (post-LN: its only ``model.placement``)

Paper: Wang, Ma, Dong, Huang, Zhang, Wei, "DeepNet: Scaling Transformers to 1,000 Layers", 2022,
https://arxiv.org/abs/2203.00555; official code ``microsoft/torchscale`` (``torchscale/architecture/decoder.py``:
``residual_connection`` returns ``residual * self.alpha + x``; ``self.alpha = math.pow(2.0 * args.decoder_layers,
0.25)``; ``init_scale = math.pow(8.0 * args.decoder_layers, 0.25)`` divides the ``fc1``, ``fc2``, ``out_proj`` and
``v_proj`` parameters). The decoder-only formulas, with N = n_layers:

- every sublayer (attention, then the MLP) is ``x <- LN(alpha * x + F(x))``, alpha = (2N)^(1/4), a fixed constant;
  no final LayerNorm before the head (torchscale creates ``layer_norm`` only with ``decoder_normalize_before``);
- beta = (8N)^(-1/4): the value projection, the attention output projection and both MLP matrices are
  Xavier-normal with gain beta, the query and key projections Xavier-normal with gain 1 (the paper's
  pseudocode, Fig. 2 / Algorithm: ``xavier_normal_(w, gain=beta)`` for ``ffn``, ``v_proj``, ``out_proj``;
  ``gain=1`` for ``q_proj``, ``k_proj``); biases 0. Our q/k/v are one fused matrix: each third gets its own gain.
- the rest of the network: fairseq's (``model.init: paper`` -> the `fairseq` rule: N(0, d^-1/2) token embedding
  and positions, untied N(0, d^-1/2) head) with the token embedding times a fixed sqrt(d) (fairseq's
  ``embed_scale``, which torchscale's fairseq LM example keeps), positions added after it;
  LayerNorm eps 1e-5 (shared with Admin: `normfree_bench.core.post_ln`).

Choices where the sources differ:
- torchscale's code keeps PyTorch's default Linear init (kaiming-uniform) and divides it, biases included, by
  (8N)^(1/4); the paper's pseudocode re-initialises Xavier-normal with gain beta. We follow the paper.
- torchscale at its current HEAD (commit 4d1e0e8) sets ``encoder_normalize_before = False`` for ``deepnorm`` in
  ``DecoderConfig`` (a typo since the LongNet release; earlier releases set ``decoder_normalize_before``), so a
  decoder-only ``deepnorm=True`` model there silently stays pre-LN; we build the post-LN model the paper and the
  original release describe.
- The harness's optimizer rules apply (no weight decay on 1-D parameters, the shared clipping and warmup).

``check_init`` holds what the paper promises at init: every site is an identity-affine LayerNorm after its
sublayer, every skip is scaled by exactly alpha, and each q/k/v third and each MLP and output matrix has the
Xavier-normal std of its gain (within 10 %; sqrt(2 / (fan_in + fan_out)) * gain), with zero biases.
"""

import math

import torch
from torch import nn

from normfree_bench import register_baseline
from normfree_bench.core.invariants import sites_normalize
from normfree_bench.core.layers import SkipScaledResidual
from normfree_bench.core.post_ln import LN_EPS, FairseqPostLN


def deepnorm_constants(n_layers: int) -> tuple[float, float]:
    """(alpha, beta) of a decoder-only DeepNet with ``n_layers`` layers: ((2N)^(1/4), (8N)^(-1/4))."""
    return (2.0 * n_layers) ** 0.25, (8.0 * n_layers) ** -0.25


def branch_gains(role: str, out_features: int, beta: float) -> list[tuple[slice, float]]:
    """The Xavier-normal gain of each row block of a branch matrix: q and k 1, v beta; every other matrix beta."""
    if role != "qkv":
        return [(slice(0, out_features), beta)]
    d = out_features // 3
    return [(slice(0, d), 1.0), (slice(d, 2 * d), 1.0), (slice(2 * d, 3 * d), beta)]


@register_baseline
class DeepNorm(FairseqPostLN):
    name = "deepnorm"
    description = "post-LN with LN(alpha x + F(x)), alpha=(2N)^1/4, beta=(8N)^-1/4 Xavier init of v/out/MLP"
    paper = "https://arxiv.org/abs/2203.00555"

    def __init__(self, config, **hparams):
        super().__init__(config, **hparams)
        self.alpha, self.beta = deepnorm_constants(config.n_layers)

    def residual(self, dim, branch, layer_idx, n_layers):
        return SkipScaledResidual(torch.full((1,), self.alpha))

    def init_(self, model):
        for _, role, linear in model.branch_linears():
            for rows, gain in branch_gains(role, linear.out_features, self.beta):
                nn.init.xavier_normal_(linear.weight[rows], gain=gain)
            if linear.bias is not None:
                nn.init.zeros_(linear.bias)

    def check_init(self, model, batch):
        problems = sites_normalize(model, batch, "layernorm", eps=LN_EPS)
        for _, _, name, res in model.residual_sites():
            if not isinstance(res, SkipScaledResidual) or not torch.allclose(res.gain, torch.tensor(self.alpha)):
                problems.append(f"{name}: the skip must be scaled by alpha = (2N)^(1/4) = {self.alpha:.4g}")
        for i, role, linear in model.branch_linears():
            for rows, gain in branch_gains(role, linear.out_features, self.beta):
                w = linear.weight[rows]
                want = gain * math.sqrt(2.0 / (w.shape[0] + w.shape[1]))
                got = w.std().item()
                if abs(got / want - 1) > 0.1:
                    problems.append(f"block {i} {role} rows {rows.start}:{rows.stop}: std {got:.4g}, want "
                                    f"Xavier-normal with gain {gain:.4g} ({want:.4g})")
            if linear.bias is not None and linear.bias.abs().max() != 0:
                problems.append(f"block {i} {role}: the bias must start at 0")
        return problems
