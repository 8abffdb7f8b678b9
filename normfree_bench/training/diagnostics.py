"""Numerical diagnostics of a model on one batch, recorded at eval steps (never on the training hot path).

Usage::

    with DiagnosticProbe(model) as probe:
        logits = model(batch)
    rows = probe.rows(logits, step=100, grad_norm=0.8)  # [(step, layer, site, metric, value), ...]

What a probe measures (``metric`` names, one row each; ``layer`` is None for model-wide rows):

- at every norm site (``attn``, ``mlp`` of each layer; ``final`` with layer = n_layers), on the
  site's INPUT: ``rms``, ``std``, ``max_over_rms`` and ``kurtosis`` (excess). The ``attn`` site's
  input is the residual stream entering the block, so its ``rms`` is the per-layer residual RMS;
- on 3-D inputs (the residual stream, B x T x d): ``token_mean_rms`` (RMS over channels of the
  stream's mean over tokens) and ``token_spread_rms`` (RMS of each token's deviation from that mean).
  A large mean/spread ratio is a token-shared component that can saturate a point-wise site and
  erase token information;
- at point-wise sites (modules with a ``squash`` method: DyT, Derf and the like): ``saturation``,
  the fraction of |f(alpha x + s)| > 0.99;
- per layer, site ``attn``: ``max_attn_logit``, the largest pre-softmax attention logit
  (Wortsman et al. 2023, attention-logit growth);
- model-wide: ``log_z``, the mean log-partition of the output softmax (output-logit divergence),
  and ``grad_norm``, the global gradient norm of the last training step;
- every learnable scalar parameter (numel 1), as metric ``param.<name>`` at the norm site or
  residual that owns it (`learnable_scalars`; for example ``param.alpha`` at (0, ``attn``) for DyT's
  first alpha, ``param.gain`` at (0, ``attn_residual``) for ReZero).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import torch
from torch import nn

from normfree_bench.core.baseline import ModelView
from normfree_bench.training.numerics import (
    excess_kurtosis,
    max_over_rms,
    rms,
    saturation_fraction,
    token_mean_and_spread,
)

DIAG_COLUMNS = ("step", "layer", "site", "metric", "value")
Row = tuple[int, int | None, str, str, float]


def scalar_owners(model: ModelView) -> dict[str, tuple[int, str]]:
    """(layer, site) of every norm site and residual by its qualified module name: a norm site is its
    site (``attn``, ``mlp``; ``final`` at layer n_layers), a residual ``<branch>_residual``."""
    owners = {name: (layer, site) for layer, site, name, _ in model.norm_sites()}
    owners |= {name: (layer, f"{branch}_residual") for layer, branch, name, _ in model.residual_sites()}
    return owners


def learnable_scalars(model: ModelView) -> list[tuple[int | None, str, str, float]]:
    """Every learnable scalar (numel == 1) parameter as (layer, site, ``param.<name>``, value): placed at
    the norm site or residual whose module holds it, named by its path inside that module
    (``param.alpha`` at (0, ``attn``) for DyT's first alpha); a scalar outside every site keeps its
    module path as the site (``embed_scale``) and no layer."""
    owners = scalar_owners(model)
    out = []
    for name, param in model.named_parameters():
        if param.numel() != 1:
            continue
        owner = next((o for o in owners if name.startswith(o + ".")), None)
        if owner is not None:
            layer, site = owners[owner]
            out.append((layer, site, f"param.{name[len(owner) + 1:]}", float(param.detach())))
        else:
            module_name, _, leaf = name.rpartition(".")
            out.append((None, module_name or "model", f"param.{leaf}", float(param.detach())))
    return out


def site_stats(x: torch.Tensor) -> dict[str, float]:
    """The statistics of one norm site's input."""
    x = x.detach().float()
    stats = {"rms": rms(x), "std": float(x.std()), "max_over_rms": max_over_rms(x), "kurtosis": excess_kurtosis(x)}
    if x.dim() == 3:
        stats["token_mean_rms"], stats["token_spread_rms"] = token_mean_and_spread(x)
    return stats


class DiagnosticProbe:
    """Forward hooks on every norm site and attention layer of a `Transformer`, for one forward pass.

    With ``keep_io=True`` the probe also keeps each site's (input, output) tensors in ``io`` (for
    the input-output S-curves of the analysis).
    """

    def __init__(self, model: nn.Module, keep_io: bool = False) -> None:
        self.model = model
        self.keep_io = keep_io
        self.stats: list[tuple[int, str, str, float]] = []  # (layer, site, metric, value)
        self.io: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> DiagnosticProbe:
        for layer, site, _, module in self.model.norm_sites():
            self._handles.append(module.register_forward_hook(self._hook(layer, site)))
        for block in self.model.blocks:
            block.attn.record_max_logit = True
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for block in self.model.blocks:
            block.attn.record_max_logit = False

    def _hook(self, layer: int, site: str) -> Any:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            x = args[0]
            for metric, value in site_stats(x).items():
                self.stats.append((layer, site, metric, value))
            squash = getattr(module, "squash", None)
            if callable(squash):
                with torch.no_grad():
                    self.stats.append((layer, site, "saturation", saturation_fraction(squash(x))))
            if self.keep_io:
                self.io[(layer, site)] = (x.detach().float().cpu(), output.detach().float().cpu())
        return hook

    def rows(self, logits: torch.Tensor, step: int, grad_norm: float | None = None) -> list[Row]:
        """Every measurement of the probed forward pass, stamped with ``step``."""
        out: list[Row] = [(step, *stat) for stat in self.stats]
        for block in self.model.blocks:
            max_logit = getattr(block.attn, "max_logit", None)  # our Attention records it; timm's does not
            if max_logit is not None:
                out.append((step, block.layer_idx, "attn", "max_attn_logit", float(max_logit)))
        log_z = torch.logsumexp(logits.detach().float(), dim=-1)
        out.append((step, None, "model", "log_z", float(log_z.mean())))
        if grad_norm is not None:
            out.append((step, None, "model", "grad_norm", float(grad_norm)))
        out += [(step, *scalar) for scalar in learnable_scalars(self.model)]
        return out
