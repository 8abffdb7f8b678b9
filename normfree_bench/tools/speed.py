"""The speed suite: is a scheme faster? Norm-layer and whole-model timings, eager and compiled.

Usage: ``normfree-bench speed --out runs/speed``  (``--overhead`` times the harness against a bare loop)

Layer benchmark: each baseline's norm module at the ``attn`` site on a (tokens, width) tensor, forward
and forward+backward, eager and ``torch.compile``, fp32 and bf16 (where the device supports it).
Model benchmark: training-step and inference tokens/s of the whole Transformer per baseline at two
sizes, eager and compiled; MFU against the device's peak on GPU. Method:

- timings come from ``torch.utils.benchmark.Timer.blocked_autorange`` (it synchronises CUDA, warms
  up and repeats), reported as the median with the interquartile range;
- compile time is the first call of the compiled module, timed and reported apart;
- every figure is compared only within one run on one device, also as a ratio to ``layernorm``;
- bandwidth = bytes moved / time, with bytes = 2 x tensor (forward: read x, write y) and
  5 x tensor (forward+backward: also read x and dy, write dx); parameters are negligible.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate
from torch import nn

from normfree_bench.config import ModelConfig
from normfree_bench.core.registry import get_baseline
from normfree_bench.io import atomic_write_text, write_csv, write_json
from normfree_bench.models.factory import build_model
from normfree_bench.models.transformer import task_loss
from normfree_bench.store.provenance import collect_provenance
from normfree_bench.tables.plots import plt, save_figure

# Peak dense bf16 tensor FLOP/s and HBM bandwidth of GPUs we know, for MFU and % of peak bandwidth.
GPU_PEAKS = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12), "A100": (312e12, 2.0e12)}


@dataclass
class SpeedSettings:
    baselines: list[str]
    widths: list[int] = field(default_factory=lambda: [256, 1024])
    tokens: int = 4096
    model_sizes: list[dict[str, int]] = field(default_factory=lambda: [
        {"d_model": 64, "n_layers": 4, "n_heads": 4}, {"d_model": 128, "n_layers": 4, "n_heads": 4}])
    batch_size: int = 16
    context_length: int = 128
    dtypes: list[str] = field(default_factory=lambda: ["fp32", "bf16"])
    compile: bool = True
    min_run_time: float = 0.3  # seconds per measurement (blocked_autorange)
    device: str = "cpu"


def gpu_peaks(device: str) -> tuple[float, float] | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in GPU_PEAKS.items() if k in name), None)


def _measure(fn: Callable[[], Any], min_run_time: float) -> tuple[float, float]:
    """(median, interquartile range) in seconds of one call of ``fn``."""
    # Imported here: torch.utils.benchmark imports torch.utils.cpp_extension, which logs a
    # "No CUDA runtime" warning on CPU hosts at import time, before the CLI can silence it.
    from torch.utils.benchmark import Timer

    m = Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time)
    return m.median, m.iqr


def _compiled(module: nn.Module, example: Callable[[nn.Module], Any], enabled: bool) -> tuple[nn.Module, float]:
    """``torch.compile(module)`` and the seconds its first call took (the compile time)."""
    if not enabled:
        return module, 0.0
    compiled = torch.compile(module)
    t0 = time.perf_counter()
    example(compiled)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return compiled, time.perf_counter() - t0


def norm_forward(m: nn.Module, x: torch.Tensor, device_type: str, amp: bool) -> torch.Tensor:
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
        return m(x)


def norm_forward_backward(m: nn.Module, x: torch.Tensor, dy: torch.Tensor, device_type: str, amp: bool) -> None:
    norm_forward(m, x, device_type, amp).backward(dy)


def train_step(m: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, device_type: str,
               amp: bool) -> None:
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
        loss = task_loss(m(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def infer(m: nn.Module, x: torch.Tensor, device_type: str, amp: bool) -> None:
    with torch.no_grad(), torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
        m(x)


def layer_rows(s: SpeedSettings) -> list[dict[str, Any]]:
    rows = []
    dev = torch.device(s.device)
    peaks = gpu_peaks(s.device)
    for width in s.widths:
        config = ModelConfig(d_model=width, n_heads=max(1, width // 64), n_layers=4)
        for name in s.baselines:
            module = get_baseline(name)(config).norm(width, "attn", 0, config.n_layers)
            if isinstance(module, nn.Identity):
                continue  # no norm at this site (the scheme's cost is in its residual: see the model rows)
            for dtype_name in s.dtypes:
                dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
                layer = module.to(dev)
                x = torch.randn(s.tokens, width, device=dev, dtype=dtype, requires_grad=True)
                dy = torch.randn_like(x)
                for compiled in ([False, True] if s.compile else [False]):
                    amp = dtype != torch.float32
                    run, compile_s = _compiled(layer, partial(norm_forward_backward, x=x, dy=dy,
                                                              device_type=dev.type, amp=amp), compiled)
                    for mode, fn, moved in (
                            ("fwd", partial(norm_forward, run, x, dev.type, amp), 2),
                            ("fwd+bwd", partial(norm_forward_backward, run, x, dy, dev.type, amp), 5)):
                        median, iqr = _measure(fn, s.min_run_time)
                        nbytes = moved * x.numel() * x.element_size()
                        row = {"bench": "layer", "baseline": name, "width": width, "tokens": s.tokens,
                               "dtype": dtype_name, "compiled": compiled, "mode": mode, "time_ms": median * 1e3,
                               "iqr_ms": iqr * 1e3, "gb_per_s": nbytes / median / 1e9, "compile_s": compile_s}
                        if peaks:
                            row["pct_peak_bw"] = 100 * nbytes / median / peaks[1]
                        rows.append(row)
    return rows


def flops_per_token(model: nn.Module, config: ModelConfig) -> float:
    """Training FLOPs per token: 6 N (weights) + 12 L d T (attention), as in the PaLM/nanoGPT estimate."""
    n = sum(p.numel() for p in model.parameters())
    return 6 * n + 12 * config.n_layers * config.d_model * config.context_length


def model_rows(s: SpeedSettings) -> list[dict[str, Any]]:
    rows = []
    dev = torch.device(s.device)
    peaks = gpu_peaks(s.device)
    tokens = s.batch_size * s.context_length
    for size in s.model_sizes:
        config = ModelConfig(context_length=s.context_length, **size)
        ids = torch.randint(0, config.vocab_size, (s.batch_size, s.context_length + 1), device=dev)
        x, y = ids[:, :-1], ids[:, 1:]
        for name in s.baselines:
            for dtype_name in s.dtypes:
                amp = dtype_name == "bf16"
                for compiled in ([False, True] if s.compile else [False]):
                    torch.manual_seed(0)
                    model = build_model(name, config).to(dev)
                    opt = torch.optim.AdamW(model.baseline.param_groups(model, 1e-3, 0.1), lr=1e-3)

                    run, compile_s = _compiled(model, partial(train_step, opt=opt, x=x, y=y, device_type=dev.type,
                                                              amp=amp), compiled)
                    train_t, train_iqr = _measure(partial(train_step, run, opt, x, y, dev.type, amp), s.min_run_time)
                    infer_t, _ = _measure(partial(infer, run, x, dev.type, amp), s.min_run_time)
                    row = {"bench": "model", "baseline": name, "d_model": config.d_model, "n_layers": config.n_layers,
                           "params": sum(p.numel() for p in model.parameters()), "dtype": dtype_name,
                           "compiled": compiled, "train_tokens_per_s": tokens / train_t,
                           "train_iqr_ms": train_iqr * 1e3, "infer_tokens_per_s": tokens / infer_t,
                           "compile_s": compile_s}
                    if peaks:
                        row["mfu_pct"] = 100 * flops_per_token(model, config) * tokens / train_t / peaks[0]
                    rows.append(row)
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each figure as a ratio to ``layernorm``'s under the same settings, in the same run."""
    def key(r: dict[str, Any]) -> tuple:
        return tuple((k, v) for k, v in r.items() if k in ("bench", "width", "d_model", "dtype", "compiled", "mode"))

    reference = {key(r): r for r in rows if r["baseline"] == "layernorm"}
    for r in rows:
        ref = reference.get(key(r))
        if ref is None:
            continue
        if r["bench"] == "layer":
            r["time_vs_layernorm"] = r["time_ms"] / ref["time_ms"]
        else:
            r["train_vs_layernorm"] = r["train_tokens_per_s"] / ref["train_tokens_per_s"]
            r["infer_vs_layernorm"] = r["infer_tokens_per_s"] / ref["infer_tokens_per_s"]


LAYER_COLUMNS = ("baseline", "width", "dtype", "compiled", "mode", "time_ms", "iqr_ms", "time_vs_layernorm",
                 "gb_per_s", "pct_peak_bw", "compile_s")
MODEL_COLUMNS = ("baseline", "d_model", "n_layers", "params", "dtype", "compiled", "train_tokens_per_s",
                 "train_vs_layernorm", "infer_tokens_per_s", "infer_vs_layernorm", "mfu_pct", "compile_s")


def render_tables(rows: list[dict[str, Any]]) -> str:
    out = []
    for bench, columns in (("layer", LAYER_COLUMNS), ("model", MODEL_COLUMNS)):
        part = [r for r in rows if r["bench"] == bench]
        if not part:
            continue
        cols = [c for c in columns if any(c in r for r in part)]
        body = [[_fmt(r.get(c)) for c in cols] for r in part]
        out.append(f"{bench} benchmark\n" + tabulate(body, headers=cols, tablefmt="github", disable_numparse=True))
    return "\n\n".join(out)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)


def plot_speed(rows: list[dict[str, Any]], path: Path) -> None:
    """Bars: model training tokens/s per baseline (eager and compiled, fp32), one panel per size."""
    model = [r for r in rows if r["bench"] == "model" and r["dtype"] == "fp32"]
    sizes = sorted({r["d_model"] for r in model})
    if not sizes:
        return
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.6), layout="constrained", squeeze=False)
    for ax, size in zip(axes[0], sizes):
        part = [r for r in model if r["d_model"] == size]
        names = list(dict.fromkeys(r["baseline"] for r in part))
        for i, compiled in enumerate(sorted({r["compiled"] for r in part})):
            vals = [next((r["train_tokens_per_s"] for r in part if r["baseline"] == n and r["compiled"] == compiled),
                         math.nan) for n in names]
            ax.bar([j + 0.4 * i for j in range(len(names))], vals, width=0.4,
                   label="compiled" if compiled else "eager")
        ax.set_xticks([j + 0.2 for j in range(len(names))], names, rotation=30)
        ax.set_title(f"d_model={size}: training tokens/s (fp32)")
        ax.legend()
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)


def run_speed(settings: SpeedSettings, out_dir: Path) -> list[dict[str, Any]]:
    rows = layer_rows(settings) + model_rows(settings)
    add_ratios(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "speed.json", {"settings": asdict(settings), "rows": rows,
                                        "provenance": collect_provenance(settings.device, "", "")})
    columns = list(dict.fromkeys(k for r in rows for k in r))
    write_csv(out_dir / "speed.csv", rows, columns)
    atomic_write_text(out_dir / "speed.md", render_tables(rows) + "\n")
    plot_speed(rows, out_dir / "speed.png")
    return rows
