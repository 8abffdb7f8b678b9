"""Build a model under a baseline: the factory beside the registry (as timm keeps ``create_model``
apart from its models).

Usage: ``model = build_model("dyt", ModelConfig(d_model=64), alpha_init=0.5)``
"""

from __future__ import annotations

from typing import Any

from normfree_bench.config import ModelConfig
from normfree_bench.core.baseline import Baseline
from normfree_bench.core.registry import get_baseline
from normfree_bench.models.transformer import Transformer


def build_model(baseline: str | Baseline, config: ModelConfig | None = None, **hparams: Any) -> Transformer:
    """The Transformer under a registered baseline (by name, with its hyperparameters) or a baseline instance."""
    config = config or ModelConfig()
    if isinstance(baseline, str):
        baseline = get_baseline(baseline)(config, **hparams)
    return Transformer(config, baseline)
