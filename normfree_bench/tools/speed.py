"""The speed suite: is a scheme faster? Norm-layer and whole-model timings per implementation of the norm.

Usage: ``normfree-bench speed --out runs/speed``  (``--overhead`` times the harness against a bare loop)

Layer benchmark: each baseline's norm module at the ``attn`` site on a (tokens, width) tensor, forward
and forward+backward, fp32 and bf16 (where the device supports it), in each implementation it has
(``impl``, normfree_bench.core.norm_impl): ``eager`` (the module), ``compiled`` (``torch.compile``) and
``fused`` (DyT, Derf, the centred sigmoid: one autograd Function; for the tanh forms a C++ kernel on
CPU and Triton on CUDA). LayerNorm's and
RMSNorm's fused form is their eager module (torch's native kernel), so it is not timed twice.
Model benchmark: training-step and inference tokens/s of the whole Transformer per baseline at three
sizes, with ``model.norm_impl`` eager, compiled and fused, and the whole model under ``torch.compile``
(``compiled`` column, eager norms); the norm sites' share of the step time from a profiler trace
(normfree_bench.tools.norm_share); MFU against the device's peak on GPU. Method:

- a timing is the median over ``ROUNDS`` blocks of calls (CUDA synchronised around each block; a block's
  call count is sized to ``min_run_time / ROUNDS``), with the interquartile range of those blocks; in
  the layer benchmark every variant at one width and dtype, and the copy that sets the floor, are timed
  block by block in turn (``measure_interleaved``), so a change in the machine's speed during the cell
  reaches all of them alike and the ratios between them hold; forward+backward is
  ``torch.autograd.grad`` of x and the parameters (no ``.grad`` accumulation pass);
- compile time is the first call of the compiled module, timed and reported apart (dynamo's caches are
  reset before each cell of the layer benchmark and each compiled model variant; a cell's compiled
  layers share one cache, whose recompile limit is raised for them and made an error when hit, so no
  layer falls back to eager unseen);
- every figure is compared only within one run on one device: ``time_vs_layernorm`` against LayerNorm
  in the same implementation (its eager kernel for ``fused``), ``vs_layernorm_best`` against LayerNorm's
  fastest implementation at the same width, dtype and mode;
- the floor: ``min_bytes`` is what the layer must move at least, 2 N elements forward (read x, write y)
  and 5 N forward+backward (also read dy and x, write dx; x, not a saved y, because dalpha needs it),
  N = tokens x width in x's dtype, parameters (O(width)) neglected (an implementation may move more: the
  CPU kernel keeps tanh for the backward on small tensors, 7 N in all); ``copy_ms`` is the time of a
  same-size tensor copy (``dst.copy_(x)``: 2 N elements) measured in the same run, ``floor_ms`` that
  copy's time scaled to ``min_bytes``, ``vs_floor = time_ms / floor_ms`` (1 = as fast as a copy);
- bandwidth = ``min_bytes`` / time, and % of peak bandwidth on known GPUs;
- with glibc, freed memory stays in the process for the whole run (`pin_allocator`, recorded in speed.json
  as ``allocator``): with its defaults a layer holding two large outputs at once paid the OS's page faults
  on every call, which a training process does not.
"""

from __future__ import annotations

import copy
import ctypes
import math
import platform
import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate
from torch import nn

from normfree_bench.config import NORM_IMPLS, ModelConfig, unknown_choice
from normfree_bench.core.norm_impl import available_impls, fused_is_eager, implement
from normfree_bench.core.registry import get_baseline
from normfree_bench.errors import UserError
from normfree_bench.io import atomic_write_text, write_csv, write_json
from normfree_bench.models.factory import build_model
from normfree_bench.models.transformer import task_loss
from normfree_bench.store.provenance import collect_provenance
from normfree_bench.tables.plots import plt, save_figure
from normfree_bench.tools.norm_share import norm_share

# Peak dense bf16 tensor FLOP/s and HBM bandwidth of GPUs we know, for MFU and % of peak bandwidth.
GPU_PEAKS = {"H100": (989e12, 3.35e12), "H200": (989e12, 4.8e12), "A100": (312e12, 2.0e12)}


@dataclass
class SpeedSettings:
    """What to time. ``impls``: the norm implementations (``compile=False`` drops ``compiled`` and the
    whole-model compile). The dataclass default keeps the suite of before implementations existed
    (eager and compiled); ``normfree-bench speed`` times all three unless ``--impls`` narrows it.
    A model size may name its own ``context_length`` (else ``context_length`` below)."""

    baselines: list[str]
    widths: list[int] = field(default_factory=lambda: [256, 1024])
    tokens: int = 4096
    model_sizes: list[dict[str, int]] = field(default_factory=lambda: [
        {"d_model": 64, "n_layers": 4, "n_heads": 4}, {"d_model": 128, "n_layers": 4, "n_heads": 4},
        {"d_model": 512, "n_layers": 2, "n_heads": 8, "context_length": 32}])
    batch_size: int = 16
    context_length: int = 128
    dtypes: list[str] = field(default_factory=lambda: ["fp32", "bf16"])
    compile: bool = True
    impls: list[str] = field(default_factory=lambda: ["eager", "compiled"])
    profile_steps: int = 1  # profiled training steps per model row, for the norm share (0: no profile)
    min_run_time: float = 0.3  # seconds of calls per timed variant, in ROUNDS blocks
    device: str = "cpu"

    def __post_init__(self) -> None:
        for impl in self.impls:
            if impl not in NORM_IMPLS:
                raise UserError(unknown_choice(impl, NORM_IMPLS, "speed implementation"))

    def wants(self, impl: str) -> bool:
        return impl in self.impls and (impl != "compiled" or self.compile)


def gpu_peaks(device: str) -> tuple[float, float] | None:
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in GPU_PEAKS.items() if k in name), None)


ROUNDS = 15  # blocks per timed variant: its median and interquartile range are over these
# A cell's compiled layers all go through nn.Module._call_impl, one dynamo cache: room for every layer of
# a cell, and an error rather than a silent fallback to eager if that is ever not enough.
CELL_DYNAMO_LIMITS = {"recompile_limit": 64, "fail_on_recompile_limit_hit": True}


# glibc's malloc (mallopt parameters, <malloc.h>): never hand freed heap memory back to the OS, and serve
# allocations up to 32 MiB (its largest mmap threshold) from the heap.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
PINNED_MALLOC = {M_TRIM_THRESHOLD: 2**30, M_MMAP_THRESHOLD: 32 * 2**20}  # C ints


def pin_allocator() -> str:
    """Keep freed memory in the process for the rest of it, so that timings measure the layers and not the
    kernel zeroing fresh pages. With glibc's defaults, a call that holds two 4 MiB outputs at once (the fused
    DyT forward's y and kept tanh at 4096 x 256) returns them to the OS when they are freed (the heap's free
    top passes the trim threshold) and takes page faults for all of them on the next call: about 2,000
    faults and 3.1 against 0.8 ms per call for two 4 MiB clones on the 2-core AVX2 reference machine, which
    a training process, holding many tensors, does not pay. Done once, before anything is timed, for every
    row alike; what it did is returned for speed.json (``allocator``)."""
    if platform.libc_ver()[0] != "glibc":
        return f"unchanged ({platform.libc_ver()[0] or 'not'} glibc: no mallopt)"
    mallopt = ctypes.CDLL(None).mallopt
    if not all(mallopt(param, value) == 1 for param, value in PINNED_MALLOC.items()):
        return "unchanged (mallopt refused the thresholds)"
    return "glibc malloc: trim threshold 1 GiB, mmap threshold 32 MiB (freed memory stays in the process)"


def _time_block(fn: Callable[[], Any], number: int) -> float:
    """Seconds per call of ``fn`` over ``number`` calls in a row, the device synchronised around them."""
    _sync()
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    _sync()
    return (time.perf_counter() - t0) / number


def measure_interleaved(fns: Mapping[Hashable, Callable[[], Any]], min_run_time: float
                        ) -> dict[Hashable, tuple[float, float]]:
    """(median, interquartile range) in seconds of one call of each of ``fns``, with torch's intra-op threads
    as set. Each function's block is sized to ``min_run_time / ROUNDS`` seconds from its fastest of three
    single calls (after one warm-up call); then ``ROUNDS`` rounds each time one block of every function in
    turn, so all of them are sampled across the same stretch of time."""
    block_s = min_run_time / ROUNDS
    numbers = {}
    for key, fn in fns.items():
        fn()
        one = min(_time_block(fn, 1) for _ in range(3))
        numbers[key] = max(1, math.ceil(block_s / max(one, 1e-9)))
    times: dict[Hashable, list[float]] = {key: [] for key in fns}
    for _ in range(ROUNDS):
        for key, fn in fns.items():
            times[key].append(_time_block(fn, numbers[key]))
    out = {}
    for key, ts in times.items():
        q1, median, q3 = statistics.quantiles(ts, n=4, method="inclusive")
        out[key] = (median, q3 - q1)
    return out


def measure(fn: Callable[[], Any], min_run_time: float) -> tuple[float, float]:
    """(median, interquartile range) in seconds of one call of ``fn``: ``measure_interleaved`` of it alone."""
    return measure_interleaved({"fn": fn}, min_run_time)["fn"]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _first_call(example: Callable[[], Any], compiling: bool) -> float:
    """Seconds the first call of ``example`` took when it compiles (the compile time), else 0 (not called)."""
    if not compiling:
        return 0.0
    t0 = time.perf_counter()
    example()
    _sync()
    return time.perf_counter() - t0


def min_bytes(mode: str, x: torch.Tensor) -> int:
    """What a norm layer must move at least: 2 N elements forward, 5 N forward+backward (module docstring)."""
    return (2 if mode == "fwd" else 5) * x.numel() * x.element_size()


def norm_forward(m: nn.Module, x: torch.Tensor, device_type: str, amp: bool) -> torch.Tensor:
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp):
        return m(x)


def norm_forward_backward(m: nn.Module, x: torch.Tensor, dy: torch.Tensor, device_type: str, amp: bool) -> None:
    inputs = [x, *(p for p in m.parameters() if p.requires_grad)]
    torch.autograd.grad(norm_forward(m, x, device_type, amp), inputs, dy)


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


def layer_impls(module: nn.Module, s: SpeedSettings) -> list[str]:
    """The implementations of ``module`` to time: those it has and ``s`` asks for, its fused form only when
    that is not its eager module."""
    return [i for i in available_impls(module) if s.wants(i) and not (i == "fused" and fused_is_eager(module))]


def layer_rows(s: SpeedSettings) -> list[dict[str, Any]]:
    rows = []
    dev = torch.device(s.device)
    peaks = gpu_peaks(s.device)
    for width in s.widths:
        config = ModelConfig(d_model=width, n_heads=max(1, width // 64), n_layers=4)
        modules = {name: get_baseline(name)(config).norm(width, "attn", 0, config.n_layers) for name in s.baselines}
        # A scheme with no norm at this site has its cost in its residual: see the model rows.
        modules = {name: m for name, m in modules.items() if not isinstance(m, nn.Identity)}
        for dtype_name in s.dtypes:
            dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
            x = torch.randn(s.tokens, width, device=dev, dtype=dtype, requires_grad=True)
            dy = torch.randn_like(x)
            amp = dtype != torch.float32
            # The floor's unit: a copy of x into a preallocated tensor, 2 N elements moved.
            fns: dict[Hashable, Callable[[], Any]] = {"copy": partial(torch.empty_like(dy).copy_, dy)}
            compile_s: dict[tuple[str, str], float] = {}
            torch._dynamo.reset()
            with torch._dynamo.config.patch(**CELL_DYNAMO_LIMITS):
                for name, module in modules.items():
                    for impl in layer_impls(module, s):
                        layer = implement(copy.deepcopy(module).to(dev), impl, f"baseline '{name}'")
                        fns[name, impl, "fwd"] = partial(norm_forward, layer, x, dev.type, amp)
                        fns[name, impl, "fwd+bwd"] = partial(norm_forward_backward, layer, x, dy, dev.type, amp)
                        compile_s[name, impl] = _first_call(fns[name, impl, "fwd+bwd"], impl != "eager")
                timed = measure_interleaved(fns, s.min_run_time)
            copy_s = timed.pop("copy")[0]
            for (name, impl, mode), (median, iqr) in timed.items():
                nbytes = min_bytes(mode, x)
                floor_s = copy_s * nbytes / (2 * x.numel() * x.element_size())
                row = {"bench": "layer", "baseline": name, "width": width, "tokens": s.tokens,
                       "dtype": dtype_name, "impl": impl, "compiled": impl == "compiled", "mode": mode,
                       "time_ms": median * 1e3, "iqr_ms": iqr * 1e3, "copy_ms": copy_s * 1e3,
                       "min_bytes": nbytes, "floor_ms": floor_s * 1e3, "vs_floor": median / floor_s,
                       "gb_per_s": nbytes / median / 1e9, "compile_s": compile_s[name, impl]}
                if peaks:
                    row["pct_peak_bw"] = 100 * nbytes / median / peaks[1]
                rows.append(row)
    order = {name: i for i, name in enumerate(s.baselines)}
    return sorted(rows, key=lambda r: (r["width"], order[r["baseline"]], s.dtypes.index(r["dtype"])))


def flops_per_token(model: nn.Module, config: ModelConfig) -> float:
    """Training FLOPs per token: 6 N (weights) + 12 L d T (attention), as in the PaLM/nanoGPT estimate."""
    n = sum(p.numel() for p in model.parameters())
    return 6 * n + 12 * config.n_layers * config.d_model * config.context_length


def model_variants(model: nn.Module, s: SpeedSettings) -> list[tuple[str, bool]]:
    """(norm_impl, whole model compiled) pairs to time for a model built eager: each implementation its norm
    sites all have and that differs from eager there, then the whole model under ``torch.compile``."""
    sites = [m for _, _, _, m in model.norm_sites()]
    out = [("eager", False)] if s.wants("eager") else []
    if s.wants("compiled") and not all(isinstance(m, nn.Identity) for m in sites):
        out.append(("compiled", False))
    if s.wants("fused") and all("fused" in available_impls(m) for m in sites) \
            and not all(fused_is_eager(m) for m in sites):
        out.append(("fused", False))
    if s.wants("compiled"):
        out.append(("eager", True))
    return out


def model_rows(s: SpeedSettings) -> list[dict[str, Any]]:
    rows = []
    dev = torch.device(s.device)
    peaks = gpu_peaks(s.device)
    for size in s.model_sizes:
        config = ModelConfig(**{"context_length": s.context_length, **size})
        tokens = s.batch_size * config.context_length
        ids = torch.randint(0, config.vocab_size, (s.batch_size, config.context_length + 1), device=dev)
        x, y = ids[:, :-1], ids[:, 1:]
        for name in s.baselines:
            variants = model_variants(build_model(name, config), s)
            for dtype_name in s.dtypes:
                amp = dtype_name == "bf16"
                for impl, whole in variants:
                    if impl == "compiled" or whole:
                        torch._dynamo.reset()
                    torch.manual_seed(0)
                    model = build_model(name, replace(config, norm_impl=impl)).to(dev)
                    opt = torch.optim.AdamW(model.baseline.param_groups(model, 1e-3, 0.1), lr=1e-3)
                    run = torch.compile(model) if whole else model
                    step = partial(train_step, run, opt, x, y, dev.type, amp)
                    compile_s = _first_call(step, impl == "compiled" or whole)
                    train_t, train_iqr = measure(step, s.min_run_time)
                    infer_t, _ = measure(partial(infer, run, x, dev.type, amp), s.min_run_time)
                    row = {"bench": "model", "baseline": name, "d_model": config.d_model, "n_layers": config.n_layers,
                           "context_length": config.context_length, "params": model.num_params(), "dtype": dtype_name,
                           "impl": impl, "compiled": whole, "train_tokens_per_s": tokens / train_t,
                           "train_iqr_ms": train_iqr * 1e3, "infer_tokens_per_s": tokens / infer_t,
                           "compile_s": compile_s}
                    if s.profile_steps > 0 and not whole:  # a compiled whole model has no norm modules to label
                        share = norm_share(model, step, steps=s.profile_steps)
                        row.update(norm_ms=share["norm_ms"], norm_share_pct=share["norm_share_pct"])
                    if peaks:
                        row["mfu_pct"] = 100 * flops_per_token(model, config) * tokens / train_t / peaks[0]
                    rows.append(row)
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Each figure as a ratio to ``layernorm``'s in the same run, under the same settings: per implementation
    (``time_vs_layernorm``; a fused row against LayerNorm's eager, which is its fused kernel) and against
    LayerNorm's best implementation (``vs_layernorm_best``: fastest layer time; ``train_vs_layernorm_best``:
    highest training tokens/s, over its implementations and whole-model compile)."""
    def key(r: dict[str, Any], *extra: str) -> tuple:
        return tuple((k, r.get(k)) for k in ("bench", "width", "d_model", "n_layers", "dtype", "mode", *extra))

    same = {key(r, "impl", "compiled"): r for r in rows if r["baseline"] == "layernorm"}
    best: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        if r["baseline"] != "layernorm":
            continue
        k, held = key(r), best.get(key(r))
        if held is None or (r["time_ms"] < held["time_ms"] if r["bench"] == "layer"
                            else r["train_tokens_per_s"] > held["train_tokens_per_s"]):
            best[k] = r
    for r in rows:
        ref = same.get(key(r, "impl", "compiled"))
        if ref is None and r.get("impl") == "fused":  # layernorm's fused form is its eager module
            ref = same.get(key({**r, "impl": "eager"}, "impl", "compiled"))
        top = best.get(key(r))
        if r["bench"] == "layer":
            if ref is not None:
                r["time_vs_layernorm"] = r["time_ms"] / ref["time_ms"]
            if top is not None:
                r["vs_layernorm_best"] = r["time_ms"] / top["time_ms"]
        else:
            if ref is not None:
                r["train_vs_layernorm"] = r["train_tokens_per_s"] / ref["train_tokens_per_s"]
                r["infer_vs_layernorm"] = r["infer_tokens_per_s"] / ref["infer_tokens_per_s"]
            if top is not None:
                r["train_vs_layernorm_best"] = r["train_tokens_per_s"] / top["train_tokens_per_s"]


LAYER_COLUMNS = ("baseline", "width", "dtype", "impl", "mode", "time_ms", "iqr_ms", "time_vs_layernorm",
                 "vs_layernorm_best", "copy_ms", "min_bytes", "vs_floor", "gb_per_s", "pct_peak_bw", "compile_s")
MODEL_COLUMNS = ("baseline", "d_model", "n_layers", "context_length", "params", "dtype", "impl", "compiled",
                 "train_tokens_per_s", "train_vs_layernorm", "train_vs_layernorm_best", "infer_tokens_per_s",
                 "infer_vs_layernorm", "norm_ms", "norm_share_pct", "mfu_pct", "compile_s")


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


def _variant_label(impl: str, whole: bool) -> str:
    return "whole model compiled" if whole else {"eager": "eager", "compiled": "compiled norms",
                                                  "fused": "fused norms"}.get(impl, impl)


def plot_speed(rows: list[dict[str, Any]], path: Path) -> None:
    """Bars: model training tokens/s per baseline and variant (norm implementation, whole-model compile),
    fp32, one panel per size."""
    model = [r for r in rows if r["bench"] == "model" and r["dtype"] == "fp32"]
    sizes = sorted({r["d_model"] for r in model})
    if not sizes:
        return
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.6), layout="constrained", squeeze=False)
    for ax, size in zip(axes[0], sizes):
        part = [r for r in model if r["d_model"] == size]
        names = list(dict.fromkeys(r["baseline"] for r in part))
        variants = list(dict.fromkeys((r.get("impl", "eager"), r["compiled"]) for r in part))
        width = 0.8 / len(variants)
        for i, (impl, whole) in enumerate(variants):
            vals = [next((r["train_tokens_per_s"] for r in part if r["baseline"] == n
                          and (r.get("impl", "eager"), r["compiled"]) == (impl, whole)), math.nan) for n in names]
            ax.bar([j + width * i for j in range(len(names))], vals, width=width, label=_variant_label(impl, whole))
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=30)
        ax.set_title(f"d_model={size}: training tokens/s (fp32)")
        ax.legend(fontsize="small")
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)


def run_speed(settings: SpeedSettings, out_dir: Path) -> list[dict[str, Any]]:
    allocator = pin_allocator()
    rows = layer_rows(settings) + model_rows(settings)
    add_ratios(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "speed.json", {"settings": asdict(settings), "allocator": allocator, "rows": rows,
                                        "provenance": collect_provenance(settings.device, "", "")})
    columns = list(dict.fromkeys(k for r in rows for k in r))
    write_csv(out_dir / "speed.csv", rows, columns)
    atomic_write_text(out_dir / "speed.md", render_tables(rows) + "\n")
    plot_speed(rows, out_dir / "speed.png")
    return rows
