"""Checks that baselines declare about their model at init (used by ``Baseline.check_init``).

Usage: ``problems = branches_are_silent(model, batch)  # [] when every block is the identity``
"""

from __future__ import annotations

import torch

from normfree_bench.core.baseline import ModelView


@torch.no_grad()
def block_streams(model: ModelView, batch: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream before the first block and after every block."""
    x = model.embed(batch)
    streams = [x]
    for block in model.blocks:
        x = block(x)
        streams.append(x)
    return streams


def branches_are_silent(model: ModelView, batch: torch.Tensor, atol: float = 0.0) -> list[str]:
    """Every residual branch contributes nothing at init: each block returns its input."""
    streams = block_streams(model, batch)
    return [
        f"block {i} changes the residual stream at init (max |delta| = {(b - a).abs().max().item():.3g})"
        for i, (a, b) in enumerate(zip(streams, streams[1:]))
        if not torch.allclose(a, b, rtol=0.0, atol=atol)
    ]
