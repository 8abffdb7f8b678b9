"""The one Transformer: a pre-norm, nanoGPT-style model whose norms and residuals come from a baseline.

Usage: ``model = Transformer(ModelConfig(d_model=64), get_baseline("dyt")(config)); logits = model(ids)  # (B, T, V)``
(or ``normfree_bench.build_model("dyt", config)``)

Two heads share the same blocks: a causal byte-level LM (``task: lm``) and a ViT classifier
(``task: vit``: patch embedding, mean pooling, then the final norm site, as timm's
``global_pool='avg'``). This file names no scheme. Each block asks its baseline for

- the norm at each site (``attn``, ``mlp``; ``final`` once, before the head),
- the residual combine of each branch (``x + f(x)`` by default),
- the MLP activation and the embedding scale,

and the baseline initialises the finished model (``Baseline.init_``). ``model.norm_impl`` then decides how
the norm sites run (eager, compiled or fused: normfree_bench.core.norm_impl). Each branch F (attention, then
the MLP) with its norm N and residual R (``R(x, y)`` = ``res.combine(x, y)``, F's input passing
``res.branch_input``) sits as ``model.placement`` says, a block-level choice the baseline's norms plug into:

- ``pre`` (GPT-2, the default of most schemes): ``R(x, F(N(x)))``, and a final site before the head;
- ``post`` (Vaswani et al. 2017, https://arxiv.org/abs/1706.03762; DeepNet, Admin): ``N(R(x, F(x)))``, and
  no final site, the last block's output being normalised already (as the paper and fairseq's post-LN
  decoder, which adds no final LayerNorm when ``normalize_before`` is off);
- ``res_post`` (Swin-V2, Liu et al. 2022, https://arxiv.org/abs/2111.09883): ``R(x, N(F(x)))``, with
  Swin-V2's final norm before the head;
- ``sandwich`` (Sandwich-LN, Ding et al. 2021, https://arxiv.org/abs/2105.13290; Peri-LN, Kim et al. 2025,
  https://arxiv.org/abs/2502.02732): ``R(x, N_out(F(N_in(x))))``, the second norm being site
  ``attn_out``/``mlp_out``, with the final site.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed, SwiGLU
from torch import nn

from normfree_bench.config import ModelConfig
from normfree_bench.core.baseline import Baseline, NormSite, ResidualSite
from normfree_bench.core.inits import NETWORK_INITS
from normfree_bench.core.norm_impl import apply_norm_impl


def rotary_tables(n_tokens: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (T, head_dim / 2) for rotary position embeddings (RoFormer)."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(n_tokens, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of channels of x (B, H, T, D) by position-dependent angles."""
    x1, x2 = x.float().chunk(2, dim=-1)
    T = x.shape[-2]
    cos, sin = cos[:T], sin[:T]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).to(x.dtype)


def task_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy in fp32 for either head: LM logits (B, T, V) with targets (B, T), or ViT logits
    (B, classes) with targets (B,)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.flatten())


def block_branch_linears(blocks: Iterable[Any]) -> Iterator[tuple[int, str, nn.Linear]]:
    """Every linear layer inside the residual branches of ``blocks`` (each with ``layer_idx``,
    ``attn.qkv``, ``attn.proj`` and an MLP with ``fc1`` or SwiGLU's ``fc1_g``/``fc1_x``, and ``fc2``),
    as (layer_idx, role); roles ``qkv``, ``attn_out``, ``mlp_in``, ``mlp_out``."""
    for block in blocks:
        i, mlp = block.layer_idx, block.mlp
        yield i, "qkv", block.attn.qkv
        yield i, "attn_out", block.attn.proj
        for name in ("fc1", "fc1_g", "fc1_x"):
            if hasattr(mlp, name):
                yield i, "mlp_in", getattr(mlp, name)
        yield i, "mlp_out", mlp.fc2


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, config: ModelConfig, causal: bool, q_norm: nn.Module, k_norm: nn.Module) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.q_norm, self.k_norm = q_norm, k_norm
        self.record_max_logit = False  # diagnostics: keep the largest pre-softmax logit of the next call
        self.max_logit: torch.Tensor | None = None
        self.causal = causal
        self.rope = config.positions == "rope"
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=config.bias)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        if self.rope:
            cos, sin = rotary_tables(config.n_tokens, config.head_dim)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)  # (B, H, T, D) each
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope:
            q, k = apply_rotary(q, self.rope_cos, self.rope_sin), apply_rotary(k, self.rope_cos, self.rope_sin)
        if self.record_max_logit:
            logits = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(q.shape[-1])
            if self.causal:
                logits = logits.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), -math.inf)
            self.max_logit = logits.amax().detach()
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """One block; its norms, their placement and its residual combines are the baseline's."""

    def __init__(self, config: ModelConfig, baseline: Baseline, layer_idx: int, causal: bool) -> None:
        super().__init__()
        d, n = config.d_model, config.n_layers
        self.layer_idx = layer_idx
        self.placement = baseline.check_placement(config.placement)
        sandwich = self.placement == "sandwich"
        self.norm_attn = baseline.norm(d, "attn", layer_idx, n)
        self.norm_attn_out = baseline.norm(d, "attn_out", layer_idx, n) if sandwich else None
        self.res_attn = baseline.residual(d, "attn", layer_idx, n)
        self.attn = Attention(config, causal, baseline.qk_norm(config.head_dim, "q", layer_idx, n),
                              baseline.qk_norm(config.head_dim, "k", layer_idx, n))
        self.norm_mlp = baseline.norm(d, "mlp", layer_idx, n)
        self.norm_mlp_out = baseline.norm(d, "mlp_out", layer_idx, n) if sandwich else None
        self.res_mlp = baseline.residual(d, "mlp", layer_idx, n)
        if config.mlp == "swiglu":
            self.mlp: nn.Module = SwiGLU(d, config.hidden_dim, act_layer=baseline.activation, bias=config.bias)
        else:
            self.mlp = Mlp(d, config.hidden_dim, act_layer=baseline.activation, bias=config.bias)

    def norm_sites(self) -> Iterator[tuple[str, str, nn.Module]]:
        """This block's norm sites as (site, attribute name, module), in forward order."""
        for branch in ("attn", "mlp"):
            yield branch, f"norm_{branch}", getattr(self, f"norm_{branch}")
            out = getattr(self, f"norm_{branch}_out")
            if out is not None:
                yield f"{branch}_out", f"norm_{branch}_out", out

    def sublayer(self, x: torch.Tensor, branch: str) -> torch.Tensor:
        """The stream after branch ``branch`` (attn or mlp), its norm placed as ``self.placement`` says."""
        norm, res, f = getattr(self, f"norm_{branch}"), getattr(self, f"res_{branch}"), getattr(self, branch)
        if self.placement == "post":
            return norm(res.combine(x, f(res.branch_input(x))))
        if self.placement == "res_post":
            return res.combine(x, norm(f(res.branch_input(x))))
        y = f(res.branch_input(norm(x)))
        out = getattr(self, f"norm_{branch}_out")
        return res.combine(x, y if out is None else out(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sublayer(self.sublayer(x, "attn"), "mlp")


class Transformer(nn.Module):
    """Embedding, ``n_layers`` blocks, the final norm site and a head (LM or ViT classifier)."""

    def __init__(self, config: ModelConfig, baseline: Baseline) -> None:
        super().__init__()
        self.config = config
        self.baseline = baseline
        d = config.d_model
        if config.task == "vit":
            self.patch_embed = PatchEmbed(config.image_size, config.patch_size, config.in_chans, d)
            out_dim = config.num_classes
        else:
            self.tok_emb = nn.Embedding(config.vocab_size, d)
            out_dim = config.vocab_size
        self.pos_emb = nn.Parameter(torch.zeros(1, config.n_tokens, d)) if config.positions == "learned" else None
        self.embed_scale = baseline.embedding_scale(d)
        causal = config.task == "lm"
        self.blocks = nn.ModuleList(Block(config, baseline, i, causal) for i in range(config.n_layers))
        post = baseline.check_placement(config.placement) == "post"  # post-LN: the last block ends in a norm
        self.norm_final = nn.Identity() if post else baseline.norm(d, "final", config.n_layers, config.n_layers)
        self.has_final_site = not post
        self.head = nn.Linear(d, out_dim, bias=config.task == "vit")
        self.reset_parameters()
        apply_norm_impl(self, config.norm_impl)  # eager, compiled or fused norm sites (model.norm_impl)

    def branch_linears(self) -> Iterator[tuple[int, str, nn.Linear]]:
        """Every linear layer inside a residual branch, as (layer_idx, role, module).

        Roles: ``qkv`` and ``attn_out`` (attention), ``mlp_in`` (fc1, or both SwiGLU inputs) and
        ``mlp_out``. Baselines use this for depth-dependent inits instead of matching names.
        """
        return block_branch_linears(self.blocks)

    def norm_sites(self) -> Iterator[NormSite]:
        """Every norm site as (layer_idx, site, qualified name, module), in forward order; ``final`` has layer
        n_layers (none under ``post``), sandwich's second norms are sites ``attn_out`` and ``mlp_out``."""
        for block in self.blocks:
            for site, attr, module in block.norm_sites():
                yield block.layer_idx, site, f"blocks.{block.layer_idx}.{attr}", module
        if self.has_final_site:
            yield self.config.n_layers, "final", "norm_final", self.norm_final

    def residual_sites(self) -> Iterator[ResidualSite]:
        """Every residual combine as (layer_idx, branch, qualified name, residual)."""
        for block in self.blocks:
            yield block.layer_idx, "attn", f"blocks.{block.layer_idx}.res_attn", block.res_attn
            yield block.layer_idx, "mlp", f"blocks.{block.layer_idx}.res_mlp", block.res_mlp

    def embeddings(self) -> list[nn.Module | nn.Parameter]:
        """The input embedding weights (token or patch) and the learned positions, if any."""
        first: Any = self.patch_embed.proj if self.config.task == "vit" else self.tok_emb
        return [first] + ([self.pos_emb] if self.pos_emb is not None else [])

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The network's init (``model.init``: the shared GPT-2 rule, or the rule the baseline's paper
        uses, `Baseline.network_init`), then the baseline's own `init_`."""
        rule = "gpt2" if self.config.init == "shared" else self.baseline.network_init()
        NETWORK_INITS[rule](self)
        self.baseline.init_(self)

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) or images (B, C, H, W) to the residual stream (B, T, d); ``model.input_scale`` c
        multiplies the pixels (ViT) or the token embedding's output (LM), the data rescaling of
        ``analyze --invariance``."""
        c = self.config.input_scale
        if self.config.task == "vit":
            x = self.patch_embed(inputs * c if c != 1 else inputs)
        else:
            x = self.tok_emb(inputs)
            x = x * c if c != 1 else x
        if self.pos_emb is None:
            return self.embed_scale(x)
        pos = self.pos_emb[:, : x.shape[1]]
        return self.embed_scale(x + pos) if self.baseline.scale_positions else self.embed_scale(x) + pos

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """LM: ids (B, T) -> logits (B, T, vocab). ViT: images (B, C, H, W) -> logits (B, classes)."""
        x = self.forward_features(self.embed(inputs))
        if self.config.task == "vit":
            x = x.mean(dim=1)  # mean pooling; the final norm sits after it (fc_norm)
        return self.head(self.norm_final(x))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
