"""What the fused DyT forward costs on this CPU beyond moving memory: the C++ kernel's forward against a
compiled kernel that moves the same bytes with only DyT's affine arithmetic, and a plain copy.

Usage: ``.venv/bin/python dev/tanh_cost.py [--widths 256,1024] [--tokens 4096] [--min-run-time 0.3]``

Each row times, on fp32 (tokens x width), with the speed suite's own timer
(`normfree_bench.tools.speed.measure_interleaved`: the four taken block by block in turn, the median block):
``copy`` (x copied into a preallocated tensor), ``layernorm`` (torch's eager kernel), ``dyt_fused`` (the forward that
``model.norm_impl: fused`` runs on CPU: `normfree_bench.core.fused.cpu_kernel`, tanh not kept), and
``affine_only`` (``gamma * (alpha x) + beta`` compiled: DyT's memory traffic without tanh). The gap between
``dyt_fused`` and ``affine_only`` is the cost of tanh's arithmetic. Not a benchmark of the project's
layers (``normfree-bench speed`` is): a probe of where the fused form's time goes. Run it alone.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch

from normfree_bench.core.fused import cpu_kernel
from normfree_bench.tools.speed import measure_interleaved


def affine_only(x: torch.Tensor, alpha: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return weight * (alpha * x) + bias


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="256,1024")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--min-run-time", type=float, default=0.3, help="seconds of calls per timed function")
    args = p.parse_args(argv)
    fused, affine = cpu_kernel().forward, torch.compile(affine_only)
    print("| width | copy ms | layernorm ms | dyt_fused ms | affine_only ms | dyt_fused / copy |")
    print("|---|---|---|---|---|---|")
    for width in (int(w) for w in args.widths.split(",")):
        x = torch.randn(args.tokens, width, generator=torch.Generator().manual_seed(0))
        alpha, weight, bias = torch.tensor([0.5]), torch.ones(width), torch.zeros(width)
        ln = torch.nn.LayerNorm(width)
        fns = {"copy": partial(torch.empty_like(x).copy_, x), "layernorm": partial(ln, x),
               "dyt_fused": partial(fused, x, alpha, x.new_empty(0), weight, bias, 1.0, False),
               "affine_only": partial(affine, x, alpha, weight, bias)}
        with torch.no_grad():
            timed = measure_interleaved(fns, args.min_run_time)
        row = [1e3 * timed[k][0] for k in fns]
        print(f"| {width} | " + " | ".join(f"{v:.3f}" for v in row) + f" | {row[2] / row[0]:.1f}× |")


if __name__ == "__main__":
    main()
