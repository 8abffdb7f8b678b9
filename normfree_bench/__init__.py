"""normfree-bench: one Transformer, many normalization schemes, fair learning-rate sweeps.

Usage::

    from normfree_bench import ModelConfig, build_model, list_baselines
    model = build_model("dyt", ModelConfig(d_model=64, n_layers=4))
    logits = model(ids)  # ids: LongTensor (B, T) -> (B, T, vocab_size)
"""

from normfree_bench.api import Baseline
from normfree_bench.config import ModelConfig
from normfree_bench.convert import convert
from normfree_bench.model import Transformer, build_model
from normfree_bench.registry import get_baseline, list_baselines, load_plugin, register_baseline

__version__ = "0.1.0"

__all__ = [
    "Baseline",
    "ModelConfig",
    "Transformer",
    "build_model",
    "convert",
    "get_baseline",
    "list_baselines",
    "load_plugin",
    "register_baseline",
]
