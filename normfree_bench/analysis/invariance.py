"""Rescaling invariance (``normfree-bench analyze RUN_DIR --invariance``): how far a model's output moves when
the weights that feed its norm sites, or its input, are multiplied by c.

Usage: ``figures = rescaling_invariance(model, x, y)``  (``{"weights": {"0.1": {...}, ...}, "input": {...}}``)

LayerNorm is invariant to rescaling its input, so a pre-norm Transformer whose every norm site is a LayerNorm
(or RMSNorm) is invariant to rescaling the residual stream, up to eps; DyT is not, by construction. Two
rescalings, each at c in `SCALES`, on one validation batch:

- ``weights``: every parameter that writes into the residual stream, the stream every norm site reads, is
  multiplied by c: the input embeddings and learned positions (``ModelView.embeddings``; a patch
  embedding's bias too) and every attention and MLP output projection, weight and bias
  (``branch_linears`` roles ``attn_out`` and ``mlp_out``). With norms at every site the stream is then
  exactly c times the original at every layer (the norm's output does not change, so neither does the
  branch's before its output projection).
- ``input``: the first embedding's weight alone is multiplied by c: the token embedding for the LM, the
  patch projection's weight for the ViT (the same as multiplying the pixels by c); positions and
  branches unchanged.

Per c: ``rel_change`` = ||logits_c - logits||_F / ||logits||_F and ``loss_change`` = loss_c - loss (mean
cross-entropy of the batch). The parameters are restored bit for bit afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from normfree_bench.models.transformer import task_loss

SCALES = (0.1, 0.5, 2.0, 10.0)
STREAM_ROLES = ("attn_out", "mlp_out")  # the branch layers that write into the residual stream


def _tensors(item: nn.Module | nn.Parameter, bias: bool = True) -> list[torch.Tensor]:
    if isinstance(item, nn.Parameter):
        return [item]
    out = [item.weight]
    if bias and getattr(item, "bias", None) is not None:
        out.append(item.bias)
    return out


def stream_params(model: Any) -> list[torch.Tensor]:
    """Every parameter that writes into the residual stream: embeddings, positions, output projections."""
    params = [t for item in model.embeddings() for t in _tensors(item)]
    params += [t for _, role, linear in model.branch_linears() if role in STREAM_ROLES for t in _tensors(linear)]
    return params


def input_params(model: Any) -> list[torch.Tensor]:
    """The first embedding's weight: rescaling it rescales the model's input (tokens or pixels)."""
    return _tensors(model.embeddings()[0], bias=False)


@contextmanager
def rescaled(params: list[torch.Tensor], c: float) -> Iterator[None]:
    """``params`` multiplied by ``c`` inside the block, restored exactly after it."""
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p in params:
                p.mul_(c)
        yield
    finally:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)


@torch.no_grad()
def _outputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, float]:
    logits = model(x).float()
    return logits, float(task_loss(logits, y))


@torch.no_grad()
def rescaling_invariance(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         scales: tuple[float, ...] = SCALES) -> dict[str, dict[str, dict[str, float]]]:
    """``{"weights" | "input": {str(c): {"rel_change", "loss_change"}}}`` for ``model`` on batch (x, y)."""
    model.eval()
    base, base_loss = _outputs(model, x, y)
    norm = float(base.norm())
    out: dict[str, dict[str, dict[str, float]]] = {}
    for kind, params in (("weights", stream_params(model)), ("input", input_params(model))):
        out[kind] = {}
        for c in scales:
            with rescaled(params, c):
                logits, loss = _outputs(model, x, y)
            rel = float((logits - base).norm()) / norm if norm > 0 else math.nan
            out[kind][f"{c:g}"] = {"rel_change": rel, "loss_change": loss - base_loss}
    return out
