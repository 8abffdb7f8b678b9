"""normfree-bench: one Transformer, many normalization schemes, fair learning-rate sweeps.

Usage::

    from normfree_bench import ModelConfig, build_model, list_baselines
    model = build_model("dyt", ModelConfig(d_model=64, n_layers=4))
    logits = model(ids)  # ids: LongTensor (B, T) -> (B, T, vocab_size)

``normfree_bench.convert`` (apply a baseline to a timm model) is loaded on first use, so importing the
package, or a plugin, does not import timm's ViT.
"""

from typing import Any

from normfree_bench import (
    _env,  # noqa: F401  (first: it sets environment torch reads when it loads)
    _legacy,
)
from normfree_bench.config import ModelConfig
from normfree_bench.core.baseline import Baseline, ModelView
from normfree_bench.core.registry import get_baseline, list_baselines, load_plugin, register_baseline
from normfree_bench.models.factory import build_model
from normfree_bench.models.transformer import Transformer

__version__ = "0.1.0"

__all__ = [
    "Baseline",
    "ModelConfig",
    "ModelView",
    "Transformer",
    "build_model",
    "convert",
    "get_baseline",
    "list_baselines",
    "load_plugin",
    "register_baseline",
]

_legacy.install()


def __getattr__(name: str) -> Any:
    if name == "convert":
        from normfree_bench.models.convert import convert

        return convert
    raise AttributeError(f"module 'normfree_bench' has no attribute {name!r}")
