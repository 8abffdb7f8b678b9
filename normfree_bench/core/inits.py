"""Initialisations of the whole network, by name: what ``model.init`` chooses before a baseline's own ``init_``.

Usage: ``NETWORK_INITS["xavier"](model)``  (``model`` is a `ModelView`; run under ``torch.no_grad()``)

``model.init: shared`` applies `gpt2` to every baseline, so that only the scheme differs. ``model.init:
paper`` lets each baseline name the rule its paper and official code train with
(`Baseline.network_init`); the default rule is the reference recipe of the model being built: `gpt2`
(nanoGPT) for the GPT-2 preset, `llama` for the LLaMA preset (the DyT paper's LM recipe), `timm` for the
ViT task (the DyT paper's ViT recipe). Each rule touches weights only where its source says so; what it
leaves alone keeps PyTorch's construction-time default.

- `gpt2` (nanoGPT ``_init_weights``): every Linear, Embedding and Conv2d weight N(0, 0.02) truncated at
  +-2 (absolute, i.e. untruncated), biases 0, the output projections of the branches (``attn_out``,
  ``mlp_out``) N(0, 0.02 / sqrt(2 n_layers)), learned positions N(0, 0.02).
- `llama` (the DyT LLaMA code via foundation-model-stack ``reset_parameters``; HF ``LlamaPreTrainedModel``
  alike): every Linear and Embedding weight truncated N(0, 0.02), no depth scaling, biases 0.
- `timm` (timm ``init_weights_vit_timm``, the default mode DyT's ``main.py`` builds with): every Linear
  weight truncated N(0, 0.02) and bias 0, the head included, no depth scaling; the patch Conv2d keeps
  PyTorch's default (kaiming-uniform a=sqrt(5), i.e. U(+-1/sqrt(fan_in)), bias alike); positions
  truncated N(0, 0.02).
- `xavier` (ReZero's official tutorial, ``tbachlechner/ReZero-examples``, ``TransformerModel._reset_parameters``
  then ``init_weights``): Xavier-uniform on every weight matrix of the blocks (the fused q/k/v matrix
  as one, as ``nn.MultiheadAttention``'s ``in_proj_weight``), Linear biases at PyTorch's default; the
  token embedding and the LM head U(-0.1, 0.1), the head's bias 0; positions N(0, 0.02) (the tutorial's
  are fixed sinusoids). ViT: the patch Conv2d Xavier-uniform as well (every p.dim() > 1), head alike.
- `lecun` (Haiku's default, which DeepMind's SkipInit and NF-ResNet code build with): every Linear and
  Conv2d weight truncated normal with std 1/sqrt(fan_in) (cut at +-2 std), biases 0; the token embedding
  truncated N(0, 1) (``hk.Embed``'s default); positions N(0, 0.02).
- `fairseq` (fairseq's Transformer, which DeepNet's ``microsoft/torchscale`` and Admin's
  ``LiyuanLucasLiu/Transformer-Clinic`` build on): Xavier-uniform on every Linear weight of the blocks (the
  fused q/k/v matrix as one, as fairseq's ``in_proj_weight``), biases 0; the token embedding, learned
  positions and the untied LM head N(0, d^-1/2) (``Embedding``, ``LearnedPositionalEmbedding``,
  ``output_projection``), the head's bias 0. ViT: `timm` (fairseq has no vision model).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from timm.layers import trunc_normal_
from torch import nn

from normfree_bench.core.baseline import ModelView

INIT_STD = 0.02  # GPT-2's, LLaMA's and timm's default
OUTPUT_ROLES = ("attn_out", "mlp_out")


def _weights(model: ModelView, kinds: tuple[type, ...]) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kinds)]


def _positions(model: ModelView) -> list[nn.Parameter]:
    return [e for e in model.embeddings() if isinstance(e, nn.Parameter)]


def init_gpt2(model: ModelView) -> None:
    """nanoGPT's rule (the harness's ``shared`` init)."""
    out_std = INIT_STD / math.sqrt(2 * model.config.n_layers)
    for module in _weights(model, (nn.Linear, nn.Embedding, nn.Conv2d)):
        trunc_normal_(module.weight, std=INIT_STD)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    for _, role, linear in model.branch_linears():
        if role in OUTPUT_ROLES:
            trunc_normal_(linear.weight, std=out_std)
    for param in _positions(model):
        trunc_normal_(param, std=INIT_STD)


def init_llama(model: ModelView) -> None:
    """The LLaMA recipe: 0.02 everywhere, no depth scaling."""
    for module in _weights(model, (nn.Linear, nn.Embedding)):
        trunc_normal_(module.weight, std=INIT_STD)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    for param in _positions(model):
        trunc_normal_(param, std=INIT_STD)


def init_timm(model: ModelView) -> None:
    """timm's ViT rule: Linear layers 0.02 with zero bias; the patch convolution at PyTorch's default."""
    for module in _weights(model, (nn.Linear,)):
        trunc_normal_(module.weight, std=INIT_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    for module in _weights(model, (nn.Conv2d,)):
        module.reset_parameters()
    for param in _positions(model):
        trunc_normal_(param, std=INIT_STD)


def init_xavier(model: ModelView) -> None:
    """ReZero's official tutorial: Xavier-uniform matrices, U(-0.1, 0.1) token embedding and head."""
    for module in _weights(model, (nn.Linear, nn.Conv2d)):
        nn.init.xavier_uniform_(module.weight)
    for module in _weights(model, (nn.Embedding,)):
        nn.init.uniform_(module.weight, -0.1, 0.1)
    if model.config.task == "lm":
        nn.init.uniform_(model.head.weight, -0.1, 0.1)
        if model.head.bias is not None:
            nn.init.zeros_(model.head.bias)
    for param in _positions(model):
        trunc_normal_(param, std=INIT_STD)


def init_lecun(model: ModelView) -> None:
    """Haiku's defaults (``hk.initializers.TruncatedNormal``: a normal cut at +-2 std, not rescaled, so the
    variance is 0.774 std^2): std 1/sqrt(fan_in) weights, a std-1 token embedding, zero biases."""
    for module in _weights(model, (nn.Linear, nn.Conv2d)):
        std = 1.0 / math.sqrt(module.weight[0].numel())
        trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    for module in _weights(model, (nn.Embedding,)):
        trunc_normal_(module.weight, std=1.0, a=-2.0, b=2.0)
    for param in _positions(model):
        trunc_normal_(param, std=INIT_STD)


def init_fairseq(model: ModelView) -> None:
    """fairseq's Transformer: Xavier-uniform Linear weights, zero biases, N(0, d^-1/2) embeddings and head."""
    if model.config.task == "vit":
        init_timm(model)
        return
    std = model.config.d_model ** -0.5
    for module in _weights(model, (nn.Linear,)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    for module in _weights(model, (nn.Embedding,)):
        nn.init.normal_(module.weight, std=std)
    nn.init.normal_(model.head.weight, std=std)
    for param in _positions(model):
        nn.init.normal_(param, std=std)


NETWORK_INITS: dict[str, Callable[[ModelView], None]] = {
    "gpt2": init_gpt2, "llama": init_llama, "timm": init_timm, "xavier": init_xavier, "lecun": init_lecun,
    "fairseq": init_fairseq}
